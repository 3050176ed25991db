//! The redb backend (default): usage records and keys as JSON values, a time
//! index for purges, and one durable commit per batch.

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{
    Batch, KeyPatch, KeyRecord, SCHEMA_VERSION, Store, StoreError, UsageQuery, UsageRecord,
    total_charges,
};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("keys");
const KEY_DIGESTS: TableDefinition<&str, &str> = TableDefinition::new("key_digests");
const USAGE: TableDefinition<u64, &[u8]> = TableDefinition::new("usage");
const USAGE_BY_TIME: TableDefinition<(u64, u64), ()> = TableDefinition::new("usage_by_time");

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
        {
            let mut meta = tx.open_table(META).map_err(err)?;
            let found = meta.get("schema_version").map_err(err)?.map(|v| v.value());
            match found {
                Some(v) if v > SCHEMA_VERSION => {
                    return Err(StoreError::TooNew {
                        found: v,
                        supported: SCHEMA_VERSION,
                    });
                }
                Some(v) if v == SCHEMA_VERSION => {}
                // Version 0 (no table yet) → 1: create the tables. Later migrations go here.
                _ => {
                    meta.insert("schema_version", SCHEMA_VERSION).map_err(err)?;
                }
            }
            tx.open_table(KEYS).map_err(err)?;
            tx.open_table(KEY_DIGESTS).map_err(err)?;
            tx.open_table(USAGE).map_err(err)?;
            tx.open_table(USAGE_BY_TIME).map_err(err)?;
        }
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

    fn decode_key(bytes: &[u8]) -> Result<KeyRecord, StoreError> {
        serde_json::from_slice(bytes).map_err(err)
    }
}

impl Store for RedbStore {
    fn backend(&self) -> &'static str {
        "redb"
    }

    fn append(&self, batch: &Batch) -> Result<(), StoreError> {
        self.with_db(|db| {
            let tx = db.begin_write().map_err(err)?;
            {
                let mut meta = tx.open_table(META).map_err(err)?;
                let mut usage = tx.open_table(USAGE).map_err(err)?;
                let mut by_time = tx.open_table(USAGE_BY_TIME).map_err(err)?;
                let mut seq = meta.get("next_seq").map_err(err)?.map_or(1, |v| v.value());
                let mut buf = Vec::with_capacity(512);
                // The sequence number is the key; records are stored with `seq = 0`
                // and get it back from the key when read.
                for record in &batch.records {
                    buf.clear();
                    serde_json::to_writer(&mut buf, record).map_err(err)?;
                    usage.insert(seq, buf.as_slice()).map_err(err)?;
                    by_time.insert((record.time_ms, seq), ()).map_err(err)?;
                    seq += 1;
                }
                meta.insert("next_seq", seq).map_err(err)?;
                let mut keys = tx.open_table(KEYS).map_err(err)?;
                for (key_id, cost) in total_charges(&batch.charges) {
                    let Some(mut key) = keys
                        .get(key_id)
                        .map_err(err)?
                        .map(|v| Self::decode_key(v.value()))
                        .transpose()?
                    else {
                        continue;
                    };
                    if let Some(remaining) = key.quota_remaining.as_mut() {
                        *remaining -= cost;
                        keys.insert(key_id, serde_json::to_vec(&key).map_err(err)?.as_slice())
                            .map_err(err)?;
                    }
                }
            }
            tx.commit().map_err(err)
        })
    }

    fn create_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        self.with_db(|db| {
            let tx = db.begin_write().map_err(err)?;
            {
                let mut keys = tx.open_table(KEYS).map_err(err)?;
                let mut digests = tx.open_table(KEY_DIGESTS).map_err(err)?;
                if keys.get(key.id.as_str()).map_err(err)?.is_some()
                    || digests.get(key.digest.as_str()).map_err(err)?.is_some()
                {
                    return Err(err(format!("key {} already exists", key.id)));
                }
                keys.insert(
                    key.id.as_str(),
                    serde_json::to_vec(key).map_err(err)?.as_slice(),
                )
                .map_err(err)?;
                digests
                    .insert(key.digest.as_str(), key.id.as_str())
                    .map_err(err)?;
            }
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
                .map(|v| Self::decode_key(v.value()))
                .transpose()
        })
    }

    fn key_by_id(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        self.with_db(|db| {
            let tx = db.begin_read().map_err(err)?;
            let keys = tx.open_table(KEYS).map_err(err)?;
            keys.get(id)
                .map_err(err)?
                .map(|v| Self::decode_key(v.value()))
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
                .map(|entry| {
                    entry
                        .map_err(err)
                        .and_then(|(_, v)| Self::decode_key(v.value()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            all.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
            Ok(all)
        })
    }

    fn update_key(&self, id: &str, patch: &KeyPatch) -> Result<KeyRecord, StoreError> {
        self.with_db(|db| {
            let tx = db.begin_write().map_err(err)?;
            let key = {
                let mut keys = tx.open_table(KEYS).map_err(err)?;
                let Some(mut key) = keys
                    .get(id)
                    .map_err(err)?
                    .map(|v| Self::decode_key(v.value()))
                    .transpose()?
                else {
                    return Err(StoreError::NoSuchKey(id.into()));
                };
                patch.apply(&mut key);
                keys.insert(id, serde_json::to_vec(&key).map_err(err)?.as_slice())
                    .map_err(err)?;
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
                let mut record: UsageRecord = serde_json::from_slice(value.value()).map_err(err)?;
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

    fn purge_before(&self, cutoff_ms: u64, limit: usize) -> Result<usize, StoreError> {
        self.with_db(|db| {
            let tx = db.begin_write().map_err(err)?;
            let purged = {
                let mut by_time = tx.open_table(USAGE_BY_TIME).map_err(err)?;
                let mut usage = tx.open_table(USAGE).map_err(err)?;
                let doomed = by_time
                    .range(..(cutoff_ms, 0))
                    .map_err(err)?
                    .take(limit)
                    .map(|entry| entry.map(|(k, _)| k.value()).map_err(err))
                    .collect::<Result<Vec<_>, _>>()?;
                for (time, seq) in &doomed {
                    by_time.remove((*time, *seq)).map_err(err)?;
                    usage.remove(*seq).map_err(err)?;
                }
                doomed.len()
            };
            tx.commit().map_err(err)?;
            Ok(purged)
        })
    }

    fn reopen(&self) -> Result<(), StoreError> {
        let mut guard = self.db.write().map_err(|_| err("lock poisoned"))?;
        guard.take();
        *guard = Some(Self::open_db(&self.path)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    #[test]
    fn conformance() -> Result<(), super::StoreError> {
        super::super::conformance::run(&|p| Ok(Arc::new(super::RedbStore::open(p)?)))
    }
}
