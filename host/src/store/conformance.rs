//! The store conformance suite: every backend must pass the same tests.

use super::*;

pub fn key(id: &str, quota: Option<i64>) -> KeyRecord {
    KeyRecord {
        id: id.into(),
        digest: format!("digest-{id}"),
        prefix: "sk-sl-ab".into(),
        name: format!("name-{id}"),
        owner: "team".into(),
        status: KeyStatus::Active,
        created_ms: 1,
        expires_at_ms: None,
        models: vec!["m".into()],
        networks: vec![],
        quota_total: quota,
        quota_remaining: quota,
        rpm_limit: None,
        tpm_limit: Some(10),
    }
}

pub fn record(i: u64, key: &str, model: &str, cost: i64) -> UsageRecord {
    UsageRecord {
        request_id: format!("req-{i}"),
        time_ms: 1_000_000 + i * 1000,
        key_id: key.into(),
        model: model.into(),
        channel_id: if i.is_multiple_of(2) {
            "even".into()
        } else {
            "odd".into()
        },
        status: if i.is_multiple_of(5) { 500 } else { 200 },
        prompt_tokens: 10,
        completion_tokens: 5,
        cost,
        labels: BTreeMap::from([("team".into(), "x".into())]),
        ..UsageRecord::default()
    }
}

/// Appends `records` with a charge of each one's cost to its key.
pub fn append(store: &dyn Store, records: Vec<UsageRecord>) -> Result<(), StoreError> {
    let charges = records
        .iter()
        .map(|r| Charge {
            key_id: r.key_id.clone(),
            request_id: r.request_id.clone(),
            cost: r.cost,
            reserved: r.cost,
        })
        .collect();
    store.append(&Batch { records, charges })
}

/// Opens a backend at a path.
pub type Opener = dyn Fn(&Path) -> Result<Arc<dyn Store>, StoreError>;

/// Runs every conformance check against a store opened by `open` at a path
/// inside `dir`; `open` is called again to check persistence.
pub fn run(open: &Opener) -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(|e| StoreError::backend("tmp", e))?;
    let path = dir.path().join("store.db");
    let store = open(&path)?;

    // Keys: create, lookup by digest and id, list, patch, revoke.
    store.create_key(&key("k1", Some(1000)))?;
    store.create_key(&key("k2", None))?;
    assert_eq!(
        store.key_by_digest("digest-k1")?.map(|k| k.id),
        Some("k1".into())
    );
    assert!(store.key_by_digest("nope")?.is_none());
    assert_eq!(store.list_keys()?.len(), 2);
    let patched = store.update_key(
        "k2",
        &KeyPatch {
            status: Some(KeyStatus::Revoked),
            rpm_limit: Some(Some(5)),
            ..KeyPatch::default()
        },
    )?;
    assert_eq!(patched.status, KeyStatus::Revoked);
    assert_eq!(store.key_by_id("k2")?.map(|k| k.rpm_limit), Some(Some(5)));
    assert!(matches!(
        store.update_key("zz", &KeyPatch::default()),
        Err(StoreError::NoSuchKey(_))
    ));

    // Usage append charges quota atomically.
    let records: Vec<_> = (1..=20)
        .map(|i| {
            record(
                i,
                if i.is_multiple_of(2) { "k1" } else { "k2" },
                if i < 10 { "a" } else { "b" },
                7,
            )
        })
        .collect();
    append(&*store, records)?;
    assert_eq!(
        store.key_by_id("k1")?.and_then(|k| k.quota_remaining),
        Some(1000 - 70)
    );
    assert_eq!(store.key_by_id("k2")?.and_then(|k| k.quota_remaining), None);

    // Queries: newest first, filters, pagination by cursor.
    let all = store.query_usage(&UsageQuery::default())?;
    assert_eq!(all.len(), 20);
    assert!(all.windows(2).all(|w| w[0].time_ms >= w[1].time_ms));
    assert_eq!(all[0].request_id, "req-20");
    assert_eq!(all[0].labels.get("team").map(String::as_str), Some("x"));
    let k1 = store.query_usage(&UsageQuery {
        key_id: Some("k1".into()),
        ..UsageQuery::default()
    })?;
    assert_eq!(k1.len(), 10);
    let page1 = store.query_usage(&UsageQuery {
        limit: Some(8),
        ..UsageQuery::default()
    })?;
    let page2 = store.query_usage(&UsageQuery {
        limit: Some(8),
        before_seq: page1.last().map(|r| r.seq),
        ..UsageQuery::default()
    })?;
    let page3 = store.query_usage(&UsageQuery {
        limit: Some(8),
        before_seq: page2.last().map(|r| r.seq),
        ..UsageQuery::default()
    })?;
    assert_eq!((page1.len(), page2.len(), page3.len()), (8, 8, 4));
    assert_eq!(page2[0].request_id, "req-12");
    let ranged = store.query_usage(&UsageQuery {
        since_ms: Some(1_005_000),
        until_ms: Some(1_010_000),
        status: Some(200),
        ..UsageQuery::default()
    })?;
    assert_eq!(
        ranged
            .iter()
            .map(|r| r.request_id.as_str())
            .collect::<Vec<_>>(),
        ["req-9", "req-8", "req-7", "req-6"]
    );
    let by_channel = store.query_usage(&UsageQuery {
        channel_id: Some("odd".into()),
        model: Some("b".into()),
        ..UsageQuery::default()
    })?;
    assert_eq!(by_channel.len(), 5);

    // Summaries.
    let summary = store.summarize(&UsageQuery::default(), GroupBy::Model, Bucket::Day)?;
    let b = summary
        .iter()
        .find(|r| r.group == "b")
        .map(|r| (r.requests, r.cost, r.errors));
    assert_eq!(b, Some((11, 77, 3)));

    // Persistence across reopen.
    drop(store);
    let store = open(&path)?;
    assert_eq!(store.query_usage(&UsageQuery::default())?.len(), 20);
    store.reopen()?;
    assert_eq!(
        store.key_by_id("k1")?.and_then(|k| k.quota_remaining),
        Some(930)
    );

    // The ledger: k1's grant and every charge (k2's too, unlimited), each
    // balance recomputed from it.
    let report = store.audit()?;
    assert_eq!(report.mismatches, Vec::<String>::new());
    assert_eq!((report.keys, report.entries, report.charged), (2, 21, 140));
    assert_eq!(report.entries_without_record, 0);
    // An admin adjustment is an entry too; so is a switch from unlimited.
    let raised = store.update_key(
        "k1",
        &KeyPatch {
            quota: Some(Some(5000)),
            ..KeyPatch::default()
        },
    )?;
    assert_eq!(raised.quota_remaining, Some(5000));
    store.update_key(
        "k2",
        &KeyPatch {
            quota: Some(Some(300)),
            ..KeyPatch::default()
        },
    )?;
    let report = store.audit()?;
    assert_eq!(report.mismatches, Vec::<String>::new());
    assert_eq!(report.entries, 23);
    let k1 = store.ledger("k1", 3)?;
    assert_eq!(k1.len(), 3);
    assert_eq!(k1[0].kind, ledger::LedgerKind::Adjust);
    assert_eq!((k1[0].delta, k1[0].balance), (4070, Some(5000)));
    assert_eq!((k1[1].delta, k1[1].request_id.as_str()), (-7, "req-20"));
    assert!(k1[0].seq > k1[1].seq);

    // Purge in small batches; ledger entries (written now, not at the
    // records' times) stay.
    let mut purged = 0;
    loop {
        let (n, folded) = store.purge_before(1_011_000, 3)?;
        assert_eq!(folded, 0);
        if n == 0 {
            break;
        }
        assert!(n <= 3);
        purged += n;
    }
    assert_eq!(purged, 10);
    let left = store.query_usage(&UsageQuery::default())?;
    assert_eq!(left.len(), 10);
    assert_eq!(left.last().map(|r| r.request_id.as_str()), Some("req-11"));

    // Retention folds old entries into carried balances: the audit still
    // balances, and later charges post on top.
    let mut folded = 0;
    loop {
        let (_, n) = store.purge_before(u64::MAX, 5)?;
        if n == 0 {
            break;
        }
        folded += n;
    }
    assert_eq!(folded, 23);
    append(&*store, vec![record(30, "k1", "a", 9)])?;
    let report = store.audit()?;
    assert_eq!(report.mismatches, Vec::<String>::new());
    assert_eq!(report.entries, 1);
    assert_eq!(
        store.key_by_id("k1")?.and_then(|k| k.quota_remaining),
        Some(4991)
    );
    purges_records_appended_out_of_time_order(open)
}

/// Records reach the store in completion order, which is time order up to
/// small reorderings: retention purges exactly the records older than the
/// cutoff, whatever their order, a few at a time.
fn purges_records_appended_out_of_time_order(open: &Opener) -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(|e| StoreError::backend("tmp", e))?;
    let store = open(&dir.path().join("store.db"))?;
    let times = [10_000, 8_000, 12_000, 9_000, 11_000, 30_000];
    let records = times
        .iter()
        .enumerate()
        .map(|(i, t)| UsageRecord {
            time_ms: *t,
            ..record(i as u64, "k", "m", 0)
        })
        .collect();
    store.append(&Batch {
        records,
        charges: vec![],
    })?;
    let mut purged = 0;
    loop {
        let (n, _) = store.purge_before(11_000, 1)?;
        assert!(n <= 1);
        if n == 0 {
            break;
        }
        purged += n;
    }
    assert_eq!(purged, 3);
    let mut left: Vec<u64> = store
        .query_usage(&UsageQuery::default())?
        .iter()
        .map(|r| r.time_ms)
        .collect();
    left.sort_unstable();
    assert_eq!(left, [11_000, 12_000, 30_000]);
    Ok(())
}

/// A store written before the ledger (schema 1; `downgrade` turns a current
/// store back into one) opens with each limited key's balance as its
/// opening entry, audits clean, and posts later charges on top.
pub fn opens_stores_from_before_the_ledger(
    open: &Opener,
    downgrade: &dyn Fn(&Path) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(|e| StoreError::backend("tmp", e))?;
    let path = dir.path().join("old.db");
    let store = open(&path)?;
    store.create_key(&key("k1", Some(1000)))?;
    store.create_key(&key("k2", None))?;
    append(
        &*store,
        vec![record(1, "k1", "a", 7), record(2, "k2", "a", 5)],
    )?;
    drop(store);
    downgrade(&path)?;
    let store = open(&path)?;
    let opened = store.ledger("k1", 10)?;
    assert_eq!(opened.len(), 1, "{opened:?}");
    assert_eq!(opened[0].kind, ledger::LedgerKind::Opening);
    assert_eq!((opened[0].delta, opened[0].balance), (993, Some(993)));
    assert!(store.ledger("k2", 10)?.is_empty());
    let report = store.audit()?;
    assert_eq!(report.mismatches, Vec::<String>::new());
    assert_eq!(report.keys, 2);
    append(&*store, vec![record(3, "k1", "a", 3)])?;
    assert_eq!(store.audit()?.mismatches, Vec::<String>::new());
    assert_eq!(
        store.key_by_id("k1")?.and_then(|k| k.quota_remaining),
        Some(990)
    );
    Ok(())
}
