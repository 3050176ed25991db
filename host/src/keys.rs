//! API keys: generation (≥128 bits, recognisable prefix, shown once), SHA-256
//! digests, and the lookup cache in front of the store.
//!
//! Lookups go digest → set of known digests → moka TTL cache → store. The set of
//! known digests (refreshed once per TTL and on every create) means a flood of
//! random invalid keys never reaches the store; valid keys cost one store read
//! per TTL. The cache also keeps the live quota view: charges are subtracted
//! at charge time, and charges queued but not yet committed are subtracted from
//! whatever the store returns, so a cache expiry before a flush cannot let a
//! key overspend.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};

use crate::metrics::Metrics;
use crate::store::{Charge, KeyRecord, KeyStatus, Store, StoreError};

/// Every Sluice key starts with this.
pub const KEY_PREFIX: &str = "sk-sl-";
/// Characters of the secret kept for display.
const DISPLAY_LEN: usize = KEY_PREFIX.len() + 6;

/// Hex SHA-256 of a secret.
pub fn digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What a new key should allow.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    /// Human name (required).
    pub name: String,
    /// Owner.
    #[serde(default)]
    pub owner: String,
    /// Allowed models (empty = all).
    #[serde(default)]
    pub models: Vec<String>,
    /// Allowed client networks (empty = any).
    #[serde(default)]
    pub networks: Vec<String>,
    /// Quota in credits (absent = unlimited).
    pub quota: Option<i64>,
    /// Expiry, Unix ms.
    pub expires_at_ms: Option<u64>,
    /// Requests per minute.
    pub rpm_limit: Option<u32>,
    /// Tokens per minute.
    pub tpm_limit: Option<u32>,
}

/// Creates a key record and its secret. The secret is returned once and never stored.
///
/// # Errors
/// When the OS random source fails.
pub fn generate(spec: &NewKey) -> Result<(String, KeyRecord), getrandom::Error> {
    let mut secret_bytes = [0u8; 24];
    getrandom::fill(&mut secret_bytes)?;
    let mut id_bytes = [0u8; 8];
    getrandom::fill(&mut id_bytes)?;
    let secret = format!("{KEY_PREFIX}{}", hex::encode(secret_bytes));
    let record = KeyRecord {
        id: format!("key_{}", hex::encode(id_bytes)),
        digest: digest(&secret),
        prefix: secret[..DISPLAY_LEN].to_string(),
        name: spec.name.clone(),
        owner: spec.owner.clone(),
        status: KeyStatus::Active,
        created_ms: now_ms(),
        expires_at_ms: spec.expires_at_ms,
        models: spec.models.clone(),
        networks: spec.networks.clone(),
        quota_total: spec.quota,
        quota_remaining: spec.quota,
        rpm_limit: spec.rpm_limit,
        tpm_limit: spec.tpm_limit,
    };
    Ok((secret, record))
}

/// A resolved key with its live remaining quota and its parsed network
/// allow-list.
#[derive(Debug)]
pub struct LiveKey {
    /// The stored record (its `quota_remaining` is as loaded).
    pub record: KeyRecord,
    remaining: Option<AtomicI64>,
    networks: Networks,
}

impl LiveKey {
    /// The live view of `record`, whose remaining quota is further lowered by
    /// `pending` (charges queued but not yet in the store).
    pub fn new(record: KeyRecord, pending: i64) -> Self {
        Self {
            remaining: record.quota_remaining.map(|q| AtomicI64::new(q - pending)),
            networks: Networks::parse(&record.networks),
            record,
        }
    }

    /// Remaining quota now (`None` = unlimited).
    pub fn remaining(&self) -> Option<i64> {
        self.remaining.as_ref().map(|r| r.load(Ordering::Relaxed))
    }

    /// Whether a client at `ip` may use the key.
    pub fn allows_client(&self, ip: &str) -> bool {
        self.networks.allow(ip)
    }
}

/// A key's client-network allow-list, parsed once when the key is loaded.
#[derive(Debug)]
struct Networks {
    /// Whether the key names any networks (an empty list allows every address).
    restricted: bool,
    /// The well-formed entries; malformed ones match nothing.
    nets: Vec<ipnet::IpNet>,
}

impl Networks {
    /// Parses CIDRs and bare addresses (a bare address is a one-address network).
    fn parse(entries: &[String]) -> Self {
        let nets = entries
            .iter()
            .filter_map(|n| {
                n.parse::<ipnet::IpNet>().ok().or_else(|| {
                    let ip = n.parse::<std::net::IpAddr>().ok()?.to_canonical();
                    Some(ipnet::IpNet::from(ip))
                })
            })
            .collect();
        Self {
            restricted: !entries.is_empty(),
            nets,
        }
    }

    /// True when `ip` lies in one of the networks, or when none are named.
    fn allow(&self, ip: &str) -> bool {
        if !self.restricted {
            return true;
        }
        let Ok(ip) = ip.parse::<std::net::IpAddr>().map(|ip| ip.to_canonical()) else {
            return false;
        };
        self.nets.iter().any(|net| net.contains(&ip))
    }
}

/// The key lookup cache and live quota ledger.
pub struct KeyCache {
    store: Arc<dyn Store>,
    found: moka::sync::Cache<String, Arc<LiveKey>>,
    known: ArcSwap<HashMap<String, String>>,
    pending: Mutex<HashMap<String, i64>>,
    metrics: Arc<Metrics>,
}

impl KeyCache {
    /// Builds the cache and loads the set of known digests.
    ///
    /// # Errors
    /// When the store cannot list keys.
    pub fn new(
        store: Arc<dyn Store>,
        ttl: Duration,
        capacity: u64,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StoreError> {
        let cache = Self {
            found: moka::sync::Cache::builder()
                .time_to_live(ttl)
                .max_capacity(capacity)
                .build(),
            known: ArcSwap::from_pointee(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            store,
            metrics,
        };
        cache.refresh_known()?;
        Ok(cache)
    }

    /// Reloads the set of known digests from the store (once per TTL in the background).
    ///
    /// # Errors
    /// When the store cannot list keys.
    pub fn refresh_known(&self) -> Result<(), StoreError> {
        let digests = self
            .store
            .list_keys()?
            .into_iter()
            .map(|k| (k.digest, k.id))
            .collect();
        self.known.store(Arc::new(digests));
        Ok(())
    }

    /// Resolves a secret to its key, or `None` when it matches no key.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn lookup(&self, secret: &str) -> Result<Option<Arc<LiveKey>>, StoreError> {
        let digest = digest(secret);
        let Some(id) = self.known.load().get(&digest).cloned() else {
            return Ok(None);
        };
        if let Some(hit) = self.found.get(&digest) {
            self.metrics.key_cache_hits.inc();
            return Ok(Some(hit));
        }
        self.metrics.key_cache_misses.inc();
        // Read pending charges before the store: a commit in between makes the
        // view conservative (charged twice for a moment), never generous.
        let pending = self.pending_by_id(&id).unwrap_or(0);
        let store = self.store.clone();
        let wanted = digest.clone();
        let record = tokio::task::spawn_blocking(move || store.key_by_digest(&wanted))
            .await
            .map_err(|e| StoreError::backend("task", e))??;
        let Some(record) = record else {
            return Ok(None);
        };
        let live = Arc::new(LiveKey::new(record, pending));
        self.found.insert(digest, live.clone());
        Ok(Some(live))
    }

    fn pending_by_id(&self, id: &str) -> Option<i64> {
        self.pending.lock().ok().and_then(|p| p.get(id).copied())
    }

    /// Records a charge at charge time: the live view drops at once, and the
    /// charge counts as pending until the writer commits it.
    pub fn charge(&self, key: &LiveKey, cost: i64) {
        if cost == 0 {
            return;
        }
        if let Some(r) = &key.remaining {
            r.fetch_sub(cost, Ordering::Relaxed);
        }
        if let Ok(mut pending) = self.pending.lock() {
            *pending.entry(key.record.id.clone()).or_default() += cost;
        }
    }

    /// Called by the writer after a commit: those charges are now in the store.
    pub fn committed(&self, charges: &[Charge]) {
        let Ok(mut pending) = self.pending.lock() else {
            return;
        };
        for c in charges {
            if let Some(p) = pending.get_mut(&c.key_id) {
                *p -= c.cost;
                if *p <= 0 {
                    pending.remove(&c.key_id);
                }
            }
        }
    }

    /// Adds a freshly created key to the known set.
    pub fn add_known(&self, key: &KeyRecord) {
        let mut next = HashMap::clone(&self.known.load());
        next.insert(key.digest.clone(), key.id.clone());
        self.known.store(Arc::new(next));
    }

    /// Drops a key from the cache so the next request reads the store.
    pub fn invalidate(&self, digest: &str) {
        self.found.invalidate(digest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_match_cidrs_bare_addresses_and_mapped_ipv4() {
        let allow = |nets: &[&str], ip: &str| {
            let nets: Vec<String> = nets.iter().map(|s| (*s).to_string()).collect();
            Networks::parse(&nets).allow(ip)
        };
        assert!(allow(&[], "203.0.113.9"));
        assert!(allow(&["10.0.0.0/8"], "10.2.3.4"));
        assert!(!allow(&["10.0.0.0/8"], "11.2.3.4"));
        assert!(allow(&["127.0.0.1"], "127.0.0.1"));
        assert!(allow(&["10.0.0.0/8"], "::ffff:10.0.0.1"));
        assert!(allow(&["::ffff:10.0.0.1"], "10.0.0.1"));
        assert!(allow(&["::1/128"], "::1"));
        assert!(!allow(&["garbage"], "10.0.0.1"));
        assert!(allow(&["garbage", "10.0.0.0/8"], "10.0.0.1"));
        assert!(!allow(&["10.0.0.0/8"], "not an ip"));
    }

    #[test]
    fn secrets_are_long_prefixed_and_only_digested() -> Result<(), getrandom::Error> {
        let (secret, record) = generate(&NewKey {
            name: "n".into(),
            ..NewKey::default()
        })?;
        assert!(secret.starts_with(KEY_PREFIX));
        assert_eq!(secret.len(), KEY_PREFIX.len() + 48);
        assert_eq!(record.digest, digest(&secret));
        assert!(secret.starts_with(&record.prefix));
        assert!(
            !serde_json::to_string(&record)
                .unwrap_or_default()
                .contains(&secret)
        );
        Ok(())
    }
}
