//! A throw-away SoftHSM2 token for tests and benches.
//!
//! SoftHSM2 reads `SOFTHSM2_CONF` once, when the module is initialised, and a
//! module is initialised once per process, so a process gets exactly one
//! temporary token: [`process_token`] creates it on first use (config file and
//! token directory under a fresh temporary directory, token initialised and
//! user PIN set through PKCS#11) and hands the same one out afterwards.

use std::path::PathBuf;
use std::sync::OnceLock;

use cryptoki::context::Pkcs11;
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;

use crate::error::{Result, SignerError};
use crate::pkcs11::{load_module, Pkcs11Signer};

/// Debian's path of the SoftHSM2 module.
pub const DEFAULT_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// Label of the temporary token.
pub const TOKEN_LABEL: &str = "molly";
/// User PIN of the temporary token (it only ever holds throw-away keys).
pub const USER_PIN: &str = "molly-user-pin";
const SO_PIN: &str = "molly-so-pin";

/// The temporary token and its loaded module.
#[derive(Debug)]
pub struct SoftHsmToken {
    _dir: tempfile::TempDir,
    /// Module path.
    pub module: PathBuf,
    /// Loaded, initialised module.
    pub ctx: Pkcs11,
}

impl SoftHsmToken {
    /// A signer logged in to this token (each call opens its own session).
    pub fn signer(&self) -> Result<Pkcs11Signer> {
        Pkcs11Signer::with_context(&self.ctx, TOKEN_LABEL, USER_PIN)
    }
}

/// The module path: `MOLLY_SOFTHSM_MODULE` if set, else Debian's.
pub fn module_path() -> PathBuf {
    std::env::var_os("MOLLY_SOFTHSM_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_MODULE))
}

/// True when `MOLLY_SKIP_SOFTHSM=1`: the only way SoftHSM tests may be skipped.
pub fn skip_requested() -> bool {
    std::env::var("MOLLY_SKIP_SOFTHSM").is_ok_and(|v| v == "1")
}

/// This process's temporary SoftHSM2 token, created on first call.
pub fn process_token() -> Result<&'static SoftHsmToken> {
    static TOKEN: OnceLock<std::result::Result<SoftHsmToken, String>> = OnceLock::new();
    TOKEN
        .get_or_init(|| create().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| SignerError::Config(format!("softhsm2 temporary token: {e}")))
}

fn create() -> Result<SoftHsmToken> {
    let module = module_path();
    if !module.exists() {
        return Err(SignerError::Config(format!(
            "softhsm2 module {} not found: install softhsm2 (scripts/setup/softhsm2.sh), \
             set MOLLY_SOFTHSM_MODULE, or set MOLLY_SKIP_SOFTHSM=1 to skip",
            module.display()
        )));
    }
    let dir = tempfile::Builder::new()
        .prefix("molly-softhsm-")
        .tempdir()
        .map_err(|e| SignerError::io("create", std::env::temp_dir(), e))?;
    let tokens = dir.path().join("tokens");
    std::fs::create_dir(&tokens).map_err(|e| SignerError::io("create", &tokens, e))?;
    let conf = dir.path().join("softhsm2.conf");
    let body = format!(
        "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
        tokens.display()
    );
    std::fs::write(&conf, body).map_err(|e| SignerError::io("write", &conf, e))?;
    // SoftHSM2 reads this at C_Initialize, which happens just below, once per process.
    std::env::set_var("SOFTHSM2_CONF", &conf);
    let ctx = load_module(&module)?;
    let ck = |op: &'static str| move |source| SignerError::Pkcs11 { op, source };
    let slot = ctx
        .get_slots_with_token()
        .map_err(ck("list slots"))?
        .into_iter()
        .next()
        .ok_or_else(|| SignerError::Config("softhsm2 offers no free slot".into()))?;
    let so_pin = AuthPin::new(SO_PIN.into());
    ctx.init_token(slot, &so_pin, TOKEN_LABEL).map_err(ck("init token"))?;
    // SoftHSM2 renumbers the slot once its token is initialised: find it again.
    let mut token_slot = None;
    for s in ctx.get_slots_with_token().map_err(ck("list slots"))? {
        if ctx.get_token_info(s).map_err(ck("token info"))?.label().trim_end() == TOKEN_LABEL {
            token_slot = Some(s);
        }
    }
    let slot = token_slot.ok_or_else(|| SignerError::Config("initialised token vanished".into()))?;
    {
        let session = ctx.open_rw_session(slot).map_err(ck("open session"))?;
        session.login(UserType::So, Some(&so_pin)).map_err(ck("so login"))?;
        session.init_pin(&AuthPin::new(USER_PIN.into())).map_err(ck("init pin"))?;
        session.logout().map_err(ck("logout"))?;
    }
    Ok(SoftHsmToken { _dir: dir, module, ctx })
}
