//! Serde helpers: byte strings as lower-case hex.

use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

/// Serialise any byte container as hex.
pub fn serialize<S: Serializer, T: AsRef<[u8]>>(bytes: &T, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(bytes))
}

/// Deserialise hex into `Vec<u8>` or `[u8; N]`.
pub fn deserialize<'de, D: Deserializer<'de>, T: TryFrom<Vec<u8>>>(d: D) -> Result<T, D::Error> {
    let s = String::deserialize(d)?;
    let bytes = hex::decode(&s).map_err(D::Error::custom)?;
    let len = bytes.len();
    T::try_from(bytes).map_err(|_| D::Error::custom(format!("hex value has the wrong length ({len} bytes)")))
}

/// Serde helpers: `u128` amounts as decimal strings (JSON numbers lose
/// precision in many clients, and serde's tagged enums cannot carry u128).
pub mod dec128 {
    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    /// Serialise as a decimal string.
    pub fn serialize<S: Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    /// Deserialise from a decimal string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        let s = String::deserialize(d)?;
        s.parse::<u128>()
            .map_err(|e| D::Error::custom(format!("amount {s:?} is not a base-unit integer: {e}")))
    }
}
