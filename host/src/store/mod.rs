//! Storage: one object-safe trait over two embedded backends (redb, SQLite in WAL
//! mode), the records they hold, and the batch writer in front of them.

pub mod committer;
pub mod ledger;
pub mod redb;
mod rows;
pub mod sqlite;
pub mod writer;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::Backend;
use crate::metering::CostSplit;
pub use ledger::Charge;
use ledger::{AuditReport, Audited, Auditor, LedgerEntry};

/// Current schema version of both backends; older stores are migrated at open
/// (version 2 added the ledger; version 3 dropped redb's time index; version 4
/// writes redb's records and ledger entries a batch to a row, which earlier
/// versions cannot read).
pub const SCHEMA_VERSION: u64 = 4;

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend reported an error.
    #[error("{backend}: {message}")]
    Backend {
        /// Which backend.
        backend: &'static str,
        /// Its message.
        message: String,
    },
    /// The store was written by a newer Sluice.
    #[error("store schema version {found} is newer than this build's {supported}")]
    TooNew {
        /// Version found on disk.
        found: u64,
        /// Version this build writes.
        supported: u64,
    },
    /// No such key.
    #[error("no key with id {0}")]
    NoSuchKey(String),
}

impl StoreError {
    /// Wraps a backend error.
    pub fn backend(backend: &'static str, e: impl std::fmt::Display) -> Self {
        Self::Backend {
            backend,
            message: e.to_string(),
        }
    }
}

/// Lifecycle state of an API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    /// Usable.
    Active,
    /// Temporarily refused.
    Disabled,
    /// Permanently refused.
    Revoked,
}

/// An API key as stored: never the secret, only its SHA-256 digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Stable id, e.g. `key_01J…`.
    pub id: String,
    /// Hex SHA-256 of the secret.
    pub digest: String,
    /// Display prefix of the secret.
    pub prefix: String,
    /// Human name.
    pub name: String,
    /// Owner.
    pub owner: String,
    /// Status.
    pub status: KeyStatus,
    /// Creation time, Unix ms.
    pub created_ms: u64,
    /// Expiry, Unix ms.
    pub expires_at_ms: Option<u64>,
    /// Allowed models (empty = all).
    pub models: Vec<String>,
    /// Allowed client networks (empty = any).
    pub networks: Vec<String>,
    /// Quota granted, in credits (`None` = unlimited).
    pub quota_total: Option<i64>,
    /// Quota left, in credits (`None` = unlimited).
    pub quota_remaining: Option<i64>,
    /// Requests per minute.
    pub rpm_limit: Option<u32>,
    /// Tokens per minute.
    pub tpm_limit: Option<u32>,
}

/// A partial update of a key; `None` fields are left alone.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyPatch {
    /// New name.
    pub name: Option<String>,
    /// New status.
    pub status: Option<KeyStatus>,
    /// New expiry (`Some(None)` clears it).
    #[serde(default, with = "double_option")]
    pub expires_at_ms: Option<Option<u64>>,
    /// New allowed models.
    pub models: Option<Vec<String>>,
    /// New allowed networks.
    pub networks: Option<Vec<String>>,
    /// New quota: resets both total and remaining (`Some(None)` = unlimited).
    #[serde(default, with = "double_option")]
    pub quota: Option<Option<i64>>,
    /// New RPM limit (`Some(None)` clears it).
    #[serde(default, with = "double_option")]
    pub rpm_limit: Option<Option<u32>>,
    /// New TPM limit (`Some(None)` clears it).
    #[serde(default, with = "double_option")]
    pub tpm_limit: Option<Option<u32>>,
}

/// Distinguishes "absent" from "null" in JSON patches.
mod double_option {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}

impl KeyPatch {
    /// Applies the patch to `key`.
    pub fn apply(&self, key: &mut KeyRecord) {
        if let Some(name) = &self.name {
            key.name.clone_from(name);
        }
        if let Some(status) = self.status {
            key.status = status;
        }
        if let Some(expiry) = self.expires_at_ms {
            key.expires_at_ms = expiry;
        }
        if let Some(models) = &self.models {
            key.models.clone_from(models);
        }
        if let Some(networks) = &self.networks {
            key.networks.clone_from(networks);
        }
        if let Some(quota) = self.quota {
            key.quota_total = quota;
            key.quota_remaining = quota;
        }
        if let Some(rpm) = self.rpm_limit {
            key.rpm_limit = rpm;
        }
        if let Some(tpm) = self.tpm_limit {
            key.tpm_limit = tpm;
        }
    }
}

/// One usage log record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageRecord {
    /// Sequence number assigned by the store (0 before it is stored).
    #[serde(default)]
    pub seq: u64,
    /// Request id.
    pub request_id: String,
    /// Completion time, Unix ms.
    pub time_ms: u64,
    /// Key id ("" when no key was resolved).
    pub key_id: String,
    /// Key display prefix.
    pub key_prefix: String,
    /// Endpoint name.
    pub endpoint: String,
    /// Model asked for.
    pub model: String,
    /// Model sent upstream.
    pub upstream_model: String,
    /// Channel that served it.
    pub channel_id: String,
    /// HTTP status sent to the client.
    pub status: u16,
    /// Error kind, when failed.
    pub error_kind: Option<String>,
    /// Prompt tokens, every kind.
    pub prompt_tokens: u32,
    /// Completion tokens, every kind (reasoning included).
    pub completion_tokens: u32,
    /// Prompt tokens read from the provider's cache.
    #[serde(default)]
    pub cached_tokens: u32,
    /// Prompt tokens written to the provider's cache.
    #[serde(default)]
    pub cache_write_tokens: u32,
    /// Completion tokens spent reasoning.
    #[serde(default)]
    pub reasoning_tokens: u32,
    /// Audio prompt tokens.
    #[serde(default)]
    pub audio_prompt_tokens: u32,
    /// Audio completion tokens.
    #[serde(default)]
    pub audio_completion_tokens: u32,
    /// Whether the gateway counted the tokens (the upstream reported none).
    #[serde(default)]
    pub tokens_counted: bool,
    /// Cost in credits (charged to the key in the same transaction, as a
    /// ledger entry).
    pub cost: i64,
    /// The reservation held at admission, in credits.
    #[serde(default)]
    pub reserved: i64,
    /// The cost of each kind of token, in millionths of a credit.
    #[serde(default)]
    pub cost_split: CostSplit,
    /// Total latency, ms.
    pub latency_ms: u32,
    /// Time to first token, ms.
    pub ttft_ms: Option<u32>,
    /// Streamed?
    pub stream: bool,
    /// Cut short?
    pub partial: bool,
    /// Client IP.
    pub client_ip: String,
    /// Plugin labels.
    pub labels: BTreeMap<String, String>,
    /// Prompt text (only with content logging on).
    pub prompt: Option<String>,
    /// Completion text (only with content logging on).
    pub completion: Option<String>,
}

impl UsageRecord {
    /// The record's metering alone (tokens of every kind, cost, reservation
    /// and split), every other field empty: what a shaper can never change.
    pub fn metered(&self) -> Self {
        Self {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            cached_tokens: self.cached_tokens,
            cache_write_tokens: self.cache_write_tokens,
            reasoning_tokens: self.reasoning_tokens,
            audio_prompt_tokens: self.audio_prompt_tokens,
            audio_completion_tokens: self.audio_completion_tokens,
            tokens_counted: self.tokens_counted,
            cost: self.cost,
            reserved: self.reserved,
            cost_split: self.cost_split,
            ..Self::default()
        }
    }
}

/// What the writer commits in one transaction: records to log and charges to
/// post. They are separate because a shaper may drop a log record, but never
/// its charge.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    /// Records to append.
    pub records: Vec<UsageRecord>,
    /// Charges to apply.
    pub charges: Vec<Charge>,
}

/// Filters for usage queries; every field is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    /// Records at or after this time (Unix ms).
    pub since_ms: Option<u64>,
    /// Records before this time (Unix ms).
    pub until_ms: Option<u64>,
    /// Only this key.
    pub key_id: Option<String>,
    /// Only this model (as asked).
    pub model: Option<String>,
    /// Only this channel.
    pub channel_id: Option<String>,
    /// Only this status.
    pub status: Option<u16>,
    /// Page size (default 100, at most 1000).
    pub limit: Option<usize>,
    /// Continue after this cursor (`seq` of the last record of the previous page).
    pub before_seq: Option<u64>,
}

impl UsageQuery {
    /// The effective page size.
    pub fn page_size(&self) -> usize {
        self.limit.unwrap_or(100).clamp(1, 1000)
    }

    /// Whether `r` passes the non-time filters.
    pub fn matches(&self, r: &UsageRecord) -> bool {
        self.key_id.as_ref().is_none_or(|k| *k == r.key_id)
            && self.model.as_ref().is_none_or(|m| *m == r.model)
            && self.channel_id.as_ref().is_none_or(|c| *c == r.channel_id)
            && self.status.is_none_or(|s| s == r.status)
            && self.since_ms.is_none_or(|t| r.time_ms >= t)
            && self.until_ms.is_none_or(|t| r.time_ms < t)
            && self.before_seq.is_none_or(|s| r.seq < s)
    }
}

/// What a summary groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    /// Per key.
    Key,
    /// Per model.
    Model,
    /// Per channel.
    Channel,
}

/// Summary bucket width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Bucket {
    /// Hourly.
    Hour,
    /// Daily.
    Day,
}

impl Bucket {
    fn millis(self) -> u64 {
        match self {
            Self::Hour => 3_600_000,
            Self::Day => 86_400_000,
        }
    }
}

/// One row of a usage summary.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SummaryRow {
    /// Bucket start, Unix ms.
    pub bucket_ms: u64,
    /// The group value (key id, model or channel).
    pub group: String,
    /// Requests.
    pub requests: u64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Credits.
    pub cost: i64,
    /// Requests with status >= 400.
    pub errors: u64,
}

/// The storage interface. Object-safe; both backends implement it.
pub trait Store: Send + Sync {
    /// Backend name for logs and metrics.
    fn backend(&self) -> &'static str;
    /// Appends records and posts charges (ledger entries and balances) in
    /// one durable transaction.
    fn append(&self, batch: &Batch) -> Result<(), StoreError>;
    /// Stores a new key, and its grant in the ledger.
    fn create_key(&self, key: &KeyRecord) -> Result<(), StoreError>;
    /// Finds a key by the hex digest of its secret.
    fn key_by_digest(&self, digest: &str) -> Result<Option<KeyRecord>, StoreError>;
    /// Finds a key by id.
    fn key_by_id(&self, id: &str) -> Result<Option<KeyRecord>, StoreError>;
    /// Every key, oldest first.
    fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError>;
    /// Applies `patch` to key `id` atomically (a quota change with its
    /// ledger entry) and returns the result.
    fn update_key(&self, id: &str, patch: &KeyPatch) -> Result<KeyRecord, StoreError>;
    /// Visits records matching `q`, newest first, until `visit` returns false.
    fn scan_usage(
        &self,
        q: &UsageQuery,
        visit: &mut dyn FnMut(UsageRecord) -> bool,
    ) -> Result<(), StoreError>;
    /// Deletes up to `limit` records, and folds up to `limit` ledger entries
    /// into their keys' carried balances, older than `cutoff_ms`; returns
    /// how many of each.
    fn purge_before(&self, cutoff_ms: u64, limit: usize) -> Result<(usize, usize), StoreError>;
    /// Key `key_id`'s ledger entries, newest first, at most `limit`.
    fn ledger(&self, key_id: &str, limit: usize) -> Result<Vec<LedgerEntry>, StoreError>;
    /// Visits, from one consistent snapshot: every key, every ledger
    /// account, every ledger entry in sequence order, then every usage
    /// record's charge.
    fn audit_snapshot(&self, visit: &mut dyn FnMut(Audited)) -> Result<(), StoreError>;
    /// Reopens the underlying database after a failed commit.
    fn reopen(&self) -> Result<(), StoreError>;

    /// Recomputes every balance from the ledger (see [`Auditor`]).
    fn audit(&self) -> Result<AuditReport, StoreError> {
        let mut auditor = Auditor::default();
        self.audit_snapshot(&mut |item| auditor.observe(item))?;
        Ok(auditor.report())
    }

    /// One page of records matching `q`, newest first.
    fn query_usage(&self, q: &UsageQuery) -> Result<Vec<UsageRecord>, StoreError> {
        let limit = q.page_size();
        let mut page = Vec::with_capacity(limit.min(128));
        self.scan_usage(q, &mut |r| {
            page.push(r);
            page.len() < limit
        })?;
        Ok(page)
    }

    /// Totals per group and bucket over every record matching `q` (its page
    /// fields are ignored), newest bucket first.
    fn summarize(
        &self,
        q: &UsageQuery,
        group: GroupBy,
        bucket: Bucket,
    ) -> Result<Vec<SummaryRow>, StoreError> {
        let q = UsageQuery {
            limit: None,
            before_seq: None,
            ..q.clone()
        };
        let mut rows: BTreeMap<(u64, String), SummaryRow> = BTreeMap::new();
        let width = bucket.millis();
        self.scan_usage(&q, &mut |r| {
            let group_value = match group {
                GroupBy::Key => r.key_id,
                GroupBy::Model => r.model,
                GroupBy::Channel => r.channel_id,
            };
            let start = r.time_ms - r.time_ms % width;
            let row = rows
                .entry((start, group_value.clone()))
                .or_insert_with(|| SummaryRow {
                    bucket_ms: start,
                    group: group_value,
                    ..SummaryRow::default()
                });
            row.requests += 1;
            row.prompt_tokens += u64::from(r.prompt_tokens);
            row.completion_tokens += u64::from(r.completion_tokens);
            row.cost += r.cost;
            row.errors += u64::from(r.status >= 400);
            true
        })?;
        Ok(rows.into_values().rev().collect())
    }
}

/// Opens the configured backend, creating and migrating it as needed.
///
/// # Errors
/// When the file cannot be opened or migrated.
pub fn open(backend: Backend, path: &Path) -> Result<Arc<dyn Store>, StoreError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| StoreError::backend("fs", format!("{}: {e}", parent.display())))?;
    }
    owner_only(path).map_err(|e| StoreError::backend("fs", format!("{}: {e}", path.display())))?;
    Ok(match backend {
        Backend::Redb => Arc::new(redb::RedbStore::open(path)?),
        Backend::Sqlite => Arc::new(sqlite::SqliteStore::open(path)?),
    })
}

/// Creates the store file readable and writable by its owner only (0600), or
/// narrows an existing one to that: it holds key digests and usage. SQLite
/// gives its WAL and shared-memory files the database file's mode.
fn owner_only(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

#[cfg(test)]
pub(crate) mod conformance;

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).map_or(0, |m| m.permissions().mode() & 0o777)
    }

    #[test]
    fn store_files_are_owner_only() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::backend("test", e))?;
        for (backend, name) in [(Backend::Redb, "s.redb"), (Backend::Sqlite, "s.db")] {
            let path = dir.path().join(name);
            let store = open(backend, &path)?;
            store.create_key(&conformance::key("k", None))?;
            assert_eq!(mode(&path), 0o600, "{name}");
            let wal = dir.path().join(format!("{name}-wal"));
            if wal.exists() {
                assert_eq!(mode(&wal), 0o600, "{name}-wal");
            }
            drop(store);
            // An existing file with a wider mode is narrowed.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
                .map_err(|e| StoreError::backend("test", e))?;
            drop(open(backend, &path)?);
            assert_eq!(mode(&path), 0o600, "{name} reopened");
        }
        Ok(())
    }
}
