//! Bulk deposit-key derivation: the same keys as [`crate::secp`] and
//! [`crate::slip10`], computed fast enough for a million wallets.
//!
//! # secp256k1 (ETH, Tron, BTC)
//!
//! BIP32 public derivation of child `i` below the external-chain key
//! `(K, c)` is `K_i = K + I_L·G` with `I_L = HMAC-SHA512(c, ser_P(K) ‖ i)[..32]`.
//! A plain loop over a library `ckd_pub` spends most of its time on two
//! things this module avoids, using only `k256`'s group operations:
//!
//! * **Scalar multiplication by `G`.** `I_L·G` is a *fixed-base* product, so
//!   it is computed with a precomputed comb: `I_L` is recoded into 22 signed
//!   12-bit digits `d_j` and a table holds `d·2^(12j)·G` for every window `j`
//!   and magnitude `1 ≤ d ≤ 2048` (22 × 2048 affine points, ~4 MB, built
//!   once in a few milliseconds; negative digits use the negated point), after
//!   which `I_L·G` is at most 22 mixed additions and no doublings. (Measured
//!   on the 2-core dev machine, single thread: 8-bit windows 6.3 µs/key,
//!   10-bit 5.2, 12-bit 4.9, 14-bit 5.5 as cache misses take over.) The lookups depend on `I_L`, so this is not
//!   constant-time; that is acceptable here because `I_L` is computed from
//!   the account xpub, which the deposit side holds in the clear: timing can
//!   reveal nothing that the xpub itself does not.
//! * **Field inversions.** Each result is projective; converting to affine
//!   coordinates (needed to hash the key into an address) costs a field
//!   inversion. Results are converted in batches with `k256`'s
//!   `BatchNormalize` (Montgomery's trick: one inversion per batch).
//!
//! The HMAC key state (keyed with `c`, fed with `ser_P(K)`) is computed once
//! and cloned per child; nothing is allocated per key. Tests check this
//! path against the `bitcoin` crate's `ckd_pub` for many indices.
//!
//! # ed25519 (Solana)
//!
//! SLIP-0010 ed25519 has no public derivation, so each address needs two
//! hardened HMAC steps and one ed25519 base-point multiplication
//! (`ed25519-dalek`). The `m/44'/501'` key and its HMAC state are computed
//! once.

use std::sync::OnceLock;

use bitcoin::hashes::{sha512, Hash, HashEngine, Hmac, HmacEngine};
use k256::elliptic_curve::group::Group;
use k256::elliptic_curve::point::BatchNormalize;
use k256::elliptic_curve::sec1::{FromEncodedPoint, ToEncodedPoint};
use k256::elliptic_curve::PrimeField;
use k256::{AffinePoint, EncodedPoint, FieldBytes, ProjectivePoint, Scalar};
use zeroize::Zeroize;

use crate::address::{self, AddressBuf};
use crate::chain::{Chain, Network};
use crate::path::{check_index, PathError, HARDENED};
use crate::secp::{AccountXpub, KeyError};
use crate::seed::Seed;
use crate::slip10::Ed25519Xpriv;

/// Keys derived per batch (one field inversion per batch).
pub const BATCH: usize = 128;

/// Why a bulk derivation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeriveError {
    /// Setting up the account key failed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The requested range is not all below 2^31.
    #[error(transparent)]
    Path(#[from] PathError),
    /// BIP32 declares child `index` invalid (I_L ≥ n or the point at
    /// infinity; probability about 2^-127 per index). No key exists there.
    #[error("bip32 child {index} is invalid (i_l >= n or point at infinity): this index has no key")]
    InvalidChild {
        /// The child index.
        index: u32,
    },
}

/// Bits per comb window.
const WINDOW: usize = 12;
/// Windows needed for 256 bits plus the final carry of the signed recoding.
const WINDOWS: usize = (256usize + 1).div_ceil(WINDOW);
/// Table entries per window: digit magnitudes `1..=2^(WINDOW-1)`.
const HALF: usize = 1 << (WINDOW - 1);

/// `d·2^(WINDOW·j)·G` at `[j * HALF + (d - 1)]` for `j < WINDOWS`, `1 ≤ d ≤ HALF`.
fn comb_table() -> &'static [AffinePoint] {
    static TABLE: OnceLock<Vec<AffinePoint>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut points = Vec::with_capacity(WINDOWS * HALF);
        let mut base = ProjectivePoint::GENERATOR;
        for _ in 0..WINDOWS {
            let mut acc = base;
            for _ in 0..HALF {
                points.push(acc);
                acc += base;
            }
            // acc = (HALF + 1)·base; the next window's base is 2^WINDOW·base.
            base = points[points.len() - 1].double();
        }
        <ProjectivePoint as BatchNormalize<[ProjectivePoint]>>::batch_normalize(&points[..])
    })
}

/// Signed base-2^WINDOW digits of a 256-bit big-endian number, least
/// significant first: `n = Σ d_j·2^(WINDOW·j)` with `-HALF < d_j ≤ HALF`.
/// (Plain integer recoding; the group arithmetic is k256's.)
fn signed_digits(be: &[u8; 32]) -> [i32; WINDOWS] {
    let mut limbs = [0u64; 5]; // little-endian, one spare limb for the top window
    for (k, chunk) in be.rchunks(8).enumerate() {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        limbs[k] = u64::from_be_bytes(b);
    }
    let mut digits = [0i32; WINDOWS];
    let mut carry = 0i64;
    for (j, d) in digits.iter_mut().enumerate() {
        let bit = j * WINDOW;
        let (limb, shift) = (bit / 64, bit % 64);
        let mut v = limbs[limb] >> shift;
        if shift + WINDOW > 64 && limb + 1 < limbs.len() {
            v |= limbs[limb + 1] << (64 - shift);
        }
        let mut v = (v & ((1 << WINDOW) - 1)) as i64 + carry;
        carry = 0;
        if v > HALF as i64 {
            v -= 1 << WINDOW;
            carry = 1;
        }
        *d = v as i32;
    }
    digits
}

/// Fast public derivation of deposit keys `account/0/i` of one secp256k1 account.
#[derive(Clone)]
pub struct SecpDeriver {
    chain: Chain,
    network: Network,
    parent: AffinePoint,
    /// HMAC-SHA512 keyed with the external chain code, already fed `ser_P(K)`.
    engine: HmacEngine<sha512::Hash>,
    table: &'static [AffinePoint],
}

impl std::fmt::Debug for SecpDeriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecpDeriver({} {})", self.chain, self.network)
    }
}

impl SecpDeriver {
    /// Prepares derivation below `account/0` (public data only).
    pub fn new(account: &AccountXpub) -> Result<SecpDeriver, KeyError> {
        let external = account.external()?;
        let ser = external.public_key.serialize();
        let encoded = EncodedPoint::from_bytes(ser).map_err(|e| KeyError::BadXpub(e.to_string()))?;
        let parent = Option::<AffinePoint>::from(AffinePoint::from_encoded_point(&encoded))
            .ok_or_else(|| KeyError::BadXpub("public key is not on secp256k1".into()))?;
        let mut engine = HmacEngine::<sha512::Hash>::new(&external.chain_code[..]);
        engine.input(&ser);
        Ok(SecpDeriver {
            chain: account.chain(),
            network: account.network(),
            parent,
            engine,
            table: comb_table(),
        })
    }

    /// The chain whose addresses [`SecpDeriver::encode_range`] writes.
    pub fn chain(&self) -> Chain {
        self.chain
    }

    /// `K + I_L·G` in projective coordinates, or `None` if `I_L ≥ n`.
    fn child_projective(&self, index: u32) -> Option<ProjectivePoint> {
        let mut engine = self.engine.clone();
        engine.input(&index.to_be_bytes());
        let mac = Hmac::<sha512::Hash>::from_engine(engine).to_byte_array();
        let mut il = [0u8; 32];
        il.copy_from_slice(&mac[..32]);
        let valid: bool = Scalar::from_repr(FieldBytes::from(il)).is_some().into();
        if !valid {
            return None;
        }
        let mut point = ProjectivePoint::from(self.parent);
        for (j, &d) in signed_digits(&il).iter().enumerate() {
            let entry = j * HALF + d.unsigned_abs() as usize;
            if d > 0 {
                point += &self.table[entry - 1];
            } else if d < 0 {
                point += -self.table[entry - 1];
            }
        }
        Some(point)
    }

    /// Affine public keys of children `start..start + out.len()`, at most [`BATCH`].
    pub fn derive_batch(&self, start: u32, out: &mut [AffinePoint]) -> Result<(), DeriveError> {
        debug_assert!(out.len() <= BATCH);
        let mut projective = [ProjectivePoint::GENERATOR; BATCH];
        for (k, slot) in projective.iter_mut().take(out.len()).enumerate() {
            let index = start + k as u32;
            *slot = self.child_projective(index).ok_or(DeriveError::InvalidChild { index })?;
            if bool::from(slot.is_identity()) {
                return Err(DeriveError::InvalidChild { index });
            }
        }
        let affine =
            <ProjectivePoint as BatchNormalize<[ProjectivePoint; BATCH]>>::batch_normalize(&projective);
        out.copy_from_slice(&affine[..out.len()]);
        Ok(())
    }

    /// Addresses of children `start..start + out.len()`.
    pub fn encode_range(&self, start: u32, out: &mut [AddressBuf]) -> Result<(), DeriveError> {
        check_range(start, out.len())?;
        let mut points = [AffinePoint::IDENTITY; BATCH];
        for (b, chunk) in out.chunks_mut(BATCH).enumerate() {
            let first = start + (b * BATCH) as u32;
            let points = &mut points[..chunk.len()];
            self.derive_batch(first, points)?;
            for (p, slot) in points.iter().zip(chunk.iter_mut()) {
                encode_point(self.chain, self.network, p, slot);
            }
        }
        Ok(())
    }
}

fn encode_point(chain: Chain, network: Network, p: &AffinePoint, out: &mut AddressBuf) {
    match chain {
        Chain::Btc => {
            let enc = p.to_encoded_point(true);
            let mut c = [0u8; 33];
            c.copy_from_slice(enc.as_bytes());
            address::encode_btc_p2wpkh(&c, network, out);
        }
        _ => {
            let enc = p.to_encoded_point(false);
            let mut u = [0u8; 65];
            u.copy_from_slice(enc.as_bytes());
            if chain == Chain::Tron {
                address::encode_tron(&u, out);
            } else {
                address::encode_eth(&u, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value_of(digits: &[i32; WINDOWS]) -> [i128; WINDOWS] {
        // Each digit scaled into its window, as exact integers per window.
        let mut out = [0i128; WINDOWS];
        for (o, d) in out.iter_mut().zip(digits) {
            *o = i128::from(*d);
        }
        out
    }

    #[test]
    fn signed_digits_reconstruct_the_number_within_range() {
        let mut cases = vec![[0u8; 32], [0xff; 32], [0x80; 32]];
        let mut x = [0u8; 32];
        for (i, b) in x.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(73).wrapping_add(11);
        }
        cases.push(x);
        let mut one = [0u8; 32];
        one[31] = 1;
        cases.push(one);
        for n in cases {
            let digits = signed_digits(&n);
            for &d in &digits {
                assert!(d > -(HALF as i32) && d <= HALF as i32, "{d}");
            }
            // Rebuild n from the digits, base 2^WINDOW, with big-integer limbs of WINDOW bits.
            let mut acc = value_of(&digits);
            for j in 0..WINDOWS - 1 {
                let carry = acc[j].div_euclid(1 << WINDOW);
                acc[j] = acc[j].rem_euclid(1 << WINDOW);
                acc[j + 1] += carry;
            }
            let mut bits = Vec::new();
            for v in acc {
                for b in 0..WINDOW {
                    bits.push((v >> b) & 1 == 1);
                }
            }
            let mut want = Vec::new();
            for byte in n.iter().rev() {
                for b in 0..8 {
                    want.push((byte >> b) & 1 == 1);
                }
            }
            assert!(bits[256..].iter().all(|b| !b));
            assert_eq!(&bits[..256], &want[..]);
        }
    }
}

fn check_range(start: u32, len: usize) -> Result<(), PathError> {
    if len > 0 {
        check_index("index", u64::from(start) + len as u64 - 1)?;
    }
    Ok(())
}

/// Solana deposit keys `m/44'/501'/i'/account'`. Holds a private key: it
/// belongs where the signer lives.
#[derive(Clone)]
pub struct SolDeriver {
    account: u32,
    /// HMAC-SHA512 keyed with the `m/44'/501'` chain code, fed `0x00 ‖ k`.
    engine: HmacEngine<sha512::Hash>,
}

impl std::fmt::Debug for SolDeriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SolDeriver(account {}, <redacted>)", self.account)
    }
}

impl SolDeriver {
    /// Prepares derivation from the seed.
    pub fn new(seed: &Seed, account: u32) -> Result<SolDeriver, PathError> {
        let account = check_index("account", u64::from(account))?;
        let base = Ed25519Xpriv::master(seed).child(44 | HARDENED)?.child(501 | HARDENED)?;
        let mut engine = HmacEngine::<sha512::Hash>::new(base.chain_code());
        engine.input(&[0u8]);
        engine.input(base.secret());
        Ok(SolDeriver { account, engine })
    }

    /// Public key of wallet `index` (`m/44'/501'/index'/account'`).
    pub fn public_key(&self, index: u32) -> Result<[u8; 32], PathError> {
        let index = check_index("index", u64::from(index))?;
        let mut engine = self.engine.clone();
        engine.input(&(index | HARDENED).to_be_bytes());
        let mut mac = Hmac::<sha512::Hash>::from_engine(engine).to_byte_array();
        let mut key = [0u8; 32];
        let mut chain_code = [0u8; 32];
        key.copy_from_slice(&mac[..32]);
        chain_code.copy_from_slice(&mac[32..]);
        mac.zeroize();
        let mut engine = HmacEngine::<sha512::Hash>::new(&chain_code);
        engine.input(&[0u8]);
        engine.input(&key);
        engine.input(&(self.account | HARDENED).to_be_bytes());
        let mut mac = Hmac::<sha512::Hash>::from_engine(engine).to_byte_array();
        key.copy_from_slice(&mac[..32]);
        mac.zeroize();
        let public = ed25519_dalek::SigningKey::from_bytes(&key).verifying_key().to_bytes();
        key.zeroize();
        Ok(public)
    }

    /// Addresses of wallets `start..start + out.len()`.
    pub fn encode_range(&self, start: u32, out: &mut [AddressBuf]) -> Result<(), DeriveError> {
        check_range(start, out.len())?;
        for (k, slot) in out.iter_mut().enumerate() {
            let pk = self.public_key(start + k as u32)?;
            address::encode_sol(&pk, slot);
        }
        Ok(())
    }
}

/// The deposit-address source of one chain and account.
#[derive(Debug, Clone)]
pub enum DepositKeys {
    /// ETH, Tron or BTC: public derivation from the account xpub.
    Secp(SecpDeriver),
    /// Solana: hardened derivation from the seed.
    Sol(SolDeriver),
}

impl DepositKeys {
    /// Deposit keys of `account` on `chain`, from the seed.
    pub fn from_seed(
        seed: &Seed,
        chain: Chain,
        network: Network,
        account: u32,
    ) -> Result<DepositKeys, DeriveError> {
        Ok(match chain {
            Chain::Sol => DepositKeys::Sol(SolDeriver::new(seed, account)?),
            _ => {
                DepositKeys::Secp(SecpDeriver::new(&AccountXpub::from_seed(seed, chain, network, account)?)?)
            }
        })
    }

    /// Deposit keys of a secp256k1 account from its xpub alone: what the
    /// deposit side uses, with no seed and no private key.
    pub fn from_account_xpub(account: &AccountXpub) -> Result<DepositKeys, DeriveError> {
        Ok(DepositKeys::Secp(SecpDeriver::new(account)?))
    }

    /// Addresses of wallets `start..start + out.len()`.
    pub fn encode_range(&self, start: u32, out: &mut [AddressBuf]) -> Result<(), DeriveError> {
        match self {
            DepositKeys::Secp(d) => d.encode_range(start, out),
            DepositKeys::Sol(d) => d.encode_range(start, out),
        }
    }
}
