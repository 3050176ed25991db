//! The SQLite backend: WAL mode with One-API's tuning, one writer connection
//! using `BEGIN IMMEDIATE`, and a small pool of reader connections.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::ledger::{
    Audited, LedgerAccount, LedgerEntry, LedgerKind, Posting, charges_by_key, open_account,
};
use super::{
    Batch, KeyPatch, KeyRecord, SCHEMA_VERSION, Store, StoreError, UsageQuery, UsageRecord,
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

const SCHEMA_V2: &str = "
    CREATE TABLE IF NOT EXISTS ledger (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        time_ms INTEGER NOT NULL,
        key_id TEXT NOT NULL,
        data TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS ledger_key_seq ON ledger(key_id, seq);
    CREATE TABLE IF NOT EXISTS ledger_accounts (
        key_id TEXT PRIMARY KEY,
        data TEXT NOT NULL
    );
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
        let mut writer = Self::connect(path)?;
        Self::migrate(&mut writer)?;
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

    fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
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
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        if version < 1 {
            tx.execute_batch(SCHEMA_V1).map_err(err)?;
        }
        if version < 2 {
            tx.execute_batch(SCHEMA_V2).map_err(err)?;
            // Keys that predate the ledger open it with their balance.
            let keys: Vec<KeyRecord> = {
                let mut stmt = tx.prepare("SELECT data FROM keys").map_err(err)?;
                let rows = stmt.query_map([], |r| r.get::<_, String>(0)).map_err(err)?;
                rows.map(|row| row.map_err(err).and_then(|t| Self::decode(&t)))
                    .collect::<Result<_, _>>()?
            };
            let time_ms = crate::keys::now_ms();
            for key in keys {
                let (account, entry) =
                    open_account(&key.id, key.quota_remaining, LedgerKind::Opening, time_ms);
                save(&tx, &key, &account, entry)?;
            }
        }
        tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))
            .map_err(err)?;
        tx.commit().map_err(err)
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

/// The key `id` and its ledger account, in a write transaction.
fn key_and_account(
    tx: &rusqlite::Transaction<'_>,
    id: &str,
) -> Result<Option<(KeyRecord, LedgerAccount)>, StoreError> {
    let Some(text) = tx
        .prepare_cached("SELECT data FROM keys WHERE id = ?1")
        .and_then(|mut s| s.query_row([id], |r| r.get::<_, String>(0)).optional())
        .map_err(err)?
    else {
        return Ok(None);
    };
    Ok(Some((SqliteStore::decode(&text)?, account(tx, id)?)))
}

/// The ledger account of key `id` (empty if it has none yet).
fn account(tx: &rusqlite::Transaction<'_>, id: &str) -> Result<LedgerAccount, StoreError> {
    Ok(tx
        .prepare_cached("SELECT data FROM ledger_accounts WHERE key_id = ?1")
        .and_then(|mut s| s.query_row([id], |r| r.get::<_, String>(0)).optional())
        .map_err(err)?
        .map(|t| SqliteStore::decode(&t))
        .transpose()?
        .unwrap_or_default())
}

/// Stores the ledger account of key `id`.
fn save_account(
    tx: &rusqlite::Transaction<'_>,
    id: &str,
    account: &LedgerAccount,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO ledger_accounts (key_id, data) VALUES (?1, ?2)
         ON CONFLICT(key_id) DO UPDATE SET data = excluded.data",
    )
    .and_then(|mut s| {
        s.execute(params![
            id,
            serde_json::to_string(account).map_err(err_sql)?
        ])
    })
    .map_err(err)?;
    Ok(())
}

/// Stores a key, its account and the entries posted to them.
fn save(
    tx: &rusqlite::Transaction<'_>,
    key: &KeyRecord,
    account: &LedgerAccount,
    entries: impl IntoIterator<Item = LedgerEntry>,
) -> Result<(), StoreError> {
    let mut insert = tx
        .prepare_cached("INSERT INTO ledger (time_ms, key_id, data) VALUES (?1, ?2, ?3)")
        .map_err(err)?;
    for entry in entries {
        insert
            .execute(params![
                int(entry.time_ms),
                entry.key_id,
                serde_json::to_string(&entry).map_err(err)?
            ])
            .map_err(err)?;
    }
    tx.prepare_cached("UPDATE keys SET data = ?2 WHERE id = ?1")
        .and_then(|mut s| {
            s.execute(params![
                key.id,
                serde_json::to_string(key).map_err(err_sql)?
            ])
        })
        .map_err(err)?;
    save_account(tx, &key.id, account)
}

/// A serialisation failure inside a rusqlite closure.
fn err_sql(e: serde_json::Error) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(Box::new(e))
}

impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn append(&self, batch: &Batch) -> Result<(), StoreError> {
        self.with_writer(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(err)?;
            let time_ms = crate::keys::now_ms();
            for (key_id, charges) in charges_by_key(&batch.charges) {
                let Some((mut key, mut account)) = key_and_account(&tx, key_id)? else {
                    continue;
                };
                let mut posting = Posting {
                    key_id,
                    remaining: &mut key.quota_remaining,
                    account: &mut account,
                    time_ms,
                };
                let entries: Vec<_> = charges.iter().map(|c| posting.charge(c)).collect();
                save(&tx, &key, &account, entries)?;
            }
            crate::failpoint::hit("append");
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
            }
            tx.commit().map_err(err)
        })
    }

    fn create_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        self.with_writer(|conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(err)?;
            tx.execute(
                "INSERT INTO keys (id, digest, created_ms, data) VALUES (?1, ?2, ?3, ?4)",
                params![
                    key.id,
                    key.digest,
                    int(key.created_ms),
                    serde_json::to_string(key).map_err(err)?
                ],
            )
            .map_err(err)?;
            let (account, grant) = open_account(
                &key.id,
                key.quota_remaining,
                LedgerKind::Grant,
                crate::keys::now_ms(),
            );
            save(&tx, key, &account, grant)?;
            tx.commit().map_err(err)
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
            let (mut key, mut account) =
                key_and_account(&tx, id)?.ok_or_else(|| StoreError::NoSuchKey(id.into()))?;
            let before = key.quota_remaining;
            patch.apply(&mut key);
            let entry = Posting {
                key_id: &key.id,
                remaining: &mut key.quota_remaining,
                account: &mut account,
                time_ms: crate::keys::now_ms(),
            }
            .adjust(before);
            save(&tx, &key, &account, entry)?;
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

    fn purge_before(&self, cutoff_ms: u64, limit: usize) -> Result<(usize, usize), StoreError> {
        self.with_writer(|conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(err)?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let purged = tx
                .execute(
                    "DELETE FROM usage WHERE seq IN (SELECT seq FROM usage WHERE time_ms < ?1 ORDER BY time_ms LIMIT ?2)",
                    params![int(cutoff_ms), limit],
                )
                .map_err(err)?;
            let doomed: Vec<(i64, LedgerEntry)> = {
                let mut stmt = tx
                    .prepare_cached("SELECT seq, data FROM ledger WHERE time_ms < ?1 ORDER BY seq LIMIT ?2")
                    .map_err(err)?;
                let rows = stmt
                    .query_map(params![int(cutoff_ms), limit], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
                    })
                    .map_err(err)?;
                rows.map(|row| {
                    let (seq, text) = row.map_err(err)?;
                    Ok((seq, Self::decode(&text)?))
                })
                .collect::<Result<_, StoreError>>()?
            };
            for (seq, entry) in &doomed {
                let mut folded = account(&tx, &entry.key_id)?;
                folded.carried += entry.delta;
                folded.carried_entries += 1;
                save_account(&tx, &entry.key_id, &folded)?;
                tx.execute("DELETE FROM ledger WHERE seq = ?1", [seq]).map_err(err)?;
            }
            tx.commit().map_err(err)?;
            if purged > 0 {
                conn.execute_batch("PRAGMA incremental_vacuum(256)").map_err(err)?;
            }
            Ok((purged, doomed.len()))
        })
    }

    fn ledger(&self, key_id: &str, limit: usize) -> Result<Vec<LedgerEntry>, StoreError> {
        self.with_reader(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT seq, data FROM ledger WHERE key_id = ?1 ORDER BY seq DESC LIMIT ?2",
                )
                .map_err(err)?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = stmt
                .query_map(params![key_id, limit], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
                })
                .map_err(err)?;
            rows.map(|row| {
                let (seq, text) = row.map_err(err)?;
                Ok(LedgerEntry {
                    seq: u64::try_from(seq).unwrap_or(0),
                    ..Self::decode(&text)?
                })
            })
            .collect()
        })
    }

    fn audit_snapshot(&self, visit: &mut dyn FnMut(Audited)) -> Result<(), StoreError> {
        self.with_reader(|conn| {
            // One read transaction: every query sees the same snapshot.
            let tx = conn.unchecked_transaction().map_err(err)?;
            let each = |sql: &str, visit: &mut dyn FnMut(i64, String, String) -> Result<(), StoreError>| {
                let mut stmt = tx.prepare(sql).map_err(err)?;
                let mut rows = stmt.query([]).map_err(err)?;
                while let Some(row) = rows.next().map_err(err)? {
                    visit(row.get(0).map_err(err)?, row.get(1).map_err(err)?, row.get(2).map_err(err)?)?;
                }
                Ok::<(), StoreError>(())
            };
            each("SELECT 0, id, data FROM keys", &mut |_, _, data| {
                let key: KeyRecord = Self::decode(&data)?;
                visit(Audited::Key(key.id, key.quota_remaining));
                Ok(())
            })?;
            each("SELECT 0, key_id, data FROM ledger_accounts", &mut |_, id, data| {
                visit(Audited::Account(id, Self::decode(&data)?));
                Ok(())
            })?;
            each("SELECT seq, key_id, data FROM ledger ORDER BY seq", &mut |seq, _, data| {
                let mut entry: LedgerEntry = Self::decode(&data)?;
                entry.seq = u64::try_from(seq).unwrap_or(0);
                visit(Audited::Entry(entry));
                Ok(())
            })?;
            each("SELECT cost, request_id, '' FROM usage", &mut |cost, request_id, _| {
                visit(Audited::Record { request_id, cost });
                Ok(())
            })?;
            Ok(())
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

    /// Schema 1 had no ledger tables.
    #[test]
    fn migrates_stores_from_before_the_ledger() -> Result<(), super::StoreError> {
        super::super::conformance::opens_stores_from_before_the_ledger(
            &|p| Ok(Arc::new(super::SqliteStore::open(p)?)),
            &|p| {
                rusqlite::Connection::open(p)
                    .and_then(|c| {
                        c.execute_batch(
                            "DROP TABLE ledger; DROP TABLE ledger_accounts; PRAGMA user_version = 1;",
                        )
                    })
                    .map_err(super::err)
            },
        )
    }
}
