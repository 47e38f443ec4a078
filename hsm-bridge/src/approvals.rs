//! Spend approvals: who must sign off before the signer signs.
//!
//! Every signing key used through the signer process has a policy entry
//! naming its wallet tier:
//!
//! * `hot` and `warm`: every spend is **level 3** — `quorum` (3) distinct
//!   registered approvers (of 5) must sign off.
//! * `withdrawal`: the level comes from the asset's configured thresholds:
//!   amount < `level2_from` is **level 1** (automatic), amount <
//!   `level3_from` is **level 2** (one approver), anything larger is
//!   **level 3** (quorum).
//!
//! An approval is an approver's Ed25519 signature over
//! [`Approval::message`]: a domain tag, the key id, asset, amount, the exact
//! 32-byte digest to be signed (for Ed25519 keys, SHA-256 of the message),
//! the time it was issued and a random nonce. A request is refused — and
//! nothing is signed — if any approval in it is from an unregistered
//! approver, repeats an approver, names another digest / key / asset /
//! amount, is older than `max_approval_age_secs` (or from the future beyond
//! `max_clock_skew_secs`), has a bad signature, or was already used.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use ed25519_dalek::Signer as _;
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};

use crate::types::KeyId;

/// Refusals from the approval policy. Nothing is signed after any of them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The key has no policy entry: the signer does not sign with it.
    #[error("key {0:?} has no signing policy")]
    NoPolicy(String),
    /// No thresholds for the asset of a withdrawal key.
    #[error("no thresholds configured for asset {0:?}")]
    UnknownAsset(String),
    /// The approver id is not registered.
    #[error("approval from unknown approver {0:?}")]
    UnknownApprover(String),
    /// The same approver twice in one request.
    #[error("duplicate approval from approver {0:?}")]
    DuplicateApproval(String),
    /// The approval is for another digest than the one to sign.
    #[error("approval from {approver:?} is for digest {approved}, not the requested {requested}")]
    DigestMismatch {
        /// Approver.
        approver: String,
        /// Digest in the approval (hex).
        approved: String,
        /// Digest of the request (hex).
        requested: String,
    },
    /// The approval names another key, asset or amount.
    #[error("approval from {approver:?} is for another {field}")]
    ContextMismatch {
        /// Approver.
        approver: String,
        /// `key id`, `asset` or `amount`.
        field: &'static str,
    },
    /// Issued too long ago (or too far in the future).
    #[error("stale approval from {approver:?}: issued at {issued_unix}, now {now_unix}, accepted age {max_age_secs} s")]
    Stale {
        /// Approver.
        approver: String,
        /// When it says it was issued.
        issued_unix: u64,
        /// Now.
        now_unix: u64,
        /// Limit.
        max_age_secs: u64,
    },
    /// The signature does not verify under the approver's key.
    #[error("approval from {0:?} has an invalid signature")]
    BadSignature(String),
    /// This approval (approver + nonce) was used before.
    #[error("replayed approval from {0:?}")]
    Replayed(String),
    /// Not enough approvals for the level.
    #[error("level {level} needs {needed} approval(s), got {got}")]
    Insufficient {
        /// Authorisation level (1 to 3).
        level: u8,
        /// Approvals needed.
        needed: usize,
        /// Valid approvals given.
        got: usize,
    },
    /// More approvals than the configured limit.
    #[error("{got} approvals exceed the limit of {limit}")]
    TooMany {
        /// Given.
        got: usize,
        /// Limit.
        limit: usize,
    },
    /// The replay memory is full of unexpired approvals; fail closed.
    #[error("replay memory full ({0} approvals): refusing until old ones expire")]
    ReplayMemoryFull(usize),
}

/// Wallet tier of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Hot wallet: every spend needs the quorum.
    Hot,
    /// Warm wallet: every spend needs the quorum.
    Warm,
    /// Withdrawal (payout) key: level by per-asset thresholds.
    Withdrawal,
}

/// Per-asset thresholds, in the asset's base units (wei, sun, lamports, satoshis).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thresholds {
    /// From this amount on, one approver (level 2).
    #[serde(with = "crate::hexser::dec128")]
    pub level2_from: u128,
    /// From this amount on, the quorum (level 3).
    #[serde(with = "crate::hexser::dec128")]
    pub level3_from: u128,
}

/// A registered approver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApproverConfig {
    /// Name.
    pub id: String,
    /// Ed25519 public key, hex.
    #[serde(with = "crate::hexser")]
    pub public_key: [u8; 32],
}

/// A key's policy entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyPolicy {
    /// Wallet tier.
    pub tier: Tier,
}

/// The approval policy, as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyConfig {
    /// Approvals needed at level 3 (3).
    pub quorum: usize,
    /// Registered approvers (5).
    pub approvers: Vec<ApproverConfig>,
    /// Oldest accepted approval, seconds.
    pub max_approval_age_secs: u64,
    /// How far in the future an approval's time may be, seconds.
    pub max_clock_skew_secs: u64,
    /// Most approvals remembered for replay detection (fail closed when full).
    pub max_remembered_approvals: usize,
    /// Policy per signing key.
    pub keys: BTreeMap<KeyId, KeyPolicy>,
    /// Thresholds per asset symbol, for withdrawal keys.
    pub assets: BTreeMap<String, Thresholds>,
}

/// One approver's sign-off on one spend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// Approver id.
    pub approver: String,
    /// Key that will sign.
    pub key_id: KeyId,
    /// Asset symbol.
    pub asset: String,
    /// Amount in base units.
    #[serde(with = "crate::hexser::dec128")]
    pub amount: u128,
    /// The exact digest approved.
    #[serde(with = "crate::hexser")]
    pub digest: [u8; 32],
    /// Issue time, Unix seconds.
    pub issued_unix: u64,
    /// Random, single use.
    #[serde(with = "crate::hexser")]
    pub nonce: [u8; 16],
    /// Ed25519 signature over [`Approval::message`].
    #[serde(with = "crate::hexser")]
    pub signature: [u8; 64],
}

/// What a spend request says it is.
#[derive(Debug, Clone, Copy)]
pub struct Spend<'a> {
    /// Signing key.
    pub key_id: &'a KeyId,
    /// Asset symbol.
    pub asset: &'a str,
    /// Amount in base units.
    pub amount: u128,
    /// Digest to sign (SHA-256 of the message for Ed25519).
    pub digest: &'a [u8; 32],
}

impl Approval {
    /// The bytes an approver signs.
    pub fn message(spend: &Spend<'_>, issued_unix: u64, nonce: &[u8; 16]) -> Vec<u8> {
        let mut m = b"molly-approval-v1\0".to_vec();
        for field in [spend.key_id.as_str().as_bytes(), spend.asset.as_bytes()] {
            m.extend_from_slice(&(field.len() as u32).to_be_bytes());
            m.extend_from_slice(field);
        }
        m.extend_from_slice(&spend.amount.to_be_bytes());
        m.extend_from_slice(spend.digest);
        m.extend_from_slice(&issued_unix.to_be_bytes());
        m.extend_from_slice(nonce);
        m
    }

    /// Signs an approval (what an approver's tool does), with a fresh nonce.
    pub fn sign(
        approver: &str,
        key: &ed25519_dalek::SigningKey,
        spend: &Spend<'_>,
        issued_unix: u64,
    ) -> Approval {
        let mut nonce = [0u8; 16];
        OsRng.fill_bytes(&mut nonce);
        let signature = key.sign(&Approval::message(spend, issued_unix, &nonce)).to_bytes();
        Approval {
            approver: approver.to_string(),
            key_id: spend.key_id.clone(),
            asset: spend.asset.to_string(),
            amount: spend.amount,
            digest: *spend.digest,
            issued_unix,
            nonce,
            signature,
        }
    }
}

/// The approval policy with its replay memory.
#[derive(Debug)]
pub struct Policy {
    config: PolicyConfig,
    approvers: HashMap<String, ed25519_dalek::VerifyingKey>,
    used: Mutex<HashMap<(String, [u8; 16]), u64>>,
}

/// What a successful check decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Level 1, 2 or 3.
    pub level: u8,
    /// Approvers whose approvals were used.
    pub approvers: Vec<String>,
}

impl Policy {
    /// Validates the configuration: a quorum of at least 1 and at most the
    /// number of approvers, distinct approver ids and keys, sane thresholds.
    pub fn new(config: PolicyConfig) -> Result<Self, String> {
        if config.quorum == 0 || config.quorum > config.approvers.len() {
            return Err(format!(
                "quorum {} must be between 1 and the {} registered approvers",
                config.quorum,
                config.approvers.len()
            ));
        }
        if config.max_remembered_approvals == 0 {
            return Err("max_remembered_approvals must be positive".into());
        }
        let mut approvers = HashMap::new();
        let mut keys = HashSet::new();
        for a in &config.approvers {
            let key = ed25519_dalek::VerifyingKey::from_bytes(&a.public_key)
                .map_err(|e| format!("approver {:?}: bad public key: {e}", a.id))?;
            if !keys.insert(a.public_key) {
                return Err(format!("approver {:?} shares a key with another approver", a.id));
            }
            if approvers.insert(a.id.clone(), key).is_some() {
                return Err(format!("approver {:?} registered twice", a.id));
            }
        }
        for (asset, t) in &config.assets {
            if t.level2_from > t.level3_from {
                return Err(format!("asset {asset:?}: level2_from above level3_from"));
            }
        }
        Ok(Policy { config, approvers, used: Mutex::new(HashMap::new()) })
    }

    /// The configuration.
    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// The authorisation level of a spend (1, 2 or 3).
    pub fn level(&self, spend: &Spend<'_>) -> Result<u8, PolicyError> {
        let policy = self
            .config
            .keys
            .get(spend.key_id)
            .ok_or_else(|| PolicyError::NoPolicy(spend.key_id.to_string()))?;
        Ok(match policy.tier {
            Tier::Hot | Tier::Warm => 3,
            Tier::Withdrawal => {
                let t = self
                    .config
                    .assets
                    .get(spend.asset)
                    .ok_or_else(|| PolicyError::UnknownAsset(spend.asset.to_string()))?;
                if spend.amount >= t.level3_from {
                    3
                } else if spend.amount >= t.level2_from {
                    2
                } else {
                    1
                }
            }
        })
    }

    /// Checks `approvals` for `spend` at `now_unix`. On success the approvals
    /// are consumed (a second use is a replay); on any refusal none is.
    pub fn authorise(
        &self,
        spend: &Spend<'_>,
        approvals: &[Approval],
        now_unix: u64,
    ) -> Result<Decision, PolicyError> {
        let level = self.level(spend)?;
        let needed = match level {
            1 => 0,
            2 => 1,
            _ => self.config.quorum,
        };
        if approvals.len() > self.approvers.len() {
            return Err(PolicyError::TooMany { got: approvals.len(), limit: self.approvers.len() });
        }
        let mut seen = HashSet::new();
        for a in approvals {
            let key = self
                .approvers
                .get(&a.approver)
                .ok_or_else(|| PolicyError::UnknownApprover(a.approver.clone()))?;
            if !seen.insert(a.approver.as_str()) {
                return Err(PolicyError::DuplicateApproval(a.approver.clone()));
            }
            if &a.digest != spend.digest {
                return Err(PolicyError::DigestMismatch {
                    approver: a.approver.clone(),
                    approved: hex::encode(a.digest),
                    requested: hex::encode(spend.digest),
                });
            }
            let mismatch = if &a.key_id != spend.key_id {
                Some("key id")
            } else if a.asset != spend.asset {
                Some("asset")
            } else if a.amount != spend.amount {
                Some("amount")
            } else {
                None
            };
            if let Some(field) = mismatch {
                return Err(PolicyError::ContextMismatch { approver: a.approver.clone(), field });
            }
            let too_old = now_unix.saturating_sub(a.issued_unix) > self.config.max_approval_age_secs;
            let too_new = a.issued_unix.saturating_sub(now_unix) > self.config.max_clock_skew_secs;
            if too_old || too_new {
                return Err(PolicyError::Stale {
                    approver: a.approver.clone(),
                    issued_unix: a.issued_unix,
                    now_unix,
                    max_age_secs: self.config.max_approval_age_secs,
                });
            }
            let signature = ed25519_dalek::Signature::from_bytes(&a.signature);
            key.verify_strict(&Approval::message(spend, a.issued_unix, &a.nonce), &signature)
                .map_err(|_| PolicyError::BadSignature(a.approver.clone()))?;
        }
        if approvals.len() < needed {
            return Err(PolicyError::Insufficient { level, needed, got: approvals.len() });
        }
        // Consume atomically: all or none.
        let mut used = self.used.lock().map_err(|_| PolicyError::ReplayMemoryFull(0))?;
        for a in approvals {
            if used.contains_key(&(a.approver.clone(), a.nonce)) {
                return Err(PolicyError::Replayed(a.approver.clone()));
            }
        }
        self.prune(&mut used, now_unix);
        if used.len() + approvals.len() > self.config.max_remembered_approvals {
            return Err(PolicyError::ReplayMemoryFull(used.len()));
        }
        for a in approvals {
            used.insert((a.approver.clone(), a.nonce), a.issued_unix);
        }
        Ok(Decision { level, approvers: approvals.iter().map(|a| a.approver.clone()).collect() })
    }

    /// Marks an approval as used (recovered from the audit log at start-up).
    pub fn remember(&self, approver: &str, nonce: [u8; 16], issued_unix: u64) {
        if let Ok(mut used) = self.used.lock() {
            used.insert((approver.to_string(), nonce), issued_unix);
        }
    }

    /// Forget approvals that are stale anyway (they would be refused as stale).
    fn prune(&self, used: &mut HashMap<(String, [u8; 16]), u64>, now_unix: u64) {
        if used.len() < self.config.max_remembered_approvals / 2 {
            return;
        }
        let horizon =
            now_unix.saturating_sub(self.config.max_approval_age_secs + self.config.max_clock_skew_secs);
        used.retain(|_, issued| *issued >= horizon);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn approvers(n: u8) -> Vec<(String, ed25519_dalek::SigningKey)> {
        (1..=n).map(|i| (format!("a{i}"), ed25519_dalek::SigningKey::from_bytes(&[i; 32]))).collect()
    }

    fn config(approvers: &[(String, ed25519_dalek::SigningKey)], quorum: usize) -> PolicyConfig {
        let mut keys = BTreeMap::new();
        keys.insert(KeyId::new("hot").expect("id"), KeyPolicy { tier: Tier::Hot });
        PolicyConfig {
            quorum,
            approvers: approvers
                .iter()
                .map(|(id, k)| ApproverConfig { id: id.clone(), public_key: k.verifying_key().to_bytes() })
                .collect(),
            max_approval_age_secs: 100,
            max_clock_skew_secs: 10,
            max_remembered_approvals: 4,
            keys,
            assets: BTreeMap::new(),
        }
    }

    #[test]
    fn impossible_configurations_are_refused() {
        let a = approvers(5);
        assert!(Policy::new(config(&a, 6)).is_err(), "quorum above approvers");
        assert!(Policy::new(config(&a, 0)).is_err(), "zero quorum");
        let mut same_key = config(&a, 3);
        same_key.approvers[1].public_key = same_key.approvers[0].public_key;
        assert!(Policy::new(same_key).is_err(), "two approvers sharing a key");
        let mut same_id = config(&a, 3);
        same_id.approvers[1].id = "a1".into();
        assert!(Policy::new(same_id).is_err(), "approver registered twice");
        let mut bad_thresholds = config(&a, 3);
        bad_thresholds.assets.insert("ETH".into(), Thresholds { level2_from: 10, level3_from: 5 });
        assert!(Policy::new(bad_thresholds).is_err());
        assert!(Policy::new(config(&a, 3)).is_ok());
    }

    #[test]
    fn replay_memory_fails_closed_when_full_and_forgets_only_stale_approvals() {
        let a = approvers(2);
        let policy = Policy::new(config(&a, 2)).expect("policy");
        let key = KeyId::new("hot").expect("id");
        let digest = [1u8; 32];
        let spend = Spend { key_id: &key, asset: "ETH", amount: 1, digest: &digest };
        let now = 1_000_000;
        let pair =
            |t| vec![Approval::sign("a1", &a[0].1, &spend, t), Approval::sign("a2", &a[1].1, &spend, t)];
        // Two quorum-approved spends fill the memory of 4.
        policy.authorise(&spend, &pair(now), now).expect("first");
        policy.authorise(&spend, &pair(now), now).expect("second");
        assert_eq!(policy.authorise(&spend, &pair(now), now), Err(PolicyError::ReplayMemoryFull(4)));
        // Once the first ones are stale they are forgotten and room appears.
        let later = now + 200;
        policy.authorise(&spend, &pair(later), later).expect("after expiry");
    }
}
