//! The durable wallet file: addresses and paths only, with a SHA-256 trailer.
//!
//! One file per chain, UTF-8 text, `\n` line ends, fields separated by one
//! space (no field contains a space):
//!
//! ```text
//! molly-wallets 1
//! chain eth
//! network mainnet
//! deposit_account 0
//! hot_account 1
//! warm_account 2
//! group_size 10000
//! deposits 1000000
//! groups 100
//! columns role index group path address
//! hot 0 0 m/44'/60'/1'/0/0 0x…          (one per group, by group)
//! warm 0 0 m/44'/60'/2'/0/0 0x…         (one per group, by group)
//! deposit 0 0 m/44'/60'/0'/0/0 0x…      (one per deposit, by index)
//! sha256 <64 lower-case hex digits>
//! ```
//!
//! The `sha256` line holds the SHA-256 of every byte before it. For hot and
//! warm rows `index` is the group number. A deposit's `group` is
//! `index / group_size`: sweeping sends it to the hot wallet of that group.
//! The loader checks the checksum, the header, every path against the plan
//! and every group number, so a truncated, edited or mismatched file is
//! refused rather than half-loaded.
//!
//! Writes are atomic and durable: a temporary file in the same directory,
//! `fsync`, `rename` over the target, then `fsync` of the directory.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path as FsPath, PathBuf};

use bitcoin::hashes::{sha256, Hash, HashEngine};

use crate::address::AddressBuf;
use crate::generate::{Role, WalletPlan, WalletSet};

/// First line of every wallet file.
pub const MAGIC: &str = "molly-wallets 1";

/// Why a wallet file could not be written or loaded.
#[derive(Debug, thiserror::Error)]
pub enum WalletFileError {
    /// Reading or writing failed.
    #[error("wallet file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The content is not a valid wallet file.
    #[error("wallet file {path} line {line}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// 1-based line number (0 for the file as a whole).
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// Writer that hashes everything it writes.
struct Hashing<W: Write> {
    inner: W,
    engine: sha256::HashEngine,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.engine.input(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes the set's body (everything but the trailer) to `w`.
fn write_body<W: Write>(w: &mut W, set: &WalletSet) -> io::Result<()> {
    let p = &set.plan;
    writeln!(w, "{MAGIC}")?;
    writeln!(w, "chain {}", p.chain)?;
    writeln!(w, "network {}", p.network)?;
    writeln!(w, "deposit_account {}", p.deposit_account)?;
    writeln!(w, "hot_account {}", p.hot_account)?;
    writeln!(w, "warm_account {}", p.warm_account)?;
    writeln!(w, "group_size {}", p.group_size)?;
    writeln!(w, "deposits {}", set.deposits.len())?;
    writeln!(w, "groups {}", set.hot.len())?;
    writeln!(w, "columns role index group path address")?;
    let bad = |e| io::Error::new(io::ErrorKind::InvalidInput, e);
    for (role, list) in [(Role::Hot, &set.hot), (Role::Warm, &set.warm)] {
        for (g, a) in list.iter().enumerate() {
            let g = g as u32;
            let path = p.path(role, g).map_err(bad)?;
            writeln!(w, "{} {g} {g} {path} {a}", role.name())?;
        }
    }
    for (i, a) in set.deposits.iter().enumerate() {
        let i = i as u32;
        let path = p.path(Role::Deposit, i).map_err(bad)?;
        writeln!(w, "deposit {i} {} {path} {a}", set.group_of(i))?;
    }
    Ok(())
}

/// Writes `set` to `path` atomically (temp file, fsync, rename, fsync dir).
pub fn write(path: &FsPath, set: &WalletSet) -> Result<(), WalletFileError> {
    let io_err = |source| WalletFileError::Io { path: path.to_owned(), source };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "wallets".into());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let file = File::create(&tmp)?;
        let mut w =
            Hashing { inner: BufWriter::with_capacity(1 << 20, file), engine: sha256::Hash::engine() };
        write_body(&mut w, set)?;
        let digest = sha256::Hash::from_engine(w.engine);
        let mut inner = w.inner;
        writeln!(inner, "sha256 {digest}")?;
        let file = inner.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io_err)
}

/// Loads and verifies a wallet file written by [`write`].
pub fn read(path: &FsPath) -> Result<WalletSet, WalletFileError> {
    let text =
        fs::read_to_string(path).map_err(|source| WalletFileError::Io { path: path.to_owned(), source })?;
    parse(&text).map_err(|(line, reason)| WalletFileError::Format { path: path.to_owned(), line, reason })
}

/// Parses wallet-file text; errors carry (line, reason).
pub fn parse(text: &str) -> Result<WalletSet, (usize, String)> {
    // Trailer: the last line, covering every byte before it.
    let body_end = text
        .trim_end_matches('\n')
        .rfind('\n')
        .map(|i| i + 1)
        .ok_or((0, "file has no checksum line".to_string()))?;
    let (body, trailer) = text.split_at(body_end);
    let total_lines = body.lines().count() + 1;
    let want = trailer
        .trim_end_matches('\n')
        .strip_prefix("sha256 ")
        .ok_or((total_lines, "last line is not \"sha256 <hex>\": file is truncated".to_string()))?;
    let got = sha256::Hash::hash(body.as_bytes()).to_string();
    if got != want {
        return Err((
            total_lines,
            "sha256 does not match the content: the file is corrupt or was edited".into(),
        ));
    }

    let mut lines = body.lines().enumerate().map(|(i, l)| (i + 1, l));
    let (n, magic) = next_line(&mut lines, "the header")?;
    if magic != MAGIC {
        return Err((n, format!("expected {MAGIC:?}, found {magic:?}")));
    }
    let num = |(n, v): (usize, &str)| -> Result<u32, (usize, String)> {
        v.parse::<u32>().map_err(|_| (n, format!("{v:?} is not a number")))
    };
    let (n, chain) = field(&mut lines, "chain")?;
    let chain = chain.parse().map_err(|e| (n, format!("{e}")))?;
    let (n, network) = field(&mut lines, "network")?;
    let network = network.parse().map_err(|e| (n, format!("{e}")))?;
    let plan = WalletPlan {
        chain,
        network,
        deposit_account: num(field(&mut lines, "deposit_account")?)?,
        hot_account: num(field(&mut lines, "hot_account")?)?,
        warm_account: num(field(&mut lines, "warm_account")?)?,
        group_size: num(field(&mut lines, "group_size")?)?,
        count: num(field(&mut lines, "deposits")?)?,
    };
    let groups_line = field(&mut lines, "groups")?;
    let groups_at = groups_line.0;
    let groups = num(groups_line)?;
    plan.check().map_err(|e| (groups_at, e.to_string()))?;
    if groups != plan.groups() {
        return Err((
            groups_at,
            format!(
                "{groups} groups, but {} deposits in groups of {} need {}",
                plan.count,
                plan.group_size,
                plan.groups()
            ),
        ));
    }
    let (n, columns) = field(&mut lines, "columns")?;
    if columns != "role index group path address" {
        return Err((n, format!("unknown columns {columns:?}")));
    }

    let mut set = WalletSet {
        plan,
        deposits: Vec::with_capacity(plan.count as usize),
        hot: Vec::with_capacity(groups as usize),
        warm: Vec::with_capacity(groups as usize),
    };
    let sections = [(Role::Hot, groups), (Role::Warm, groups), (Role::Deposit, plan.count)];
    for (role, count) in sections {
        for index in 0..count {
            let (n, line) = next_line(&mut lines, "all records")?;
            let mut cols = line.split(' ');
            let mut col = || cols.next().unwrap_or("");
            let (r, i, g, p, a) = (col(), col(), col(), col(), col());
            if r != role.name() {
                return Err((n, format!("expected a {} record, found {r:?}", role.name())));
            }
            if i != index.to_string() {
                return Err((n, format!("expected index {index}, found {i:?}")));
            }
            let group = if role == Role::Deposit { index / plan.group_size } else { index };
            if g != group.to_string() {
                return Err((n, format!("expected group {group}, found {g:?}")));
            }
            let path = plan.path(role, index).map_err(|e| (n, e.to_string()))?;
            if p != path.to_string() {
                return Err((n, format!("expected path {path}, found {p:?}")));
            }
            let mut buf = AddressBuf::default();
            if a.is_empty() || std::fmt::Write::write_str(&mut buf, a).is_err() {
                return Err((n, format!("invalid address field {a:?}")));
            }
            if !col().is_empty() {
                return Err((n, "extra fields after the address".into()));
            }
            match role {
                Role::Hot => set.hot.push(buf),
                Role::Warm => set.warm.push(buf),
                Role::Deposit => set.deposits.push(buf),
            }
        }
    }
    if let Some((n, _)) = lines.next() {
        return Err((n, "records after the last deposit".into()));
    }
    Ok(set)
}

type Lines<'a> = dyn Iterator<Item = (usize, &'a str)> + 'a;

fn next_line<'a>(lines: &mut Lines<'a>, what: &str) -> Result<(usize, &'a str), (usize, String)> {
    lines.next().ok_or((0, format!("file ends before {what}")))
}

fn field<'a>(lines: &mut Lines<'a>, key: &str) -> Result<(usize, &'a str), (usize, String)> {
    let (n, line) = next_line(lines, key)?;
    line.strip_prefix(key)
        .and_then(|v| v.strip_prefix(' '))
        .map(|v| (n, v))
        .ok_or((n, format!("expected \"{key} <value>\", found {line:?}")))
}
