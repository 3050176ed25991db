//! Where a settled request's usage record waits for the shaper chain (wasm,
//! so it runs after the response) and the batch writer. Each thread keeps a
//! queue of its own; the first record queued on an idle queue spawns one
//! tracked task that shapes and submits records until the queue is empty.
//! Under load that is one task per burst instead of one per request, and a
//! record is shaped on the thread that served its request. Shutdown waits on
//! the tracker, and so for every queued record.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use thread_local::ThreadLocal;

use crate::plugins::PolicySet;
use crate::plugins::exercise::Inputs;
use crate::state::AppState;
use crate::store::writer::{Entry, Slot};
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

/// The per-thread queues.
#[derive(Default)]
pub struct Settling {
    queues: ThreadLocal<Arc<Mutex<Queue>>>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Settled>,
    /// Whether a task is draining this queue.
    draining: bool,
}

fn lock(queue: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    queue.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Settling {
    /// Queues a settled request on the calling thread's queue, starting its
    /// draining task if none is running.
    pub fn queue(state: &Arc<AppState>, settled: Settled) {
        let queue = state.settling.queues.get_or_default();
        let start = {
            let mut waiting = lock(queue);
            waiting.waiting.push_back(settled);
            !std::mem::replace(&mut waiting.draining, true)
        };
        if start {
            state.tracker.spawn(drain(state.clone(), queue.clone()));
        }
    }
}

/// Shapes and submits the queue's records, oldest first, until it is empty.
async fn drain(state: Arc<AppState>, queue: Arc<Mutex<Queue>>) {
    loop {
        let next = {
            let mut waiting = lock(&queue);
            let next = waiting.waiting.pop_front();
            waiting.draining = next.is_some();
            next
        };
        let Some(settled) = next else { return };
        shape_and_submit(&state, settled).await;
    }
}

async fn shape_and_submit(state: &AppState, settled: Settled) {
    let Settled {
        policies,
        shadowed,
        record,
        charge,
        slot,
    } = settled;
    if let Some(inputs) = shadowed {
        crate::plugins::shadow::run(&policies.shadows, &inputs, &state.metrics).await;
    }
    let entry = Entry {
        record: state.policies.shape(&policies, record).await,
        charge,
    };
    match slot {
        Some(slot) => state.writer.submit_reserved(slot, entry),
        None => state.writer.submit(entry).await,
    }
}
