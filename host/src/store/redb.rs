//! The redb backend (default): usage records and keys as JSON values, a time
//! index for purges, and one durable commit per batch.

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::ledger::{
    Audited, LedgerAccount, LedgerEntry, LedgerKind, Posting, charges_by_key, open_account,
};
use super::rows::{Sequenced, decode, decode_row, encode_chunk, err};
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

    /// Stores a key, its account and the entries posted to them, the
    /// entries as one row listed once under the key.
    fn save(
        &mut self,
        key: &KeyRecord,
        account: &LedgerAccount,
        entries: impl IntoIterator<Item = LedgerEntry>,
    ) -> Result<(), StoreError> {
        let first = self
            .meta
            .get("next_ledger_seq")
            .map_err(err)?
            .map_or(1, |v| v.value());
        let entries: Vec<LedgerEntry> = entries.into_iter().collect();
        if !entries.is_empty() {
            let mut buf = Vec::with_capacity(64 * entries.len());
            encode_chunk((first..).zip(&entries), &mut buf)?;
            self.entries.insert(first, buf.as_slice()).map_err(err)?;
            self.by_key
                .insert((key.id.as_str(), first), ())
                .map_err(err)?;
            let next = first + u64::try_from(entries.len()).map_err(err)?;
            self.meta.insert("next_ledger_seq", next).map_err(err)?;
        }
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

/// Up to `limit` records older than `cutoff_ms`, oldest first, purged from
/// the usage table: rows left empty are removed, the others rewritten with
/// the records they keep. Records are in completion order up to small
/// reorderings, so the scan goes on past the cutoff for [`SCAN_SLACK_MS`]
/// before it stops; one that is skipped is purged by a later pass. Returns
/// how many records went.
fn purge_usage(
    usage: &mut redb::Table<'_, u64, &'static [u8]>,
    cutoff_ms: u64,
    limit: usize,
) -> Result<usize, StoreError> {
    let mut touched: Vec<(u64, Vec<UsageRecord>)> = Vec::new();
    let mut purged = 0;
    'rows: for row in usage.iter().map_err(err)? {
        let (key, value) = row.map_err(err)?;
        let records: Vec<UsageRecord> = decode_row(key.value(), value.value())?;
        let count = records.len();
        let mut kept = Vec::new();
        let mut stop = false;
        for record in records {
            stop = stop
                || record.time_ms >= cutoff_ms.saturating_add(SCAN_SLACK_MS)
                || purged == limit;
            if !stop && record.time_ms < cutoff_ms {
                purged += 1;
            } else {
                kept.push(record);
            }
        }
        if kept.len() < count {
            touched.push((key.value(), kept));
        }
        if stop {
            break 'rows;
        }
    }
    let mut buf = Vec::new();
    for (row, kept) in touched {
        put_back(usage, row, &kept, &mut buf)?;
    }
    Ok(purged)
}

/// Puts back a row that lost some of its values: removed when none are
/// left, else rewritten, under its key, with the values it keeps. Rows that
/// lost nothing are left as they are (a purge scans a minute of rows past
/// its cutoff).
fn put_back<T: Sequenced>(
    table: &mut redb::Table<'_, u64, &'static [u8]>,
    row: u64,
    kept: &[T],
    buf: &mut Vec<u8>,
) -> Result<(), StoreError> {
    if kept.is_empty() {
        table.remove(row).map_err(err)?;
    } else {
        encode_chunk(kept.iter().map(|v| (v.seq(), v)), buf)?;
        table.insert(row, buf.as_slice()).map_err(err)?;
    }
    Ok(())
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
                let first = meta.get("next_seq").map_err(err)?.map_or(1, |v| v.value());
                if !batch.records.is_empty() {
                    let mut buf = Vec::with_capacity(192 * batch.records.len());
                    encode_chunk((first..).zip(&batch.records), &mut buf)?;
                    usage.insert(first, buf.as_slice()).map_err(err)?;
                    let next = first + u64::try_from(batch.records.len()).map_err(err)?;
                    meta.insert("next_seq", next).map_err(err)?;
                }
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
            for row in usage.range(..upper).map_err(err)?.rev() {
                let (key, value) = row.map_err(err)?;
                let records: Vec<UsageRecord> = decode_row(key.value(), value.value())?;
                for record in records.into_iter().rev().filter(|r| r.seq < upper) {
                    if floor.is_some_and(|f| record.time_ms < f) {
                        return Ok(());
                    }
                    if q.matches(&record) && !visit(record) {
                        return Ok(());
                    }
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
                purge_usage(&mut usage, cutoff_ms, limit)?
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
            for listed in by_key
                .range((key_id, 0)..=(key_id, u64::MAX))
                .map_err(err)?
                .rev()
            {
                let row = listed.map_err(err)?.0.value().1;
                let Some(value) = entries.get(row).map_err(err)? else {
                    continue;
                };
                let posted: Vec<LedgerEntry> = decode_row(row, value.value())?;
                for entry in posted.into_iter().rev().filter(|e| e.key_id == key_id) {
                    if found.len() == limit {
                        return Ok(found);
                    }
                    found.push(entry);
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
            for row in tx.open_table(LEDGER).map_err(err)?.iter().map_err(err)? {
                let (k, v) = row.map_err(err)?;
                for entry in decode_row(k.value(), v.value())? {
                    visit(Audited::Entry(entry));
                }
            }
            for row in tx.open_table(USAGE).map_err(err)?.iter().map_err(err)? {
                let (k, v) = row.map_err(err)?;
                for record in decode_row::<UsageRecord>(k.value(), v.value())? {
                    visit(Audited::Record {
                        request_id: record.request_id,
                        cost: record.cost,
                    });
                }
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
/// first) into their keys' carried balances, and removes them: rows left
/// empty go, with their listing under the key; the others are rewritten
/// with the entries they keep.
fn fold_ledger(
    tx: &redb::WriteTransaction,
    cutoff_ms: u64,
    limit: usize,
) -> Result<usize, StoreError> {
    let mut ledger = Ledger::open(tx)?;
    let mut touched: Vec<(u64, Vec<LedgerEntry>, Vec<LedgerEntry>)> = Vec::new();
    let mut folded = 0;
    for row in ledger.entries.iter().map_err(err)? {
        let (k, v) = row.map_err(err)?;
        let (mut doomed, mut kept) = (Vec::new(), Vec::new());
        for entry in decode_row::<LedgerEntry>(k.value(), v.value())? {
            if kept.is_empty() && folded < limit && entry.time_ms < cutoff_ms {
                folded += 1;
                doomed.push(entry);
            } else {
                kept.push(entry);
            }
        }
        let done = !kept.is_empty();
        if !doomed.is_empty() {
            touched.push((k.value(), doomed, kept));
        }
        if done {
            break;
        }
    }
    let mut buf = Vec::new();
    for (row, doomed, kept) in touched {
        for entry in &doomed {
            let mut account = ledger.account(&entry.key_id)?;
            account.carried += entry.delta;
            account.carried_entries += 1;
            ledger
                .accounts
                .insert(entry.key_id.as_str(), encode(&account)?.as_slice())
                .map_err(err)?;
            if !kept.iter().any(|e| e.key_id == entry.key_id) {
                ledger
                    .by_key
                    .remove((entry.key_id.as_str(), row))
                    .map_err(err)?;
            }
        }
        put_back(&mut ledger.entries, row, &kept, &mut buf)?;
    }
    Ok(folded)
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

    /// Removes every row of `table`, returning them.
    fn take_rows(
        table: &mut redb::Table<'_, u64, &'static [u8]>,
    ) -> Result<Vec<(u64, Vec<u8>)>, super::StoreError> {
        use redb::ReadableTable;
        let rows: Vec<(u64, Vec<u8>)> = table
            .iter()
            .map_err(super::err)?
            .map(|r| r.map(|(k, v)| (k.value(), v.value().to_vec())))
            .collect::<Result<_, _>>()
            .map_err(super::err)?;
        for (row, _) in &rows {
            table.remove(*row).map_err(super::err)?;
        }
        Ok(rows)
    }

    /// Rewrites every row of a store as schema 3 wrote it: one value per
    /// row, as JSON, keyed by its sequence number, each ledger entry listed
    /// under its key.
    fn unchunk(path: &std::path::Path) -> Result<(), super::StoreError> {
        use super::{LEDGER, LEDGER_BY_KEY, META, USAGE, err};
        let tx = redb::Database::open(path)
            .map_err(err)?
            .begin_write()
            .map_err(err)?;
        {
            let mut usage = tx.open_table(USAGE).map_err(err)?;
            for (row, bytes) in take_rows(&mut usage)? {
                for record in super::decode_row::<super::UsageRecord>(row, &bytes)? {
                    let json = serde_json::to_vec(&super::UsageRecord {
                        seq: 0,
                        ..record.clone()
                    })
                    .map_err(err)?;
                    usage.insert(record.seq, json.as_slice()).map_err(err)?;
                }
            }
            let mut ledger = tx.open_table(LEDGER).map_err(err)?;
            let mut by_key = tx.open_table(LEDGER_BY_KEY).map_err(err)?;
            for (row, bytes) in take_rows(&mut ledger)? {
                let entries = super::decode_row::<super::LedgerEntry>(row, &bytes)?;
                for entry in &entries {
                    by_key.remove((entry.key_id.as_str(), row)).map_err(err)?;
                }
                for entry in entries {
                    by_key
                        .insert((entry.key_id.as_str(), entry.seq), ())
                        .map_err(err)?;
                    let json = serde_json::to_vec(&super::LedgerEntry {
                        seq: 0,
                        ..entry.clone()
                    })
                    .map_err(err)?;
                    ledger.insert(entry.seq, json.as_slice()).map_err(err)?;
                }
            }
            tx.open_table(META)
                .map_err(err)?
                .insert("schema_version", 3)
                .map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    /// A store of schema 3 (a value per row) opens, reads and purges as it
    /// was, with the rows of a batch appended after it side by side.
    #[test]
    fn reads_rows_of_one_value_beside_chunks() -> Result<(), super::StoreError> {
        use super::super::conformance::{append, key, record};
        use super::super::{Store, UsageQuery};
        let dir = tempfile::tempdir().map_err(super::err)?;
        let path = dir.path().join("store.db");
        {
            let store = super::RedbStore::open(&path)?;
            store.create_key(&key("k1", Some(1000)))?;
            append(&store, (1..=3).map(|i| record(i, "k1", "m", 10)).collect())?;
        }
        unchunk(&path)?;
        let store = super::RedbStore::open(&path)?;
        append(&store, (4..=5).map(|i| record(i, "k1", "m", 10)).collect())?;
        let listed: Vec<(u64, String)> = store
            .query_usage(&UsageQuery::default())?
            .into_iter()
            .map(|r| (r.seq, r.request_id))
            .collect();
        let expected: Vec<(u64, String)> = (1..=5).rev().map(|i| (i, format!("req-{i}"))).collect();
        assert_eq!(listed, expected);
        let page = store.query_usage(&UsageQuery {
            before_seq: Some(5),
            limit: Some(2),
            ..UsageQuery::default()
        })?;
        assert_eq!(page.iter().map(|r| r.seq).collect::<Vec<_>>(), [4, 3]);
        let ledger = store.ledger("k1", 10)?;
        assert_eq!(ledger.len(), 6, "a grant and five charges");
        assert!(ledger.windows(2).all(|w| w[0].seq > w[1].seq), "{ledger:?}");
        assert_eq!(ledger[0].request_id, "req-5");
        assert_eq!(store.ledger("k1", 4)?.len(), 4);
        let report = store.audit()?;
        assert_eq!(report.mismatches, Vec::<String>::new());
        assert_eq!(report.entries, 6);
        let (mut purged, mut folded) = (0, 0);
        loop {
            let (records, entries) = store.purge_before(u64::MAX, 2)?;
            assert!(records <= 2 && entries <= 2);
            if records + entries == 0 {
                break;
            }
            (purged, folded) = (purged + records, folded + entries);
        }
        assert_eq!((purged, folded), (5, 6));
        assert!(store.ledger("k1", 10)?.is_empty());
        assert_eq!(store.audit()?.mismatches, Vec::<String>::new());
        assert_eq!(
            store.key_by_id("k1")?.and_then(|k| k.quota_remaining),
            Some(950)
        );
        Ok(())
    }
}
