//! Where log lines go: a bounded in-memory buffer that one log thread writes
//! to stderr in batches. A request thread that logs a line copies it into the
//! buffer under a short lock and goes on; it never waits on stderr (a full
//! pipe, a stalled journald) and never wakes the log thread for a single
//! line: the thread writes when the buffer passes a high-water mark or every
//! [`FLUSH_EVERY`], whichever comes first. Under load that is one `write` and
//! no thread wake-up per few hundred lines, where a channel per line (what
//! `tracing-appender` does) costs a futex wake-up per line. Past
//! [`MAX_BUFFERED`] bytes, lines are dropped and counted, never waited for.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// How long a line can wait in the buffer before it is written.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);

/// Buffered bytes past which the log thread is woken at once.
const HIGH_WATER: usize = 64 * 1024;

/// Buffered bytes past which lines are dropped (a stalled stderr).
const MAX_BUFFERED: usize = 16 * 1024 * 1024;

/// What the writers and the log thread share.
#[derive(Default)]
struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    dropped: AtomicU64,
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    closed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The writing end, cloned into the log subscriber.
#[derive(Clone)]
pub struct LogSink {
    shared: Arc<Shared>,
}

/// Keeps the log thread running; dropping it writes what is buffered and
/// stops the thread.
pub struct LogGuard {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Lines dropped so far because the buffer was full, process-wide.
#[derive(Clone)]
pub struct DropCounter(Arc<Shared>);

impl DropCounter {
    /// The running total of dropped lines.
    pub fn dropped_lines(&self) -> u64 {
        self.0.dropped.load(Ordering::Relaxed)
    }
}

/// Starts the log thread writing to `out`.
///
/// # Errors
/// When the thread cannot be spawned.
pub fn start(out: impl Write + Send + 'static) -> std::io::Result<(LogSink, LogGuard)> {
    let shared = Arc::new(Shared::default());
    let worker = shared.clone();
    let thread = std::thread::Builder::new()
        .name("sluice-log".into())
        .spawn(move || write_out(&worker, out))?;
    Ok((
        LogSink {
            shared: shared.clone(),
        },
        LogGuard {
            shared,
            thread: Some(thread),
        },
    ))
}

impl LogSink {
    /// The counter of dropped lines, for `/metrics`.
    pub fn drop_counter(&self) -> DropCounter {
        DropCounter(self.shared.clone())
    }
}

/// The log thread: swaps the buffer out under the lock, writes it without it.
fn write_out(shared: &Shared, mut out: impl Write) {
    let mut spare = Vec::new();
    loop {
        let closed = {
            let mut pending = shared.lock();
            if pending.bytes.len() < HIGH_WATER && !pending.closed {
                pending = shared
                    .wake
                    .wait_timeout(pending, FLUSH_EVERY)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            std::mem::swap(&mut pending.bytes, &mut spare);
            pending.closed
        };
        if !spare.is_empty() {
            // Nowhere to report a failing stderr: the lines are lost.
            let _ = out.write_all(&spare).and_then(|()| out.flush());
            spare.clear();
        }
        if closed && shared.lock().bytes.is_empty() {
            return;
        }
    }
}

impl Write for LogSink {
    /// Buffers one formatted line (the subscriber writes each event whole).
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let mut pending = self.shared.lock();
        if pending.bytes.len() + line.len() > MAX_BUFFERED {
            drop(pending);
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(line.len());
        }
        let was_below = pending.bytes.len() < HIGH_WATER;
        pending.bytes.extend_from_slice(line);
        let wake = was_below && pending.bytes.len() >= HIGH_WATER;
        drop(pending);
        if wake {
            self.shared.wake.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogSink {
    type Writer = LogSink;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Write` into a vector the test keeps.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_is_written_in_order_by_the_time_the_guard_drops() -> std::io::Result<()> {
        let out = Captured::default();
        let (sink, guard) = start(out.clone())?;
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let mut sink = sink.clone();
                std::thread::spawn(move || {
                    for i in 0..5_000 {
                        let _ = sink.write(format!("{t} {i}\n").as_bytes());
                    }
                })
            })
            .collect();
        for thread in threads {
            let _ = thread.join();
        }
        drop(guard);
        let text = String::from_utf8_lossy(&out.0.lock().unwrap_or_else(PoisonError::into_inner))
            .into_owned();
        for t in 0..4 {
            let seen: Vec<u32> = text
                .lines()
                .filter_map(|l| l.strip_prefix(&format!("{t} ")))
                .filter_map(|n| n.parse().ok())
                .collect();
            assert_eq!(seen, (0..5_000).collect::<Vec<_>>(), "thread {t}");
        }
        assert_eq!(sink.drop_counter().dropped_lines(), 0);
        Ok(())
    }

    #[test]
    fn a_quiet_line_is_written_within_the_flush_interval() -> std::io::Result<()> {
        let out = Captured::default();
        let (mut sink, _guard) = start(out.clone())?;
        sink.write_all(b"one line\n")?;
        let deadline = std::time::Instant::now() + FLUSH_EVERY * 40;
        while out
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
        {
            assert!(std::time::Instant::now() < deadline, "line never written");
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// A `Write` that never returns, like a pipe nobody reads.
    struct Stalled(std::sync::mpsc::Receiver<()>);

    impl Write for Stalled {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            let _ = self.0.recv();
            Err(std::io::Error::other("stalled"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_stderr_drops_and_counts_lines_instead_of_blocking() -> std::io::Result<()> {
        let (release, stalled) = std::sync::mpsc::channel();
        let (mut sink, guard) = start(Stalled(stalled))?;
        let line = vec![b'x'; 1024];
        // The log thread holds at most one full buffer while it is stuck, and
        // one more fills behind it: a third is dropped whatever the timing.
        let lines = 3 * MAX_BUFFERED / line.len();
        for _ in 0..lines {
            sink.write_all(&line)?;
        }
        let dropped = sink.drop_counter().dropped_lines();
        assert!(
            dropped >= (MAX_BUFFERED / line.len()) as u64,
            "dropped {dropped}"
        );
        drop(release);
        drop(guard);
        Ok(())
    }
}
