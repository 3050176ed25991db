//! A plugin's idle instances, pooled per thread: each thread takes and
//! returns instances in its own shard, so a worker's calls neither share a
//! lock with the other workers' nor get an instance whose memory another
//! core touched last. Threads are given shards in turn, the first time they
//! call; with one runtime worker per core each worker has a shard to itself.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

/// Idle values in per-thread shards, at most `per_shard` in each.
pub struct IdlePool<T> {
    shards: Box<[Mutex<Vec<T>>]>,
    per_shard: usize,
}

impl<T> IdlePool<T> {
    /// A pool keeping about `max_idle` values in all, spread over one shard
    /// per core (each shard's share rounded up; none at all for 0).
    pub fn new(max_idle: usize) -> Self {
        let count = shard_count();
        Self {
            shards: (0..count).map(|_| Mutex::new(Vec::new())).collect(),
            per_shard: max_idle.div_ceil(count),
        }
    }

    /// An idle value of this thread's shard, if it has one.
    pub fn take(&self) -> Option<T> {
        self.shard().pop()
    }

    /// Keeps `value` in this thread's shard, or drops it when the shard is full.
    pub fn give(&self, value: T) {
        let mut shard = self.shard();
        if shard.len() < self.per_shard {
            shard.push(value);
        }
    }

    fn shard(&self) -> MutexGuard<'_, Vec<T>> {
        let index = thread_shard() % self.shards.len();
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Shards per pool: the cores the process may run on.
fn shard_count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| std::thread::available_parallelism().map_or(1, usize::from))
}

/// The calling thread's shard number, given on its first call.
fn thread_shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: Cell<Option<usize>> = const { Cell::new(None) };
    }
    SHARD.with(|shard| {
        shard.get().unwrap_or_else(|| {
            let given = NEXT.fetch_add(1, Ordering::Relaxed);
            shard.set(Some(given));
            given
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_gets_back_what_it_gave_and_a_full_shard_drops() {
        let pool = IdlePool::new(shard_count());
        assert_eq!(pool.take(), None::<u32>);
        pool.give(1);
        pool.give(2);
        assert_eq!(pool.take(), Some(1), "one value per shard: 2 was dropped");
        assert_eq!(pool.take(), None);
        let none = IdlePool::new(0);
        none.give(3);
        assert_eq!(none.take(), None, "a pool of no idle values keeps nothing");
    }

    #[test]
    fn threads_use_their_own_shards() {
        let pool = IdlePool::new(64 * shard_count());
        let mine = thread_shard() % shard_count();
        pool.give(1);
        let (theirs, taken) = std::thread::scope(|s| {
            s.spawn(|| (thread_shard() % shard_count(), pool.take()))
                .join()
                .unwrap_or((usize::MAX, None))
        });
        assert_ne!(theirs, usize::MAX, "the other thread panicked");
        assert_eq!(
            taken.is_some(),
            theirs == mine,
            "shards {mine} and {theirs}"
        );
        assert_eq!(pool.take().is_some(), theirs != mine);
    }
}
