//! Where a settled request's usage record waits for the shaper chain (wasm,
//! so it runs after the response) and the batch writer. Each thread keeps a
//! lane of its own; the first record queued on an idle lane has the caller
//! ([`crate::accounting`]) spawn one tracked task that shapes and submits
//! records until the lane is empty.
//! Under load that is one task per burst instead of one per request, and a
//! record is shaped on the thread that served its request. Shutdown waits on
//! the tracker, and so for every queued record.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use thread_local::ThreadLocal;

use crate::plugins::PolicySet;
use crate::plugins::exercise::Inputs;
use crate::store::writer::Slot;
use crate::store::{Charge, UsageRecord};

/// A settled request's record and charge, with what shaping them needs.
pub struct Settled {
    /// The policies the request ran under (its shapers shape the record).
    pub policies: Arc<PolicySet>,
    /// What the live policies saw, for plugins in shadow mode.
    pub shadowed: Option<Inputs>,
    /// The record, before shaping.
    pub record: UsageRecord,
    /// The quota charge, if metered.
    pub charge: Option<Charge>,
    /// The writer queue place reserved at admission, if one was had.
    pub slot: Option<Slot>,
}

/// The per-thread lanes.
#[derive(Default)]
pub struct Settling {
    lanes: ThreadLocal<Arc<Lane>>,
}

/// One thread's queue of settled requests.
#[derive(Default)]
pub struct Lane(Mutex<Queue>);

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Settled>,
    /// Whether a task is draining this queue.
    draining: bool,
}

impl Settling {
    /// Queues a settled request on the calling thread's lane. Returns the
    /// lane when no task was draining it: the caller starts one, which takes
    /// records with [`Lane::next`] until it gets `None`.
    pub fn push(&self, settled: Settled) -> Option<Arc<Lane>> {
        let lane = self.lanes.get_or_default();
        let mut queue = lane.lock();
        queue.waiting.push_back(settled);
        let idle = !std::mem::replace(&mut queue.draining, true);
        drop(queue);
        idle.then(|| lane.clone())
    }
}

impl Lane {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The oldest waiting record; `None` when there is none, and the lane is
    /// then idle (the next push starts a new task).
    pub fn next(&self) -> Option<Settled> {
        let mut queue = self.lock();
        let next = queue.waiting.pop_front();
        queue.draining = next.is_some();
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settled(request_id: &str) -> Settled {
        Settled {
            policies: Arc::default(),
            shadowed: None,
            record: UsageRecord {
                request_id: request_id.into(),
                ..UsageRecord::default()
            },
            charge: None,
            slot: None,
        }
    }

    #[test]
    fn a_lane_asks_for_one_drainer_at_a_time_and_keeps_order() -> Result<(), &'static str> {
        let settling = Settling::default();
        let lane = settling
            .push(settled("a"))
            .ok_or("an idle lane asks for a drainer")?;
        assert!(
            settling.push(settled("b")).is_none(),
            "a draining lane does not"
        );
        assert_eq!(lane.next().map(|s| s.record.request_id), Some("a".into()));
        assert_eq!(lane.next().map(|s| s.record.request_id), Some("b".into()));
        assert!(lane.next().is_none());
        // Emptied, the lane is idle again: the next record asks for a new drainer.
        assert!(settling.push(settled("c")).is_some());
        // Another thread has a lane of its own.
        std::thread::scope(|s| {
            s.spawn(|| assert!(settling.push(settled("d")).is_some()));
        });
        Ok(())
    }
}
