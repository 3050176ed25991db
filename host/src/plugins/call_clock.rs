//! The pacing of policy calls: a wall-clock deadline per call, checked at every
//! epoch tick the guest observes, and the overrun lanes.
//!
//! A call gets its first epoch slice uninterrupted (healthy policies finish in
//! microseconds and never yield). A call still running at its second tick has
//! overrun: from then on it runs only while it holds one of the engine's
//! overrun lanes, a semaphore sized well below the runtime's worker count, and
//! yields to the runtime at every tick. Calls waiting for a lane are parked and
//! use no CPU; the wait ends at the call's deadline. So however many looping
//! plugins are in flight, at most `lanes` workers' worth of time goes to them and
//! the other workers keep serving requests — cooperative yielding alone is not
//! enough, since a healthy request then waits a slice behind every spinner at
//! each of its awaits.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::UpdateDeadline;

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
    deadline: Instant,
    slices: u32,
    waited: bool,
}

impl CallClock {
    /// A clock whose calls share `lanes` once they overrun.
    pub fn new(lanes: Arc<Semaphore>) -> Self {
        Self {
            lanes,
            lane: LaneSlot::default(),
            deadline: Instant::now(),
            slices: 0,
            waited: false,
        }
    }

    /// Starts a call that may run until `timeout` from now.
    pub fn start(&mut self, timeout: Duration) {
        self.deadline = Instant::now() + timeout;
        self.slices = 0;
        self.waited = false;
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
    /// straight back here: to run on with the lane, or to end if the wait ran
    /// into the call's deadline (instead of spinning one more slice unlaned).
    ///
    /// # Errors
    /// [`DeadlineExceeded`] once the call's deadline has passed.
    pub fn tick(&mut self) -> wasmtime::Result<UpdateDeadline> {
        if Instant::now() >= self.deadline {
            return Err(DeadlineExceeded.into());
        }
        let resumed = std::mem::take(&mut self.waited);
        if !resumed {
            self.slices = self.slices.saturating_add(1);
        }
        if self.slices == 1 {
            return Ok(UpdateDeadline::Continue(1));
        }
        if self.holds_lane() {
            return Ok(if resumed {
                UpdateDeadline::Continue(1)
            } else {
                UpdateDeadline::Yield(1)
            });
        }
        self.waited = true;
        Ok(UpdateDeadline::YieldCustom(0, self.wait_for_lane()))
    }

    fn holds_lane(&self) -> bool {
        self.lane
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// Parks the call until a lane frees or its deadline passes (the next tick
    /// then ends it).
    fn wait_for_lane(&self) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let (lanes, lane, deadline) = (self.lanes.clone(), self.lane.clone(), self.deadline);
        Box::pin(async move {
            let acquired = tokio::time::timeout_at(deadline.into(), lanes.acquire_owned()).await;
            if let Ok(Ok(permit)) = acquired {
                *lane.lock().unwrap_or_else(PoisonError::into_inner) = Some(permit);
            }
        })
    }
}

/// The default number of overrun lanes: half the cores, at least one.
pub fn default_lanes() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
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
        assert!(matches!(first.tick(), Ok(UpdateDeadline::Yield(1))));

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
