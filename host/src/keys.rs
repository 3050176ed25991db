//! API keys: generation (≥128 bits, recognisable prefix, shown once), SHA-256
//! digests, and the lookup cache in front of the store.
//!
//! Lookups go digest → set of known digests → moka TTL cache → store. The set of
//! known digests (refreshed once per TTL and on every create) means a flood of
//! random invalid keys never reaches the store; valid keys cost one store read
//! per TTL. Each key's live [`Balance`] outlives its cache entry: loaded from
//! the store once, then moved only by reservations, settlements and admin
//! adjustments, so a cache expiry can neither forget an open reservation nor
//! a charge still queued for the store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
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
    HexDigest::of(secret).as_str().to_owned()
}

/// Hex SHA-256 of a secret, on the stack: a lookup hashes every request's
/// secret and needs the text only to find it, not to keep it.
struct HexDigest([u8; 64]);

impl HexDigest {
    fn of(secret: &str) -> Self {
        let mut text = [0; 64];
        // 32 bytes always fill 64 digits: the only error (a length
        // mismatch) cannot happen.
        let _ = hex::encode_to_slice(Sha256::digest(secret.as_bytes()), &mut text);
        Self(text)
    }

    fn as_str(&self) -> &str {
        // Hex digits only, so always UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// Maps keyed by digests: SHA-256 outputs no client can steer, so a fast
/// seeded hash in place of SipHash.
type DigestHasher = foldhash::fast::RandomState;

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

/// A resolved key with its live balance and its parsed network allow-list.
#[derive(Debug)]
pub struct LiveKey {
    /// The stored record (its `quota_remaining` is as loaded).
    pub record: KeyRecord,
    /// The key's live balance, shared by every cache entry of the key.
    pub balance: Arc<Balance>,
    networks: Networks,
}

impl LiveKey {
    /// The live view of `record` with its balance.
    pub fn new(record: KeyRecord, balance: Arc<Balance>) -> Self {
        Self {
            networks: Networks::parse(&record.networks),
            balance,
            record,
        }
    }

    /// Quota that can still be reserved now: remaining, less charges not yet
    /// in the store, less open reservations (`None` = unlimited).
    pub fn remaining(&self) -> Option<i64> {
        self.balance.available()
    }

    /// Whether a client at `ip` may use the key.
    pub fn allows_client(&self, ip: &str) -> bool {
        self.networks.allow(ip)
    }
}

/// One key's live quota: what the store will hold once every settled charge
/// commits, the charges not yet committed, and open reservations.
#[derive(Debug, Default)]
pub struct Balance(Mutex<Ledgered>);

#[derive(Debug, Default)]
struct Ledgered {
    /// Remaining quota with every settled charge taken off, committed or
    /// not (`None` = unlimited).
    remaining: Option<i64>,
    /// Charges settled here and not yet committed to the store.
    pending: i64,
    /// Open reservations.
    reserved: i64,
}

impl Balance {
    /// A balance whose store holds `remaining`, with nothing pending.
    pub fn new(remaining: Option<i64>) -> Self {
        Self(Mutex::new(Ledgered {
            remaining,
            ..Ledgered::default()
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Ledgered> {
        // Three integers updated together under the lock: a panic elsewhere
        // cannot leave them half-written, so a poisoned lock is still sound.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Quota left to reserve (`None` = unlimited).
    pub fn available(&self) -> Option<i64> {
        let b = self.lock();
        b.remaining.map(|r| r - b.reserved)
    }

    /// Reserves what `choose` picks given the quota left to reserve
    /// (`None` = unlimited), atomically: `choose` returns the amount, or
    /// `None` to refuse. Returns the amount reserved.
    pub fn reserve(&self, choose: impl FnOnce(Option<i64>) -> Option<i64>) -> Option<i64> {
        let mut b = self.lock();
        let available = b.remaining.map(|r| r - b.reserved);
        let amount = choose(available)?.max(0);
        b.reserved += amount;
        Some(amount)
    }

    /// Settles a reservation: releases `reserved` and spends `charged`, which
    /// stays pending until the store commits it.
    pub fn settle(&self, reserved: i64, charged: i64) {
        let mut b = self.lock();
        b.reserved -= reserved;
        b.pending += charged;
        if let Some(r) = b.remaining.as_mut() {
            *r -= charged;
        }
    }

    /// The store committed `charged` (`kept`), or gave up on it, so the
    /// quota it took is given back: the store never took it.
    fn committed(&self, charged: i64, kept: bool) {
        let mut b = self.lock();
        b.pending -= charged;
        if !kept && let Some(r) = b.remaining.as_mut() {
            *r += charged;
        }
    }

    /// An admin set the store's remaining quota to `stored`: the charges
    /// still pending will come off it when they commit.
    fn set(&self, stored: Option<i64>) {
        let mut b = self.lock();
        b.remaining = stored.map(|s| s - b.pending);
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
    found: moka::sync::Cache<String, Arc<LiveKey>, DigestHasher>,
    known: ArcSwap<HashMap<String, String, DigestHasher>>,
    balances: Mutex<HashMap<String, Arc<Balance>>>,
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
                .build_with_hasher(DigestHasher::default()),
            known: ArcSwap::from_pointee(HashMap::default()),
            balances: Mutex::new(HashMap::new()),
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
        let hex = HexDigest::of(secret);
        let digest = hex.as_str();
        if !self.known.load().contains_key(digest) {
            return Ok(None);
        }
        if let Some(hit) = self.found.get(digest) {
            self.metrics.key_cache_hits.inc();
            return Ok(Some(hit));
        }
        self.metrics.key_cache_misses.inc();
        let store = self.store.clone();
        let wanted = digest.to_owned();
        let record = tokio::task::spawn_blocking(move || store.key_by_digest(&wanted))
            .await
            .map_err(|e| StoreError::backend("task", e))??;
        let Some(record) = record else {
            return Ok(None);
        };
        let balance = self.balance(&record.id, record.quota_remaining);
        let live = Arc::new(LiveKey::new(record, balance));
        self.found.insert(digest.to_owned(), live.clone());
        Ok(Some(live))
    }

    fn balances(&self) -> MutexGuard<'_, HashMap<String, Arc<Balance>>> {
        self.balances
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The live balance of key `id`, created from the store's `remaining`
    /// the first time the key is seen.
    fn balance(&self, id: &str, remaining: Option<i64>) -> Arc<Balance> {
        self.balances()
            .entry(id.to_string())
            .or_insert_with(|| Arc::new(Balance::new(remaining)))
            .clone()
    }

    /// Called by the writer after each commit (`kept`), or when it gave up
    /// on a batch: those charges are in the store now, or never will be.
    pub fn committed(&self, charges: &[Charge], kept: bool) {
        let balances = self.balances();
        for c in charges {
            if let Some(b) = balances.get(&c.key_id) {
                b.committed(c.cost, kept);
            }
        }
    }

    /// An admin changed key `id`: the store now holds `remaining`.
    pub fn quota_set(&self, id: &str, remaining: Option<i64>) {
        if let Some(b) = self.balances().get(id) {
            b.set(remaining);
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
    fn the_digest_is_sha256_in_lowercase_hex() {
        assert_eq!(
            digest("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(digest("sk-sl-x"), hex::encode(Sha256::digest(b"sk-sl-x")));
    }

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
