//! Host services for policies written against the [API](crate::api): the
//! structured log, the clock, the plugin's key/value store and windowed
//! counters. In a component they are the gateway's imports; in a native test
//! (feature `testing`) they are the in-memory host of [`crate::testing`],
//! one per test thread.

use crate::api::{CounterState, Level};

/// Writes a structured log line attributed to the plugin.
pub fn log(level: Level, message: &str) {
    backend::log(level, message);
}

/// Wall-clock time as Unix milliseconds.
pub fn now_ms() -> u64 {
    backend::now_ms()
}

/// Reads a value from the plugin's key/value store.
pub fn kv_get(key: &str) -> Option<Vec<u8>> {
    backend::kv_get(key)
}

/// Writes a value, optionally expiring after `ttl_ms`.
pub fn kv_set(key: &str, value: &[u8], ttl_ms: Option<u32>) {
    backend::kv_set(key, value, ttl_ms);
}

/// Adds `delta` to a fixed-window counter (a window of `window_ms` starts at
/// the first add) and returns its state; `delta` 0 reads it.
pub fn counter_add(key: &str, delta: i64, window_ms: u32) -> CounterState {
    backend::counter_add(key, delta, window_ms)
}

/// The gateway's imports, through the bindings of the world the plugin
/// implements.
#[cfg(all(
    target_arch = "wasm32",
    any(feature = "authorizer", feature = "planner", feature = "editor")
))]
mod backend {
    use crate::api::{CounterState, Level};
    #[cfg(feature = "authorizer")]
    use crate::authorizer::sluice::policy::host as wit;
    #[cfg(all(
        feature = "editor",
        not(any(feature = "authorizer", feature = "planner"))
    ))]
    use crate::editor::sluice::policy::host as wit;
    #[cfg(all(feature = "planner", not(feature = "authorizer")))]
    use crate::planner::sluice::policy::host as wit;

    pub fn log(level: Level, message: &str) {
        let level = match level {
            Level::Trace => wit::Level::Trace,
            Level::Debug => wit::Level::Debug,
            Level::Info => wit::Level::Info,
            Level::Warn => wit::Level::Warn,
            Level::Error => wit::Level::Error,
        };
        wit::log(level, message);
    }

    pub fn now_ms() -> u64 {
        wit::now_ms()
    }

    pub fn kv_get(key: &str) -> Option<Vec<u8>> {
        wit::kv_get(key)
    }

    pub fn kv_set(key: &str, value: &[u8], ttl_ms: Option<u32>) {
        wit::kv_set(key, value, ttl_ms);
    }

    pub fn counter_add(key: &str, delta: i64, window_ms: u32) -> CounterState {
        let state = wit::counter_add(key, delta, window_ms);
        CounterState {
            total: state.total,
            resets_in_ms: state.resets_in_ms,
        }
    }
}

/// The in-memory host of native tests.
#[cfg(all(not(target_arch = "wasm32"), feature = "testing"))]
use crate::testing::memory as backend;

/// Neither a component nor a test build: nothing to call.
#[cfg(not(any(
    all(not(target_arch = "wasm32"), feature = "testing"),
    all(
        target_arch = "wasm32",
        any(feature = "authorizer", feature = "planner", feature = "editor")
    )
)))]
mod backend {
    use crate::api::{CounterState, Level};

    const UNAVAILABLE: &str = "sluice-policy-sdk: host services exist in the gateway (build for wasm32-wasip2 with a world feature) or, in native tests, with the `testing` feature";

    pub fn log(_: Level, _: &str) {
        panic!("{UNAVAILABLE}")
    }
    pub fn now_ms() -> u64 {
        panic!("{UNAVAILABLE}")
    }
    pub fn kv_get(_: &str) -> Option<Vec<u8>> {
        panic!("{UNAVAILABLE}")
    }
    pub fn kv_set(_: &str, _: &[u8], _: Option<u32>) {
        panic!("{UNAVAILABLE}")
    }
    pub fn counter_add(_: &str, _: i64, _: u32) -> CounterState {
        panic!("{UNAVAILABLE}")
    }
}

/// A candidate's facts from the host's `candidates` interface (1.2), by
/// position. Only the planner's glue makes candidates that read them.
pub(crate) mod candidate {
    #[cfg(all(target_arch = "wasm32", feature = "planner"))]
    pub use crate::planner::sluice::policy::candidates::{has_tag, models, provider, tags};

    #[cfg(not(all(target_arch = "wasm32", feature = "planner")))]
    mod absent {
        const ABSENT: &str =
            "sluice-policy-sdk: only a planner component reads candidates from the host";
        pub fn provider(_: u32) -> String {
            panic!("{ABSENT}")
        }
        pub fn tags(_: u32) -> Vec<String> {
            panic!("{ABSENT}")
        }
        pub fn has_tag(_: u32, _: &str) -> bool {
            panic!("{ABSENT}")
        }
        pub fn models(_: u32) -> Vec<String> {
            panic!("{ABSENT}")
        }
    }
    #[cfg(not(all(target_arch = "wasm32", feature = "planner")))]
    pub use absent::{has_tag, models, provider, tags};
}
