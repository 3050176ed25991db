//! Crash points for tests, compiled into debug builds only: with
//! `SLUICE_FAILPOINT=NAME:N` set, the N-th time execution reaches the point
//! named NAME the process says so on stderr and aborts, as a crash would.
//! Release builds have no failpoints.

/// Aborts here if the environment names this point and its count is reached.
#[cfg(debug_assertions)]
pub fn hit(name: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static HITS: AtomicU64 = AtomicU64::new(0);
    let Some(spec) = std::env::var_os("SLUICE_FAILPOINT") else {
        return;
    };
    let spec = spec.to_string_lossy();
    let (wanted, nth) = spec.split_once(':').unwrap_or((&spec, "1"));
    if wanted != name {
        return;
    }
    let hits = HITS.fetch_add(1, Ordering::SeqCst) + 1;
    if nth.parse() == Ok(hits) {
        eprintln!("failpoint {name} fired (hit {hits}): aborting");
        std::process::abort();
    }
}

/// No failpoints in release builds.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn hit(_name: &str) {}
