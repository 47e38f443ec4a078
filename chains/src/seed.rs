//! BIP39 mnemonic → 64-byte seed.

use std::fmt;

use zeroize::Zeroizing;

/// The master seed of an installation. Secret: it is zeroed on drop and its
/// `Debug` output is redacted.
#[derive(Clone)]
pub struct Seed(Zeroizing<Vec<u8>>);

impl fmt::Debug for Seed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Seed(<{} bytes redacted>)", self.0.len())
    }
}

/// Why a mnemonic was rejected. Messages name the position, never the words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MnemonicError {
    /// Word count is not 12, 15, 18, 21 or 24.
    #[error("mnemonic has {0} words: expected 12, 15, 18, 21 or 24")]
    BadWordCount(usize),
    /// A word is not in the English BIP39 word list.
    #[error("mnemonic word {position} (counting from 1) is not in the english bip39 word list")]
    UnknownWord {
        /// 1-based position of the offending word.
        position: usize,
    },
    /// The words are all valid but their checksum does not match.
    #[error("mnemonic checksum does not match: a word is wrong or out of order")]
    InvalidChecksum,
    /// Anything else the BIP39 library rejected.
    #[error("invalid mnemonic: {0}")]
    Other(String),
}

/// Why raw seed bytes were rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("seed is {0} bytes: bip32 needs 16 to 64 bytes")]
pub struct SeedLengthError(pub usize);

impl Seed {
    /// BIP39: checks the English mnemonic (word list and checksum) and
    /// stretches it with the passphrase (PBKDF2-HMAC-SHA512, 2048 rounds).
    /// Whitespace between words is normalised; the passphrase is used as given
    /// (NFKD-normalised, as BIP39 requires).
    pub fn from_mnemonic(phrase: &str, passphrase: &str) -> Result<Seed, MnemonicError> {
        let words: Vec<&str> = phrase.split_whitespace().collect();
        let normalized = Zeroizing::new(words.join(" ").to_lowercase());
        let mnemonic = bip39::Mnemonic::parse_in(bip39::Language::English, normalized.as_str()).map_err(
            |e| match e {
                bip39::Error::BadWordCount(n) => MnemonicError::BadWordCount(n),
                bip39::Error::UnknownWord(i) => MnemonicError::UnknownWord { position: i + 1 },
                bip39::Error::InvalidChecksum => MnemonicError::InvalidChecksum,
                other => MnemonicError::Other(other.to_string()),
            },
        )?;
        let seed = Zeroizing::new(mnemonic.to_seed(passphrase));
        Ok(Seed(Zeroizing::new(seed.to_vec())))
    }

    /// Raw seed bytes (BIP32 test vectors give seeds directly).
    pub fn from_bytes(bytes: &[u8]) -> Result<Seed, SeedLengthError> {
        if !(16..=64).contains(&bytes.len()) {
            return Err(SeedLengthError(bytes.len()));
        }
        Ok(Seed(Zeroizing::new(bytes.to_vec())))
    }

    /// The seed bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ABOUT: &str =
        "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about";

    #[test]
    fn bad_mnemonics_are_rejected_with_the_reason() {
        // Last word changed: every word valid, checksum wrong.
        let bad_sum = ABOUT.replace("about", "abandon");
        assert_eq!(Seed::from_mnemonic(&bad_sum, "").unwrap_err(), MnemonicError::InvalidChecksum);
        let unknown = ABOUT.replacen("abandon", "abandonn", 1);
        assert_eq!(
            Seed::from_mnemonic(&unknown, "").unwrap_err(),
            MnemonicError::UnknownWord { position: 1 }
        );
        assert_eq!(
            Seed::from_mnemonic("abandon abandon abandon", "").unwrap_err(),
            MnemonicError::BadWordCount(3)
        );
        assert!(Seed::from_mnemonic("", "").is_err());
        let msg = Seed::from_mnemonic(&unknown, "").unwrap_err().to_string();
        assert!(!msg.contains("abandonn"), "error must not echo words: {msg}");
    }

    #[test]
    fn extra_whitespace_and_case_do_not_change_the_seed() {
        let a = Seed::from_mnemonic(ABOUT, "").unwrap();
        let b =
            Seed::from_mnemonic(&format!("  {}\n", ABOUT.to_uppercase().replace(' ', "  \t")), "").unwrap();
        assert_eq!(a.as_bytes(), b.as_bytes());
        let c = Seed::from_mnemonic(ABOUT, "x").unwrap();
        assert_ne!(a.as_bytes(), c.as_bytes());
    }

    #[test]
    fn seed_debug_is_redacted_and_length_is_checked() {
        let s = Seed::from_bytes(&[7u8; 16]).unwrap();
        assert_eq!(format!("{s:?}"), "Seed(<16 bytes redacted>)");
        assert_eq!(Seed::from_bytes(&[0u8; 15]).unwrap_err(), SeedLengthError(15));
        assert_eq!(Seed::from_bytes(&[0u8; 65]).unwrap_err(), SeedLengthError(65));
    }
}
