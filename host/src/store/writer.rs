//! The batch writer: a bounded queue in front of the store. Flushes at N records
//! or T ms after the first queued record, commits each batch durably on the
//! committing thread ([`super::committer`]), retries failed commits with backoff (reopening the backend),
//! applies backpressure when full, and counts every record it could not keep.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use super::committer::Committer;
use super::{Batch, Charge, Store, UsageRecord};
use crate::metrics::Metrics;

/// One unit of accounting: the (possibly shaped-away) log record and its charge.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    /// The record to log; `None` when a shaper dropped it.
    pub record: Option<UsageRecord>,
    /// The quota charge; `None` for unmetered requests.
    pub charge: Option<Charge>,
}

/// Called with the charges of every batch the store committed (`true`), and
/// of every entry it never will (`false`: dropped when the queue stayed full,
/// or abandoned after repeated commit failures).
pub type CommitHook = Arc<dyn Fn(&[Charge], bool) + Send + Sync>;

/// Batching settings.
#[derive(Debug, Clone, Copy)]
pub struct WriterSettings {
    /// Flush after this many entries.
    pub batch_size: usize,
    /// Flush this long after the first entry of a batch.
    pub flush_interval: Duration,
    /// Queue capacity in entries.
    pub capacity: usize,
    /// How long `submit` waits for space before counting a drop.
    pub backpressure_wait: Duration,
}

/// Retries of one batch before it is counted as dropped.
const MAX_COMMIT_ATTEMPTS: u32 = 20;

/// A place reserved in the queue before a response is sent. Records travel
/// with their slot until queued, so records that are neither queued nor
/// committed never exceed the queue capacity plus the batch being committed.
pub struct Slot(mpsc::OwnedPermit<Entry>);

/// Handle to the writer task.
pub struct UsageWriter {
    sender: Mutex<Option<mpsc::Sender<Entry>>>,
    task: Mutex<Option<JoinHandle<()>>>,
    backpressure_wait: Duration,
    metrics: Arc<Metrics>,
    on_commit: CommitHook,
    /// Wakes the writer when the queue holds a whole batch.
    full: Arc<Notify>,
    batch_size: usize,
}

impl UsageWriter {
    /// Starts the writer task on the current runtime, and the thread that
    /// commits its batches.
    ///
    /// # Errors
    /// When the committing thread cannot be spawned.
    pub fn start(
        store: Arc<dyn Store>,
        settings: WriterSettings,
        metrics: Arc<Metrics>,
        on_commit: CommitHook,
    ) -> std::io::Result<Self> {
        let committer = Committer::start(store.clone())?;
        let (tx, rx) = mpsc::channel(settings.capacity);
        let full = Arc::new(Notify::new());
        #[expect(
            clippy::disallowed_methods,
            reason = "tracked by its handle: close(), the last step of shutdown, awaits it"
        )]
        let task = tokio::spawn(run(
            rx,
            store,
            committer,
            settings,
            metrics.clone(),
            on_commit.clone(),
            full.clone(),
        ));
        Ok(Self {
            sender: Mutex::new(Some(tx)),
            task: Mutex::new(Some(task)),
            backpressure_wait: settings.backpressure_wait,
            metrics,
            on_commit,
            full,
            batch_size: settings.batch_size,
        })
    }

    fn sender(&self) -> Option<mpsc::Sender<Entry>> {
        self.sender.lock().ok().and_then(|s| s.clone())
    }

    /// Reserves a place in the queue, waiting up to the backpressure limit when it
    /// is full; `None` when the queue stayed full or the writer is closed (the
    /// entry then goes through [`Self::submit`], which counts a drop if needed).
    pub async fn reserve(&self) -> Option<Slot> {
        self.reserve_or_why().await.ok()
    }

    /// [`Self::reserve`], saying why no place could be had.
    async fn reserve_or_why(&self) -> Result<Slot, &'static str> {
        const CLOSED: &str = "writer is closed";
        let tx = self.sender().ok_or(CLOSED)?;
        let tx = match tx.try_reserve_owned() {
            Ok(permit) => return Ok(Slot(permit)),
            Err(mpsc::error::TrySendError::Full(tx)) => tx,
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(CLOSED),
        };
        self.metrics.writer_backpressure.inc();
        match tokio::time::timeout(self.backpressure_wait, tx.reserve_owned()).await {
            Ok(Ok(permit)) => Ok(Slot(permit)),
            Ok(Err(_)) => Err(CLOSED),
            Err(_) => Err("queue full after backpressure wait"),
        }
    }

    /// Queues an entry in its reserved place (never waits, never drops).
    pub fn submit_reserved(&self, slot: Slot, entry: Entry) {
        slot.0.send(entry);
        let depth = self.metrics.writer_queue_depth.inc() + 1;
        if usize::try_from(depth).is_ok_and(|d| d >= self.batch_size) {
            self.full.notify_one();
        }
    }

    /// Queues an entry, waiting up to the backpressure limit when the queue is full.
    /// An entry that still cannot be queued is counted and logged, never silently lost.
    pub async fn submit(&self, entry: Entry) {
        match self.reserve_or_why().await {
            Ok(slot) => self.submit_reserved(slot, entry),
            Err(why) => self.dropped(&entry, why),
        }
    }

    fn dropped(&self, entry: &Entry, why: &str) {
        self.metrics.records_dropped.inc();
        if let Some(charge) = &entry.charge {
            (self.on_commit)(std::slice::from_ref(charge), false);
        }
        tracing::error!(
            request_id = entry.record.as_ref().map_or("", |r| r.request_id.as_str()),
            cost = entry.charge.as_ref().map_or(0, |c| c.cost),
            why,
            "usage record dropped"
        );
    }

    /// Stops accepting entries, drains the queue and waits for the final commit.
    pub async fn close(&self) {
        self.sender.lock().ok().and_then(|mut s| s.take());
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task
            && let Err(e) = task.await
        {
            tracing::error!(error = %e, "usage writer task failed");
        }
    }
}

async fn run(
    mut rx: mpsc::Receiver<Entry>,
    store: Arc<dyn Store>,
    committer: Committer,
    settings: WriterSettings,
    metrics: Arc<Metrics>,
    on_commit: CommitHook,
    full: Arc<Notify>,
) {
    let mut buf: Vec<Entry> = Vec::with_capacity(settings.batch_size);
    loop {
        if rx.recv_many(&mut buf, settings.batch_size).await == 0 {
            break;
        }
        // Collect until the batch is full or the flush interval is over. The
        // writer sleeps meanwhile instead of waiting on the queue, so queued
        // entries do not wake it one by one; a submitter wakes it when the
        // queue holds a whole batch.
        let deadline = tokio::time::Instant::now() + settings.flush_interval;
        loop {
            let open = take_queued(&mut rx, &mut buf, settings.batch_size);
            if !open || buf.len() >= settings.batch_size {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {
                    take_queued(&mut rx, &mut buf, settings.batch_size);
                    break;
                }
                () = full.notified() => {}
            }
        }
        metrics
            .writer_queue_depth
            .dec_by(i64::try_from(buf.len()).unwrap_or(i64::MAX));
        let mut batch = Batch {
            records: Vec::with_capacity(buf.len()),
            charges: Vec::with_capacity(buf.len()),
        };
        for entry in buf.drain(..) {
            batch.records.extend(entry.record);
            batch.charges.extend(entry.charge);
        }
        commit(&store, &committer, batch, &metrics, &on_commit).await;
    }
    committer.close().await;
    tracing::info!("usage writer drained");
}

/// Moves what is queued into `buf`, up to `batch_size`, without waiting;
/// `false` once the queue is closed and empty.
fn take_queued(rx: &mut mpsc::Receiver<Entry>, buf: &mut Vec<Entry>, batch_size: usize) -> bool {
    while buf.len() < batch_size {
        match rx.try_recv() {
            Ok(entry) => buf.push(entry),
            Err(mpsc::error::TryRecvError::Empty) => return true,
            Err(mpsc::error::TryRecvError::Disconnected) => return false,
        }
    }
    true
}

async fn commit(
    store: &Arc<dyn Store>,
    committer: &Committer,
    batch: Batch,
    metrics: &Metrics,
    on_commit: &CommitHook,
) {
    let batch = Arc::new(batch);
    let mut backoff = Duration::from_millis(50);
    for attempt in 1..=MAX_COMMIT_ATTEMPTS {
        let started = Instant::now();
        let result = committer.commit(batch.clone()).await;
        metrics
            .writer_flush_seconds
            .observe(started.elapsed().as_secs_f64());
        let error = match result {
            Ok(()) => {
                metrics.records_written.inc_by(batch.records.len() as u64);
                on_commit(&batch.charges, true);
                return;
            }
            Err(e) => e.to_string(),
        };
        metrics.writer_commit_errors.inc();
        tracing::error!(
            attempt,
            records = batch.records.len(),
            backend = store.backend(),
            error,
            "usage commit failed; retrying"
        );
        if attempt >= 2
            && let Err(e) = store.reopen()
        {
            tracing::error!(error = %e, "reopening the store failed");
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
    metrics
        .records_dropped
        .inc_by((batch.records.len().max(batch.charges.len())) as u64);
    tracing::error!(
        records = batch.records.len(),
        charges = batch.charges.len(),
        "usage batch abandoned after repeated commit failures"
    );
    on_commit(&batch.charges, false);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::redb::RedbStore;
    use crate::store::{Store, UsageQuery};

    #[tokio::test]
    async fn drains_everything_on_close() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.path().join("w.redb"))?);
        let metrics = Arc::new(Metrics::default());
        let settings = WriterSettings {
            batch_size: 64,
            flush_interval: Duration::from_millis(20),
            capacity: 16,
            backpressure_wait: Duration::from_secs(5),
        };
        let committed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = committed.clone();
        let writer = UsageWriter::start(
            store.clone(),
            settings,
            metrics.clone(),
            Arc::new(move |c, _| {
                seen.fetch_add(c.len(), std::sync::atomic::Ordering::Relaxed);
            }),
        )?;
        for i in 0..500 {
            let record = UsageRecord {
                request_id: format!("r{i}"),
                time_ms: 1 + i,
                key_id: "k".into(),
                ..UsageRecord::default()
            };
            writer
                .submit(Entry {
                    record: Some(record),
                    charge: Some(Charge {
                        key_id: "k".into(),
                        request_id: format!("r{i}"),
                        cost: 1,
                        reserved: 1,
                    }),
                })
                .await;
        }
        writer.close().await;
        let stored = store.query_usage(&UsageQuery {
            limit: Some(1000),
            ..UsageQuery::default()
        })?;
        assert_eq!(stored.len(), 500);
        assert_eq!(committed.load(std::sync::atomic::Ordering::Relaxed), 500);
        assert_eq!(metrics.records_dropped.get(), 0);
        assert!(
            metrics.writer_backpressure.get() > 0,
            "a 16-entry queue must have pushed back"
        );
        writer.submit(Entry::default()).await;
        assert_eq!(metrics.records_dropped.get(), 1);
        Ok(())
    }

    /// A store that refuses the first `failures` commits until it is reopened.
    struct Flaky {
        inner: RedbStore,
        failures: std::sync::atomic::AtomicU32,
        reopened: std::sync::atomic::AtomicU32,
    }

    impl Store for Flaky {
        fn backend(&self) -> &'static str {
            "flaky"
        }
        fn append(&self, batch: &Batch) -> Result<(), crate::store::StoreError> {
            let left = self.failures.load(std::sync::atomic::Ordering::Relaxed);
            if left > 0 {
                self.failures
                    .store(left - 1, std::sync::atomic::Ordering::Relaxed);
                return Err(crate::store::StoreError::backend("flaky", "disk says no"));
            }
            self.inner.append(batch)
        }
        fn create_key(
            &self,
            key: &crate::store::KeyRecord,
        ) -> Result<(), crate::store::StoreError> {
            self.inner.create_key(key)
        }
        fn key_by_digest(
            &self,
            digest: &str,
        ) -> Result<Option<crate::store::KeyRecord>, crate::store::StoreError> {
            self.inner.key_by_digest(digest)
        }
        fn key_by_id(
            &self,
            id: &str,
        ) -> Result<Option<crate::store::KeyRecord>, crate::store::StoreError> {
            self.inner.key_by_id(id)
        }
        fn list_keys(&self) -> Result<Vec<crate::store::KeyRecord>, crate::store::StoreError> {
            self.inner.list_keys()
        }
        fn update_key(
            &self,
            id: &str,
            patch: &crate::store::KeyPatch,
        ) -> Result<crate::store::KeyRecord, crate::store::StoreError> {
            self.inner.update_key(id, patch)
        }
        fn scan_usage(
            &self,
            q: &UsageQuery,
            visit: &mut dyn FnMut(UsageRecord) -> bool,
        ) -> Result<(), crate::store::StoreError> {
            self.inner.scan_usage(q, visit)
        }
        fn purge_before(
            &self,
            cutoff_ms: u64,
            limit: usize,
        ) -> Result<(usize, usize), crate::store::StoreError> {
            self.inner.purge_before(cutoff_ms, limit)
        }
        fn ledger(
            &self,
            key_id: &str,
            limit: usize,
        ) -> Result<Vec<crate::store::ledger::LedgerEntry>, crate::store::StoreError> {
            self.inner.ledger(key_id, limit)
        }
        fn audit_snapshot(
            &self,
            visit: &mut dyn FnMut(crate::store::ledger::Audited),
        ) -> Result<(), crate::store::StoreError> {
            self.inner.audit_snapshot(visit)
        }
        fn reopen(&self) -> Result<(), crate::store::StoreError> {
            self.reopened
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.inner.reopen()
        }
    }

    #[tokio::test]
    async fn failed_commits_are_retried_and_the_store_reopened()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let flaky = Arc::new(Flaky {
            inner: RedbStore::open(&dir.path().join("f.redb"))?,
            failures: std::sync::atomic::AtomicU32::new(3),
            reopened: std::sync::atomic::AtomicU32::new(0),
        });
        let metrics = Arc::new(Metrics::default());
        let settings = WriterSettings {
            batch_size: 8,
            flush_interval: Duration::from_millis(5),
            capacity: 64,
            backpressure_wait: Duration::from_secs(5),
        };
        let writer = UsageWriter::start(
            flaky.clone(),
            settings,
            metrics.clone(),
            Arc::new(|_, _| {}),
        )?;
        for i in 0..5 {
            let record = UsageRecord {
                request_id: format!("r{i}"),
                time_ms: 1 + i,
                ..UsageRecord::default()
            };
            writer
                .submit(Entry {
                    record: Some(record),
                    charge: None,
                })
                .await;
        }
        writer.close().await;
        assert_eq!(
            flaky.query_usage(&UsageQuery::default())?.len(),
            5,
            "nothing may be lost to transient failures"
        );
        assert_eq!(metrics.writer_commit_errors.get(), 3);
        assert!(
            flaky.reopened.load(std::sync::atomic::Ordering::Relaxed) >= 1,
            "a refusing backend is reopened"
        );
        assert_eq!(metrics.records_dropped.get(), 0);
        Ok(())
    }
}
