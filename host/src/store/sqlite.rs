//! The SQLite backend: WAL mode with One-API's tuning, one writer connection
//! using `BEGIN IMMEDIATE`, and a small pool of reader connections.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{
    Batch, KeyPatch, KeyRecord, SCHEMA_VERSION, Store, StoreError, UsageQuery, UsageRecord,
    total_charges,
};

/// Pragmas applied to every connection (`auto_vacuum` must precede the first table).
const PRAGMAS: &str = "
    PRAGMA auto_vacuum = INCREMENTAL;
    PRAGMA journal_mode = WAL;
    PRAGMA synchronous = NORMAL;
    PRAGMA cache_size = -65536;
    PRAGMA mmap_size = 268435456;
    PRAGMA temp_store = MEMORY;
    PRAGMA busy_timeout = 5000;
    PRAGMA wal_autocheckpoint = 1000;
    PRAGMA foreign_keys = ON;
";

/// Settings read back after opening, as `(pragma, expected)`; logged at start-up.
const VERIFIED: &[(&str, &str)] = &[
    ("journal_mode", "wal"),
    ("synchronous", "1"),
    ("cache_size", "-65536"),
    ("temp_store", "2"),
    ("busy_timeout", "5000"),
    ("auto_vacuum", "2"),
];

const SCHEMA_V1: &str = "
    CREATE TABLE IF NOT EXISTS keys (
        id TEXT PRIMARY KEY,
        digest TEXT NOT NULL UNIQUE,
        created_ms INTEGER NOT NULL,
        data TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS usage (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        request_id TEXT NOT NULL,
        time_ms INTEGER NOT NULL,
        key_id TEXT NOT NULL,
        model TEXT NOT NULL,
        channel_id TEXT NOT NULL,
        status INTEGER NOT NULL,
        cost INTEGER NOT NULL,
        data TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS usage_time ON usage(time_ms);
    CREATE INDEX IF NOT EXISTS usage_key_seq ON usage(key_id, seq);
";

const READERS: usize = 4;

/// SQLite integers are signed; our counters and times fit comfortably.
fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::backend("sqlite", e)
}

/// The SQLite store.
pub struct SqliteStore {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
}

impl SqliteStore {
    /// Opens (creating and migrating) the database at `path`.
    ///
    /// # Errors
    /// When the file cannot be opened, or was written by a newer schema.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let writer = Self::connect(path)?;
        Self::migrate(&writer)?;
        Self::verify(&writer)?;
        Ok(Self {
            path: path.to_path_buf(),
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
        })
    }

    fn connect(path: &Path) -> Result<Connection, StoreError> {
        let conn = Connection::open(path).map_err(err)?;
        conn.execute_batch(PRAGMAS).map_err(err)?;
        Ok(conn)
    }

    fn migrate(conn: &Connection) -> Result<(), StoreError> {
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(err)?;
        let version = u64::try_from(version).unwrap_or(0);
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        if version < 1 {
            conn.execute_batch(SCHEMA_V1).map_err(err)?;
        }
        conn.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))
            .map_err(err)
    }

    /// Reads the tuning back (One-API's `VerifySQLiteSettings`) and logs it; a
    /// setting that did not take is a warning, not a failure.
    fn verify(conn: &Connection) -> Result<(), StoreError> {
        let mut report = Vec::with_capacity(VERIFIED.len());
        for (pragma, expected) in VERIFIED {
            let actual: String = conn
                .query_row(&format!("PRAGMA {pragma}"), [], |r| {
                    r.get::<_, rusqlite::types::Value>(0)
                })
                .map(|v| match v {
                    rusqlite::types::Value::Integer(i) => i.to_string(),
                    rusqlite::types::Value::Text(t) => t.to_lowercase(),
                    other => format!("{other:?}"),
                })
                .map_err(err)?;
            if actual != *expected {
                tracing::warn!(
                    pragma,
                    expected,
                    actual,
                    "sqlite setting did not take effect"
                );
            }
            report.push(format!("{pragma}={actual}"));
        }
        tracing::info!(settings = %report.join(" "), "sqlite store settings");
        Ok(())
    }

    fn with_reader<R>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let pooled = self.readers.lock().map_err(|_| err("lock poisoned"))?.pop();
        let conn = match pooled {
            Some(conn) => conn,
            None => Self::connect(&self.path)?,
        };
        let result = f(&conn);
        let mut readers = self.readers.lock().map_err(|_| err("lock poisoned"))?;
        if readers.len() < READERS {
            readers.push(conn);
        }
        result
    }

    fn with_writer<R>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let mut conn = self.writer.lock().map_err(|_| err("lock poisoned"))?;
        f(&mut conn)
    }

    fn decode<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, StoreError> {
        serde_json::from_str(text).map_err(err)
    }
}

impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn append(&self, batch: &Batch) -> Result<(), StoreError> {
        self.with_writer(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(err)?;
            {
                let mut insert = tx
                    .prepare_cached("INSERT INTO usage (request_id, time_ms, key_id, model, channel_id, status, cost, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)")
                    .map_err(err)?;
                for r in &batch.records {
                    let data = serde_json::to_string(r).map_err(err)?;
                    insert
                        .execute(params![r.request_id, int(r.time_ms), r.key_id, r.model, r.channel_id, r.status, r.cost, data])
                        .map_err(err)?;
                }
                let mut select = tx.prepare_cached("SELECT data FROM keys WHERE id = ?1").map_err(err)?;
                let mut update = tx.prepare_cached("UPDATE keys SET data = ?2 WHERE id = ?1").map_err(err)?;
                for (key_id, cost) in total_charges(&batch.charges) {
                    let Some(text) = select.query_row([key_id], |r| r.get::<_, String>(0)).optional().map_err(err)? else {
                        continue;
                    };
                    let mut key: KeyRecord = Self::decode(&text)?;
                    if let Some(remaining) = key.quota_remaining.as_mut() {
                        *remaining -= cost;
                        update.execute(params![key_id, serde_json::to_string(&key).map_err(err)?]).map_err(err)?;
                    }
                }
            }
            tx.commit().map_err(err)
        })
    }

    fn create_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        self.with_writer(|conn| {
            conn.execute(
                "INSERT INTO keys (id, digest, created_ms, data) VALUES (?1, ?2, ?3, ?4)",
                params![
                    key.id,
                    key.digest,
                    int(key.created_ms),
                    serde_json::to_string(key).map_err(err)?
                ],
            )
            .map_err(err)?;
            Ok(())
        })
    }

    fn key_by_digest(&self, digest: &str) -> Result<Option<KeyRecord>, StoreError> {
        self.with_reader(|conn| {
            let text = conn
                .prepare_cached("SELECT data FROM keys WHERE digest = ?1")
                .and_then(|mut s| s.query_row([digest], |r| r.get::<_, String>(0)).optional())
                .map_err(err)?;
            text.map(|t| Self::decode(&t)).transpose()
        })
    }

    fn key_by_id(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        self.with_reader(|conn| {
            let text = conn
                .prepare_cached("SELECT data FROM keys WHERE id = ?1")
                .and_then(|mut s| s.query_row([id], |r| r.get::<_, String>(0)).optional())
                .map_err(err)?;
            text.map(|t| Self::decode(&t)).transpose()
        })
    }

    fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.with_reader(|conn| {
            let mut stmt = conn
                .prepare_cached("SELECT data FROM keys ORDER BY created_ms, id")
                .map_err(err)?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0)).map_err(err)?;
            rows.map(|row| row.map_err(err).and_then(|t| Self::decode(&t)))
                .collect()
        })
    }

    fn update_key(&self, id: &str, patch: &KeyPatch) -> Result<KeyRecord, StoreError> {
        self.with_writer(|conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(err)?;
            let text = tx
                .query_row("SELECT data FROM keys WHERE id = ?1", [id], |r| {
                    r.get::<_, String>(0)
                })
                .optional()
                .map_err(err)?
                .ok_or_else(|| StoreError::NoSuchKey(id.into()))?;
            let mut key: KeyRecord = Self::decode(&text)?;
            patch.apply(&mut key);
            tx.execute(
                "UPDATE keys SET data = ?2 WHERE id = ?1",
                params![id, serde_json::to_string(&key).map_err(err)?],
            )
            .map_err(err)?;
            tx.commit().map_err(err)?;
            Ok(key)
        })
    }

    fn scan_usage(
        &self,
        q: &UsageQuery,
        visit: &mut dyn FnMut(UsageRecord) -> bool,
    ) -> Result<(), StoreError> {
        self.with_reader(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT seq, data FROM usage
                     WHERE seq < ?1 AND time_ms >= ?2 AND time_ms < ?3
                       AND (?4 IS NULL OR key_id = ?4) AND (?5 IS NULL OR model = ?5)
                       AND (?6 IS NULL OR channel_id = ?6) AND (?7 IS NULL OR status = ?7)
                     ORDER BY seq DESC",
                )
                .map_err(err)?;
            let upper = q.before_seq.map_or(i64::MAX, int);
            let since = q.since_ms.map_or(0, int);
            let until = q.until_ms.map_or(i64::MAX, int);
            let mut rows = stmt
                .query(params![
                    upper,
                    since,
                    until,
                    q.key_id,
                    q.model,
                    q.channel_id,
                    q.status
                ])
                .map_err(err)?;
            while let Some(row) = rows.next().map_err(err)? {
                let seq: i64 = row.get(0).map_err(err)?;
                let seq = u64::try_from(seq).unwrap_or(0);
                let data: String = row.get(1).map_err(err)?;
                let record = UsageRecord {
                    seq,
                    ..Self::decode(&data)?
                };
                if !visit(record) {
                    break;
                }
            }
            Ok(())
        })
    }

    fn purge_before(&self, cutoff_ms: u64, limit: usize) -> Result<usize, StoreError> {
        self.with_writer(|conn| {
            let n = conn
                .execute(
                    "DELETE FROM usage WHERE seq IN (SELECT seq FROM usage WHERE time_ms < ?1 ORDER BY time_ms LIMIT ?2)",
                    params![int(cutoff_ms), i64::try_from(limit).unwrap_or(i64::MAX)],
                )
                .map_err(err)?;
            if n > 0 {
                conn.execute_batch("PRAGMA incremental_vacuum(256)").map_err(err)?;
            }
            Ok(n)
        })
    }

    fn reopen(&self) -> Result<(), StoreError> {
        let fresh = Self::connect(&self.path)?;
        *self.writer.lock().map_err(|_| err("lock poisoned"))? = fresh;
        self.readers
            .lock()
            .map_err(|_| err("lock poisoned"))?
            .clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    #[test]
    fn conformance() -> Result<(), super::StoreError> {
        super::super::conformance::run(&|p| Ok(Arc::new(super::SqliteStore::open(p)?)))
    }
}
