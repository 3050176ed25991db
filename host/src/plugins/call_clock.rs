//! The pacing of policy calls: an execution budget per call, counted in the
//! epoch ticks the guest observes while it runs, and the overrun lanes.
//!
//! A call gets its first epoch slice uninterrupted (healthy policies finish in
//! microseconds and never yield). A call still running at its second tick has
//! overrun: from then on it runs only while it holds one of the engine's
//! overrun lanes, a semaphore sized well below the runtime's worker count, and
//! yields to the runtime at every tick. Calls waiting for a lane are parked and
//! use no CPU; waiting spends their budget at wall-clock rate. So however many
//! looping plugins are in flight, at most `lanes` workers' worth of time goes to
//! them and the other workers keep serving requests — cooperative yielding alone
//! is not enough, since a healthy request then waits a slice behind every
//! looping call at each of its awaits.
//!
//! The lane holder yields through `tokio::task::yield_now`, whose wake-up
//! tokio defers until the scheduler has polled for I/O: on a per-core worker
//! (a single-threaded runtime) a task that woke itself at once would be polled
//! again and again, and the worker would look at its sockets only every 61
//! polls — 61 ms with a looping call on it, stalling every other request of
//! that worker.
//!
//! The budget counts ticks observed while running, not wall-clock time: a
//! healthy call the OS preempts for longer than the timeout (a loaded machine)
//! observes one tick when it resumes and finishes normally.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::UpdateDeadline;

use super::engine::EPOCH_TICK;

/// Raised from the epoch callback when a call outlives its deadline.
#[derive(Debug, thiserror::Error)]
#[error("plugin call exceeded its deadline")]
pub struct DeadlineExceeded;

/// A lane held by a store, or none.
type LaneSlot = Arc<Mutex<Option<OwnedSemaphorePermit>>>;

/// The timing of the call in progress in one store.
pub struct CallClock {
    lanes: Arc<Semaphore>,
    lane: LaneSlot,
    /// Ticks the call may still use.
    budget: u64,
    /// Ticks observed while running.
    slices: u32,
    /// When the call started waiting for a lane, while it waits.
    waiting_since: Option<Instant>,
}

impl CallClock {
    /// A clock whose calls share `lanes` once they overrun.
    pub fn new(lanes: Arc<Semaphore>) -> Self {
        Self {
            lanes,
            lane: LaneSlot::default(),
            budget: 0,
            slices: 0,
            waiting_since: None,
        }
    }

    /// Starts a call that may run for `timeout`.
    pub fn start(&mut self, timeout: Duration) {
        self.budget = ticks_in(timeout).max(1);
        self.slices = 0;
        self.waiting_since = None;
    }

    /// Ends the call, freeing the lane it held.
    pub fn finish(&mut self) {
        self.lane
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    /// What the epoch tick that just interrupted the call means for it. After
    /// a wait for a lane the deadline is the current epoch, so the guest comes
    /// straight back here: to run on with the lane, or to end if the wait used
    /// up its budget (instead of spinning one more slice unlaned).
    ///
    /// # Errors
    /// [`DeadlineExceeded`] once the call's budget is spent.
    pub fn tick(&mut self) -> wasmtime::Result<UpdateDeadline> {
        let waited = self.waiting_since.take();
        let spent = match waited {
            Some(since) => ticks_in(since.elapsed()),
            None => {
                self.slices = self.slices.saturating_add(1);
                1
            }
        };
        if self.budget <= spent {
            return Err(DeadlineExceeded.into());
        }
        self.budget -= spent;
        if self.slices == 1 {
            return Ok(UpdateDeadline::Continue(1));
        }
        if self.holds_lane() {
            return Ok(if waited.is_some() {
                UpdateDeadline::Continue(1)
            } else {
                UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now()))
            });
        }
        self.waiting_since = Some(Instant::now());
        Ok(UpdateDeadline::YieldCustom(0, self.wait_for_lane()))
    }

    fn holds_lane(&self) -> bool {
        self.lane
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// Parks the call until a lane frees or its remaining budget has passed
    /// (the next tick then ends it).
    fn wait_for_lane(&self) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let (lanes, lane) = (self.lanes.clone(), self.lane.clone());
        let patience = EPOCH_TICK.saturating_mul(u32::try_from(self.budget).unwrap_or(u32::MAX));
        Box::pin(async move {
            let acquired = tokio::time::timeout(patience, lanes.acquire_owned()).await;
            if let Ok(Ok(permit)) = acquired {
                *lane.lock().unwrap_or_else(PoisonError::into_inner) = Some(permit);
            }
        })
    }
}

/// Whole epoch ticks in `span`.
fn ticks_in(span: Duration) -> u64 {
    u64::try_from(span.as_nanos() / EPOCH_TICK.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn clock(lanes: &Arc<Semaphore>, timeout: Duration) -> CallClock {
        let mut clock = CallClock::new(lanes.clone());
        clock.start(timeout);
        clock
    }

    /// The wait for a lane a tick asked for, if it asked for one.
    fn lane_wait(
        step: wasmtime::Result<UpdateDeadline>,
    ) -> Result<Pin<Box<dyn Future<Output = ()> + Send>>, &'static str> {
        match step {
            Ok(UpdateDeadline::YieldCustom(0, wait)) => Ok(wait),
            _ => Err("an overrunning call must wait for a lane"),
        }
    }

    #[tokio::test]
    async fn overrunning_calls_share_the_lanes_and_release_them() -> TestResult {
        let lanes = Arc::new(Semaphore::new(1));
        let (mut first, mut second) = (
            clock(&lanes, Duration::from_secs(5)),
            clock(&lanes, Duration::from_millis(30)),
        );
        assert!(matches!(first.tick(), Ok(UpdateDeadline::Continue(1))));
        lane_wait(first.tick())?.await;
        assert!(first.holds_lane());
        assert!(matches!(first.tick(), Ok(UpdateDeadline::Continue(1))));
        assert!(matches!(
            first.tick(),
            Ok(UpdateDeadline::YieldCustom(1, _))
        ));

        assert!(matches!(second.tick(), Ok(UpdateDeadline::Continue(1))));
        let wait = lane_wait(second.tick())?;
        let started = Instant::now();
        wait.await;
        assert!(
            started.elapsed() >= Duration::from_millis(20),
            "no lane was free"
        );
        assert!(!second.holds_lane());
        let expired = second.tick().err().ok_or("the deadline has passed")?;
        assert!(expired.downcast_ref::<DeadlineExceeded>().is_some());

        first.finish();
        assert_eq!(lanes.available_permits(), 1);
        Ok(())
    }

    #[tokio::test]
    async fn the_budget_counts_ticks_run_not_time_spent_preempted() -> TestResult {
        let lanes = Arc::new(Semaphore::new(1));
        let mut clock = clock(&lanes, Duration::from_millis(3));
        // A healthy call the OS preempts for longer than its timeout sees one
        // tick when it resumes, and goes on.
        std::thread::sleep(Duration::from_millis(10));
        assert!(matches!(clock.tick(), Ok(UpdateDeadline::Continue(1))));
        // A call that keeps running uses up its three ticks: the second takes
        // a lane (free at once, so the wait costs nothing), the third ends it.
        lane_wait(clock.tick())?.await;
        assert!(matches!(clock.tick(), Ok(UpdateDeadline::Continue(1))));
        let expired = clock.tick().err().ok_or("the budget is spent")?;
        assert!(expired.downcast_ref::<DeadlineExceeded>().is_some());
        Ok(())
    }

    #[test]
    fn a_new_call_starts_with_an_uninterrupted_slice() {
        let lanes = Arc::new(Semaphore::new(0));
        let mut clock = clock(&lanes, Duration::from_secs(5));
        assert!(matches!(clock.tick(), Ok(UpdateDeadline::Continue(1))));
        assert!(lane_wait(clock.tick()).is_ok());
        clock.start(Duration::from_secs(5));
        assert!(matches!(clock.tick(), Ok(UpdateDeadline::Continue(1))));
    }
}
