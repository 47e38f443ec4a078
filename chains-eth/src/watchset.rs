//! The set of watched deposit addresses: a hash set keyed by the 20 address
//! bytes with alloy's fixed-bytes hasher (no SipHash), about 40 bytes per
//! address, so 1M addresses take ~40 MB and a lookup is one hash of 20 bytes.

use std::sync::{Arc, RwLock};

use alloy::primitives::map::AddressSet;
use alloy::primitives::Address;

use crate::error::EthError;

/// Watched addresses, shared between the caller (who adds) and the watcher
/// (who looks up). Cloning shares the set.
#[derive(Debug, Clone)]
pub struct WatchSet {
    inner: Arc<RwLock<AddressSet>>,
    max: u64,
}

impl WatchSet {
    /// An empty set holding at most `max` addresses.
    pub fn new(max: u64) -> Self {
        WatchSet { inner: Arc::new(RwLock::new(AddressSet::default())), max }
    }

    /// Adds addresses (idempotent). Nothing is added if the result would pass the limit.
    pub fn add(&self, addresses: &[Address]) -> Result<(), EthError> {
        let mut set = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let new = addresses.iter().filter(|a| !set.contains(*a)).count() as u64;
        if set.len() as u64 + new > self.max {
            return Err(EthError::Limit { what: "watched addresses", limit: self.max });
        }
        set.reserve(new as usize);
        set.extend(addresses.iter().copied());
        Ok(())
    }

    /// Whether `address` is watched.
    pub fn contains(&self, address: &Address) -> bool {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).contains(address)
    }

    /// Runs `f` with the set read-locked (one lock for a whole block).
    pub fn with<R>(&self, f: impl FnOnce(&AddressSet) -> R) -> R {
        f(&self.inner.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// How many addresses are watched.
    pub fn len(&self) -> usize {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether nothing is watched.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_is_all_or_nothing_and_duplicates_are_free() {
        let set = WatchSet::new(2);
        let a = Address::repeat_byte(1);
        let b = Address::repeat_byte(2);
        let c = Address::repeat_byte(3);
        set.add(&[a, a]).unwrap();
        set.add(&[a, b]).unwrap();
        assert_eq!(set.len(), 2);
        let err = set.add(&[c]).unwrap_err();
        assert!(err.to_string().contains("watched addresses"), "{err}");
        assert!(set.contains(&b) && !set.contains(&c));
    }
}
