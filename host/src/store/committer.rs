//! The thread that commits the batch writer's batches: one dedicated thread,
//! at a lower CPU priority than the request workers (nice
//! [`COMMIT_NICENESS`]). A commit of a full batch takes milliseconds of CPU;
//! on a machine whose cores are busy serving requests, the scheduler then
//! runs the workers first and the commit in the gaps, instead of letting a
//! commit hold a core while requests queue behind it. Durability is
//! unchanged: the writer still waits for each commit before it reports the
//! batch's charges as committed. When the priority cannot be lowered (a
//! sandbox that forbids it), the thread runs at the normal priority.

use std::sync::Arc;
use std::sync::mpsc;

use tokio::sync::oneshot;

use super::{Batch, Store, StoreError};

/// How much lower the committing thread's priority is (Linux nice, 0–19).
pub const COMMIT_NICENESS: i32 = 5;

/// A batch to commit, and where its result goes.
type Job = (Arc<Batch>, oneshot::Sender<Result<(), StoreError>>);

/// The handle to the committing thread; [`Committer::close`] ends it.
pub struct Committer {
    jobs: mpsc::Sender<Job>,
    thread: std::thread::JoinHandle<()>,
}

impl Committer {
    /// Starts the thread that commits to `store`.
    ///
    /// # Errors
    /// When the thread cannot be spawned.
    pub fn start(store: Arc<dyn Store>) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("sluice-store".into())
            .spawn(move || {
                lower_priority();
                for (batch, done) in queue {
                    let _ = done.send(store.append(&batch));
                }
            })?;
        Ok(Self { jobs, thread })
    }

    /// Ends the thread and waits for it, so that the store it holds is
    /// released (a store file stays locked while any handle to it lives).
    pub async fn close(self) {
        let Self { jobs, thread } = self;
        drop(jobs);
        if !matches!(
            tokio::task::spawn_blocking(move || thread.join()).await,
            Ok(Ok(()))
        ) {
            tracing::error!("the committing thread panicked");
        }
    }

    /// Commits `batch` durably.
    ///
    /// # Errors
    /// The store's error, or that the committing thread is gone.
    pub async fn commit(&self, batch: Arc<Batch>) -> Result<(), StoreError> {
        let gone = || StoreError::backend("committer", "the committing thread is gone");
        let (done, result) = oneshot::channel();
        self.jobs.send((batch, done)).map_err(|_| gone())?;
        result.await.map_err(|_| gone())?
    }
}

/// Lowers the calling thread's CPU priority by [`COMMIT_NICENESS`].
fn lower_priority() {
    let thread = rustix::thread::gettid();
    let pid = rustix::process::Pid::from_raw(thread.as_raw_nonzero().get());
    if let Err(e) = rustix::process::setpriority_process(pid, COMMIT_NICENESS) {
        tracing::debug!(error = %e, "cannot lower the committing thread's priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::redb::RedbStore;
    use crate::store::{UsageQuery, UsageRecord};

    #[tokio::test]
    async fn commits_on_a_thread_of_lower_priority_and_lets_go_when_closed()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.path().join("c.redb"))?);
        let committer = Committer::start(store.clone())?;
        let batch = Batch {
            records: vec![UsageRecord {
                request_id: "r1".into(),
                ..UsageRecord::default()
            }],
            charges: Vec::new(),
        };
        committer.commit(Arc::new(batch)).await?;
        assert_eq!(store.query_usage(&UsageQuery::default())?.len(), 1);
        let path = dir.path().join("c.redb");
        let task = std::fs::read_dir("/proc/self/task")?
            .filter_map(Result::ok)
            .find(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|c| c.trim() == "sluice-store")
            })
            .ok_or("no committing thread")?;
        let stat = std::fs::read_to_string(task.path().join("stat"))?;
        let nice: i32 = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(16))
            .ok_or("no nice field")?
            .parse()?;
        assert_eq!(nice, COMMIT_NICENESS);
        // Closed, the thread has let go of the store: its file opens again.
        committer.close().await;
        drop(store);
        RedbStore::open(&path)?;
        Ok(())
    }
}
