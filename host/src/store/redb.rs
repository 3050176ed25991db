//! The redb backend (default): usage records and keys as JSON values, a time
//! index for purges, and one durable commit per batch.

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::ledger::{
    Audited, LedgerAccount, LedgerEntry, LedgerKind, Posting, charges_by_key, open_account,
};
use super::{
    Batch, KeyPatch, KeyRecord, SCHEMA_VERSION, Store, StoreError, UsageQuery, UsageRecord,
};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("keys");
const KEY_DIGESTS: TableDefinition<&str, &str> = TableDefinition::new("key_digests");
const USAGE: TableDefinition<u64, &[u8]> = TableDefinition::new("usage");
/// The time index of schema 2, dropped by version 3: records are appended in
/// completion order, so retention scans them by sequence number instead.
const USAGE_BY_TIME: TableDefinition<(u64, u64), ()> = TableDefinition::new("usage_by_time");
const LEDGER: TableDefinition<u64, &[u8]> = TableDefinition::new("ledger");
const ACCOUNTS: TableDefinition<&str, &[u8]> = TableDefinition::new("ledger_accounts");
/// Each key's ledger entries, `(key id, seq)`, for per-key reads.
const LEDGER_BY_KEY: TableDefinition<(&str, u64), ()> = TableDefinition::new("ledger_by_key");

/// Records are appended in completion order up to small reorderings; a time-bounded
/// scan stops once it is this far past its lower bound.
const SCAN_SLACK_MS: u64 = 60_000;

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::backend("redb", e)
}

/// redb's page cache. Its default (1 GiB) lets the gateway's RSS grow with the
/// usage table; appends and key reads need only the hot pages, so a small cache
/// (like SQLite's) keeps memory flat.
const CACHE_BYTES: usize = 32 << 20;

/// The redb store.
pub struct RedbStore {
    path: PathBuf,
    db: RwLock<Option<Database>>,
}

impl RedbStore {
    /// Opens (creating and migrating) the database at `path`.
    ///
    /// # Errors
    /// When the file cannot be opened, or was written by a newer schema.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Self::open_db(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            db: RwLock::new(Some(db)),
        })
    }

    fn open_db(path: &Path) -> Result<Database, StoreError> {
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(err)?;
        let tx = db.begin_write().map_err(err)?;
        let found = tx
            .open_table(META)
            .map_err(err)?
            .get("schema_version")
            .map_err(err)?
            .map(|v| v.value());
        match found {
            Some(v) if v > SCHEMA_VERSION => {
                return Err(StoreError::TooNew {
                    found: v,
                    supported: SCHEMA_VERSION,
                });
            }
            // 1 → 2: every key's balance opens its ledger.
            Some(1) => open_ledgers(&tx)?,
            // The current version, or a new file whose tables are created below.
            _ => {}
        }
        // 2 → 3: the time index goes (one insert less per record).
        if found.is_some_and(|v| v < 3) {
            tx.delete_table(USAGE_BY_TIME).map_err(err)?;
        }
        tx.open_table(KEYS).map_err(err)?;
        tx.open_table(KEY_DIGESTS).map_err(err)?;
        tx.open_table(USAGE).map_err(err)?;
        tx.open_table(LEDGER).map_err(err)?;
        tx.open_table(ACCOUNTS).map_err(err)?;
        tx.open_table(LEDGER_BY_KEY).map_err(err)?;
        tx.open_table(META)
            .map_err(err)?
            .insert("schema_version", SCHEMA_VERSION)
            .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(db)
    }

    fn with_db<R>(
        &self,
        f: impl FnOnce(&Database) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let guard = self.db.read().map_err(|_| err("lock poisoned"))?;
        let db = guard.as_ref().ok_or_else(|| err("database is closed"))?;
        f(db)
    }
}

fn encode(value: &impl serde::Serialize) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(err)
}

/// The first byte of a value in the compact encoding (postcard). A JSON value
/// starts with `{`, so values of both encodings live side by side: stores
/// written before the compact encoding read as they are.
const COMPACT: u8 = 0xC1;

/// Encodes a usage record or ledger entry, the values written once per
/// request: postcard is about 3× smaller than JSON and several times faster
/// to write and read. Only for types without `deserialize_any` (no flatten,
/// untagged enums or custom deserializers).
fn encode_compact(value: &impl serde::Serialize, buf: &mut Vec<u8>) -> Result<(), StoreError> {
    buf.clear();
    buf.push(COMPACT);
    postcard::to_io(value, &mut *buf).map_err(err)?;
    Ok(())
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&COMPACT, compact)) => postcard::from_bytes(compact).map_err(err),
        _ => serde_json::from_slice(bytes).map_err(err),
    }
}

/// The ledger tables of one write transaction.
struct Ledger<'tx> {
    meta: redb::Table<'tx, &'static str, u64>,
    entries: redb::Table<'tx, u64, &'static [u8]>,
    accounts: redb::Table<'tx, &'static str, &'static [u8]>,
    by_key: redb::Table<'tx, (&'static str, u64), ()>,
    keys: redb::Table<'tx, &'static str, &'static [u8]>,
}

impl<'tx> Ledger<'tx> {
    fn open(tx: &'tx redb::WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self {
            meta: tx.open_table(META).map_err(err)?,
            entries: tx.open_table(LEDGER).map_err(err)?,
            accounts: tx.open_table(ACCOUNTS).map_err(err)?,
            by_key: tx.open_table(LEDGER_BY_KEY).map_err(err)?,
            keys: tx.open_table(KEYS).map_err(err)?,
        })
    }

    fn key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        self.keys
            .get(id)
            .map_err(err)?
            .map(|v| decode(v.value()))
            .transpose()
    }

    fn account(&self, id: &str) -> Result<LedgerAccount, StoreError> {
        Ok(self
            .accounts
            .get(id)
            .map_err(err)?
            .map(|v| decode(v.value()))
            .transpose()?
            .unwrap_or_default())
    }

    /// Stores a key, its account and the entries posted to them.
    fn save(
        &mut self,
        key: &KeyRecord,
        account: &LedgerAccount,
        entries: impl IntoIterator<Item = LedgerEntry>,
    ) -> Result<(), StoreError> {
        let mut seq = self
            .meta
            .get("next_ledger_seq")
            .map_err(err)?
            .map_or(1, |v| v.value());
        let mut buf = Vec::with_capacity(128);
        for entry in entries {
            encode_compact(&entry, &mut buf)?;
            self.entries.insert(seq, buf.as_slice()).map_err(err)?;
            self.by_key
                .insert((key.id.as_str(), seq), ())
                .map_err(err)?;
            seq += 1;
        }
        self.meta.insert("next_ledger_seq", seq).map_err(err)?;
        self.keys
            .insert(key.id.as_str(), encode(key)?.as_slice())
            .map_err(err)?;
        self.accounts
            .insert(key.id.as_str(), encode(account)?.as_slice())
            .map_err(err)?;
        Ok(())
    }
}

/// Gives every key of a store that predates the ledger its opening entry.
fn open_ledgers(tx: &redb::WriteTransaction) -> Result<(), StoreError> {
    let mut ledger = Ledger::open(tx)?;
    let keys = ledger
        .keys
        .iter()
        .map_err(err)?
        .map(|entry| entry.map_err(err).and_then(|(_, v)| decode(v.value())))
        .collect::<Result<Vec<KeyRecord>, _>>()?;
    let time_ms = crate::keys::now_ms();
    for key in keys {
        let (account, entry) =
            open_account(&key.id, key.quota_remaining, LedgerKind::Opening, time_ms);
        ledger.save(&key, &account, entry)?;
    }
    Ok(())
}

/// Up to `limit` records older than `cutoff_ms`, oldest first. Records are in
/// completion order up to small reorderings, so the scan goes on past the
/// cutoff for [`SCAN_SLACK_MS`] before it stops; one that is skipped is
/// purged by a later pass.
fn expired(
    usage: &impl ReadableTable<u64, &'static [u8]>,
    cutoff_ms: u64,
    limit: usize,
) -> Result<Vec<u64>, StoreError> {
    let mut doomed = Vec::new();
    for entry in usage.iter().map_err(err)? {
        let (key, value) = entry.map_err(err)?;
        let record: UsageRecord = decode(value.value())?;
        if record.time_ms >= cutoff_ms.saturating_add(SCAN_SLACK_MS) || doomed.len() == limit {
            break;
        }
        if record.time_ms < cutoff_ms {
            doomed.push(key.value());
        }
    }
    Ok(doomed)
}

impl Store for RedbStore {
    fn backend(&self) -> &'static str {
        "redb"
    }

    fn append(&self, batch: &Batch) -> Result<(), StoreError> {
        self.with_db(|db| {
            let tx = db.begin_write().map_err(err)?;
            {
                let mut ledger = Ledger::open(&tx)?;
                let time_ms = crate::keys::now_ms();
                for (key_id, charges) in charges_by_key(&batch.charges) {
                    let Some(mut key) = ledger.key(key_id)? else {
                        continue;
                    };
                    let mut account = ledger.account(key_id)?;
                    let mut posting = Posting {
                        key_id,
                        remaining: &mut key.quota_remaining,
                        account: &mut account,
                        time_ms,
                    };
                    let entries: Vec<_> = charges.iter().map(|c| posting.charge(c)).collect();
                    ledger.save(&key, &account, entries)?;
                }
            }
            crate::failpoint::hit("append");
            {
                let mut meta = tx.open_table(META).map_err(err)?;
                let mut usage = tx.open_table(USAGE).map_err(err)?;
                let mut seq = meta.get("next_seq").map_err(err)?.map_or(1, |v| v.value());
                let mut buf = Vec::with_capacity(512);
                // The sequence number is the key; records are stored with `seq = 0`
                // and get it back from the key when read.
                for record in &batch.records {
                    encode_compact(record, &mut buf)?;
                    usage.insert(seq, buf.as_slice()).map_err(err)?;
                    seq += 1;
                }
                meta.insert("next_seq", seq).map_err(err)?;
            }
            tx.commit().map_err(err)
        })
    }

    fn create_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        self.with_db(|db| {
            let tx = db.begin_write().map_err(err)?;
            {
                let keys = tx.open_table(KEYS).map_err(err)?;
                let mut digests = tx.open_table(KEY_DIGESTS).map_err(err)?;
                if keys.get(key.id.as_str()).map_err(err)?.is_some()
                    || digests.get(key.digest.as_str()).map_err(err)?.is_some()
                {
                    return Err(err(format!("key {} already exists", key.id)));
                }
                digests
                    .insert(key.digest.as_str(), key.id.as_str())
                    .map_err(err)?;
            }
            let mut ledger = Ledger::open(&tx)?;
            let (account, grant) = open_account(
                &key.id,
                key.quota_remaining,
                LedgerKind::Grant,
                crate::keys::now_ms(),
            );
            ledger.save(key, &account, grant)?;
            drop(ledger);
            tx.commit().map_err(err)
        })
    }

    fn key_by_digest(&self, digest: &str) -> Result<Option<KeyRecord>, StoreError> {
        self.with_db(|db| {
            let tx = db.begin_read().map_err(err)?;
            let digests = tx.open_table(KEY_DIGESTS).map_err(err)?;
            let Some(id) = digests.get(digest).map_err(err)? else {
                return Ok(None);
            };
            let keys = tx.open_table(KEYS).map_err(err)?;
            keys.get(id.value())
                .map_err(err)?
                .map(|v| decode(v.value()))
                .transpose()
        })
    }

    fn key_by_id(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        self.with_db(|db| {
            let tx = db.begin_read().map_err(err)?;
            let keys = tx.open_table(KEYS).map_err(err)?;
            keys.get(id)
                .map_err(err)?
                .map(|v| decode(v.value()))
                .transpose()
        })
    }

    fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.with_db(|db| {
            let tx = db.begin_read().map_err(err)?;
            let keys = tx.open_table(KEYS).map_err(err)?;
            let mut all = keys
                .iter()
                .map_err(err)?
                .map(|entry| entry.map_err(err).and_then(|(_, v)| decode(v.value())))
                .collect::<Result<Vec<KeyRecord>, _>>()?;
            all.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
            Ok(all)
        })
    }

    fn update_key(&self, id: &str, patch: &KeyPatch) -> Result<KeyRecord, StoreError> {
        self.with_db(|db| {
            let tx = db.begin_write().map_err(err)?;
            let key = {
                let mut ledger = Ledger::open(&tx)?;
                let Some(mut key) = ledger.key(id)? else {
                    return Err(StoreError::NoSuchKey(id.into()));
                };
                let mut account = ledger.account(id)?;
                let before = key.quota_remaining;
                patch.apply(&mut key);
                let entry = Posting {
                    key_id: &key.id,
                    remaining: &mut key.quota_remaining,
                    account: &mut account,
                    time_ms: crate::keys::now_ms(),
                }
                .adjust(before);
                ledger.save(&key, &account, entry)?;
                key
            };
            tx.commit().map_err(err)?;
            Ok(key)
        })
    }

    fn scan_usage(
        &self,
        q: &UsageQuery,
        visit: &mut dyn FnMut(UsageRecord) -> bool,
    ) -> Result<(), StoreError> {
        self.with_db(|db| {
            let tx = db.begin_read().map_err(err)?;
            let usage = tx.open_table(USAGE).map_err(err)?;
            let upper = q.before_seq.unwrap_or(u64::MAX);
            let floor = q.since_ms.map(|t| t.saturating_sub(SCAN_SLACK_MS));
            for entry in usage.range(..upper).map_err(err)?.rev() {
                let (key, value) = entry.map_err(err)?;
                let mut record: UsageRecord = decode(value.value())?;
                record.seq = key.value();
                if floor.is_some_and(|f| record.time_ms < f) {
                    break;
                }
                if q.matches(&record) && !visit(record) {
                    break;
                }
            }
            Ok(())
        })
    }

    fn purge_before(&self, cutoff_ms: u64, limit: usize) -> Result<(usize, usize), StoreError> {
        self.with_db(|db| {
            let tx = db.begin_write().map_err(err)?;
            let purged = {
                let mut usage = tx.open_table(USAGE).map_err(err)?;
                let doomed = expired(&usage, cutoff_ms, limit)?;
                for seq in &doomed {
                    usage.remove(*seq).map_err(err)?;
                }
                doomed.len()
            };
            let folded = fold_ledger(&tx, cutoff_ms, limit)?;
            tx.commit().map_err(err)?;
            Ok((purged, folded))
        })
    }

    fn ledger(&self, key_id: &str, limit: usize) -> Result<Vec<LedgerEntry>, StoreError> {
        self.with_db(|db| {
            let tx = db.begin_read().map_err(err)?;
            let by_key = tx.open_table(LEDGER_BY_KEY).map_err(err)?;
            let entries = tx.open_table(LEDGER).map_err(err)?;
            let mut found = Vec::new();
            for key in by_key
                .range((key_id, 0)..=(key_id, u64::MAX))
                .map_err(err)?
                .rev()
                .take(limit)
            {
                let seq = key.map_err(err)?.0.value().1;
                if let Some(v) = entries.get(seq).map_err(err)? {
                    let entry: LedgerEntry = decode(v.value())?;
                    found.push(LedgerEntry { seq, ..entry });
                }
            }
            Ok(found)
        })
    }

    fn audit_snapshot(&self, visit: &mut dyn FnMut(Audited)) -> Result<(), StoreError> {
        self.with_db(|db| {
            let tx = db.begin_read().map_err(err)?;
            for entry in tx.open_table(KEYS).map_err(err)?.iter().map_err(err)? {
                let (_, v) = entry.map_err(err)?;
                let key: KeyRecord = decode(v.value())?;
                visit(Audited::Key(key.id, key.quota_remaining));
            }
            for entry in tx.open_table(ACCOUNTS).map_err(err)?.iter().map_err(err)? {
                let (k, v) = entry.map_err(err)?;
                visit(Audited::Account(k.value().to_string(), decode(v.value())?));
            }
            for entry in tx.open_table(LEDGER).map_err(err)?.iter().map_err(err)? {
                let (k, v) = entry.map_err(err)?;
                let mut ledger_entry: LedgerEntry = decode(v.value())?;
                ledger_entry.seq = k.value();
                visit(Audited::Entry(ledger_entry));
            }
            for entry in tx.open_table(USAGE).map_err(err)?.iter().map_err(err)? {
                let (_, v) = entry.map_err(err)?;
                let record: UsageRecord = decode(v.value())?;
                visit(Audited::Record {
                    request_id: record.request_id,
                    cost: record.cost,
                });
            }
            Ok(())
        })
    }

    fn reopen(&self) -> Result<(), StoreError> {
        let mut guard = self.db.write().map_err(|_| err("lock poisoned"))?;
        guard.take();
        *guard = Some(Self::open_db(&self.path)?);
        Ok(())
    }
}

/// Folds up to `limit` ledger entries older than `cutoff_ms` (the oldest
/// first) into their keys' carried balances.
fn fold_ledger(
    tx: &redb::WriteTransaction,
    cutoff_ms: u64,
    limit: usize,
) -> Result<usize, StoreError> {
    let mut ledger = Ledger::open(tx)?;
    let mut doomed = Vec::new();
    for entry in ledger.entries.iter().map_err(err)?.take(limit) {
        let (k, v) = entry.map_err(err)?;
        let entry: LedgerEntry = decode(v.value())?;
        if entry.time_ms >= cutoff_ms {
            break;
        }
        doomed.push((k.value(), entry));
    }
    for (seq, entry) in &doomed {
        let mut account = ledger.account(&entry.key_id)?;
        account.carried += entry.delta;
        account.carried_entries += 1;
        ledger
            .accounts
            .insert(entry.key_id.as_str(), encode(&account)?.as_slice())
            .map_err(err)?;
        ledger.entries.remove(*seq).map_err(err)?;
        ledger
            .by_key
            .remove((entry.key_id.as_str(), *seq))
            .map_err(err)?;
    }
    Ok(doomed.len())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    #[test]
    fn conformance() -> Result<(), super::StoreError> {
        super::super::conformance::run(&|p| Ok(Arc::new(super::RedbStore::open(p)?)))
    }

    /// Schema 1 had no ledger tables.
    #[test]
    fn migrates_stores_from_before_the_ledger() -> Result<(), super::StoreError> {
        super::super::conformance::opens_stores_from_before_the_ledger(
            &|p| Ok(Arc::new(super::RedbStore::open(p)?)),
            &|p| {
                let tx = redb::Database::open(p)
                    .map_err(super::err)?
                    .begin_write()
                    .map_err(super::err)?;
                tx.delete_table(super::LEDGER).map_err(super::err)?;
                tx.delete_table(super::ACCOUNTS).map_err(super::err)?;
                tx.delete_table(super::LEDGER_BY_KEY).map_err(super::err)?;
                tx.open_table(super::META)
                    .map_err(super::err)?
                    .insert("schema_version", 1)
                    .map_err(super::err)?;
                tx.commit().map_err(super::err)
            },
        )
    }

    /// Schema 2 kept a time index of the records; opening drops it.
    #[test]
    fn drops_the_time_index_of_schema_2() -> Result<(), super::StoreError> {
        let dir = tempfile::tempdir().map_err(super::err)?;
        let path = dir.path().join("store.db");
        drop(super::RedbStore::open(&path)?);
        {
            let tx = redb::Database::open(&path)
                .map_err(super::err)?
                .begin_write()
                .map_err(super::err)?;
            tx.open_table(super::USAGE_BY_TIME)
                .map_err(super::err)?
                .insert((1, 1), ())
                .map_err(super::err)?;
            tx.open_table(super::META)
                .map_err(super::err)?
                .insert("schema_version", 2)
                .map_err(super::err)?;
            tx.commit().map_err(super::err)?;
        }
        drop(super::RedbStore::open(&path)?);
        let db = redb::Database::open(&path).map_err(super::err)?;
        let tx = redb::ReadableDatabase::begin_read(&db).map_err(super::err)?;
        let tables: Vec<String> = tx
            .list_tables()
            .map_err(super::err)?
            .map(|t| redb::TableHandle::name(&t).to_string())
            .collect();
        assert!(tables.contains(&"usage".to_string()), "{tables:?}");
        assert!(!tables.contains(&"usage_by_time".to_string()), "{tables:?}");
        let version = tx
            .open_table(super::META)
            .map_err(super::err)?
            .get("schema_version")
            .map_err(super::err)?
            .map(|v| v.value());
        assert_eq!(version, Some(super::SCHEMA_VERSION));
        Ok(())
    }

    /// Records written as JSON (before the compact encoding) and compact ones
    /// read the same.
    #[test]
    fn reads_json_and_compact_values_alike() -> Result<(), super::StoreError> {
        let mut labels = std::collections::BTreeMap::new();
        labels.insert("team".to_string(), "a\"b".to_string());
        let record = super::UsageRecord {
            request_id: "req-1".into(),
            time_ms: 1_700_000_000_000,
            key_id: "k".into(),
            error_kind: Some("upstream".into()),
            prompt_tokens: 12,
            cost: -3,
            ttft_ms: Some(7),
            labels,
            completion: Some("héllo".into()),
            ..super::UsageRecord::default()
        };
        let json = serde_json::to_vec(&record).map_err(super::err)?;
        let mut compact = Vec::new();
        super::encode_compact(&record, &mut compact)?;
        assert!(
            compact.len() * 2 < json.len(),
            "{} vs {}",
            compact.len(),
            json.len()
        );
        for bytes in [json, compact] {
            let back: super::UsageRecord = super::decode(&bytes)?;
            assert_eq!(
                serde_json::to_value(&back).ok(),
                serde_json::to_value(&record).ok()
            );
        }
        Ok(())
    }
}
