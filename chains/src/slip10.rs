//! SLIP-0010 ed25519 derivation for Solana (hardened children only).
//!
//! SLIP-0010 for ed25519 is BIP32's private derivation with the HMAC key
//! `"ed25519 seed"`, no modular addition (the child key *is* `I_L`) and no
//! public derivation at all. The HMAC-SHA512 comes from `bitcoin::hashes`;
//! the public key from `ed25519-dalek`.

use bitcoin::hashes::{sha512, Hash, HashEngine, Hmac, HmacEngine};
use zeroize::{Zeroize, Zeroizing};

use crate::path::{Path, PathError, HARDENED};
use crate::seed::Seed;

/// An ed25519 extended private key: 32-byte key and 32-byte chain code.
/// Zeroed on drop.
#[derive(Clone)]
pub struct Ed25519Xpriv {
    key: Zeroizing<[u8; 32]>,
    chain_code: [u8; 32],
}

impl std::fmt::Debug for Ed25519Xpriv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ed25519Xpriv(<redacted>)")
    }
}

fn split(mac: Hmac<sha512::Hash>) -> Ed25519Xpriv {
    let mut bytes = mac.to_byte_array();
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&bytes[..32]);
    let mut chain_code = [0u8; 32];
    chain_code.copy_from_slice(&bytes[32..]);
    bytes.zeroize();
    Ed25519Xpriv { key, chain_code }
}

impl Ed25519Xpriv {
    /// Master key: `HMAC-SHA512(key = "ed25519 seed", data = seed)`.
    pub fn master(seed: &Seed) -> Ed25519Xpriv {
        let mut engine = HmacEngine::<sha512::Hash>::new(b"ed25519 seed");
        engine.input(seed.as_bytes());
        split(Hmac::from_engine(engine))
    }

    /// Hardened child `index'`: `HMAC-SHA512(c, 0x00 || k || ser32(index | 2^31))`.
    /// `index` must already carry the hardened bit.
    pub fn child(&self, hardened_index: u32) -> Result<Ed25519Xpriv, PathError> {
        if hardened_index & HARDENED == 0 {
            return Err(PathError::NotHardenedEd25519 { level: 1, child: hardened_index });
        }
        let mut engine = HmacEngine::<sha512::Hash>::new(&self.chain_code);
        engine.input(&[0u8]);
        engine.input(&self.key[..]);
        engine.input(&hardened_index.to_be_bytes());
        Ok(split(Hmac::from_engine(engine)))
    }

    /// Derives `path` from the master key; every level must be hardened.
    pub fn derive(seed: &Seed, path: &Path) -> Result<Ed25519Xpriv, PathError> {
        let mut key = Ed25519Xpriv::master(seed);
        for (level, &c) in path.children().iter().enumerate() {
            key = key.child(c).map_err(|_| PathError::NotHardenedEd25519 { level: level + 1, child: c })?;
        }
        Ok(key)
    }

    /// The 32-byte private key (the ed25519 secret seed).
    pub fn secret(&self) -> &[u8; 32] {
        &self.key
    }

    /// The chain code.
    pub fn chain_code(&self) -> &[u8; 32] {
        &self.chain_code
    }

    /// The ed25519 public key (a Solana address's 32 bytes).
    pub fn public_key(&self) -> [u8; 32] {
        ed25519_dalek::SigningKey::from_bytes(&self.key).verifying_key().to_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_hardened_levels_are_refused_with_their_position() {
        let seed = Seed::from_bytes(&[3u8; 16]).unwrap();
        let path: Path = "m/44'/501'/0'/0".parse().unwrap();
        assert_eq!(
            Ed25519Xpriv::derive(&seed, &path).unwrap_err(),
            PathError::NotHardenedEd25519 { level: 4, child: 0 }
        );
        let ok: Path = "m/44'/501'/0'/0'".parse().unwrap();
        assert!(Ed25519Xpriv::derive(&seed, &ok).is_ok());
        assert_eq!(format!("{:?}", Ed25519Xpriv::master(&seed)), "Ed25519Xpriv(<redacted>)");
    }
}
