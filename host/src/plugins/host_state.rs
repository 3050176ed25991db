//! The per-store host state and the `host` interface plugins import: logging,
//! clock, a bounded per-plugin key/value store with TTL, and windowed counters.
//! State lives in [`PluginShared`], shared by every instance of one plugin and
//! kept across hot reloads of that plugin.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use wasmtime::ResourceLimiter;
use wasmtime::StoreLimits;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::stderr::GuestStderr;

use super::bindings::host::{self, CounterState};
use super::bindings::types::{self, Level};
use super::call_clock::CallClock;
use super::views::LentViews;

/// Most entries a plugin may keep in its key/value store or counters.
const MAX_ENTRIES: usize = 100_000;
/// Largest key/value value.
const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Longest log message kept from a plugin.
const MAX_LOG_BYTES: usize = 4096;

/// A stored value and its expiry.
type KvEntry = (Vec<u8>, Option<Instant>);

struct Window {
    started: Instant,
    length: Duration,
    total: i64,
}

impl Window {
    /// Adds `delta` at `now`, starting a new window of `length` first when
    /// this one has ended.
    fn add(&mut self, now: Instant, length: Duration, delta: i64) -> CounterState {
        if now.duration_since(self.started) >= self.length {
            *self = Window {
                started: now,
                length,
                total: 0,
            };
        }
        self.total = self.total.saturating_add(delta);
        let left = self.length.saturating_sub(now.duration_since(self.started));
        CounterState {
            total: self.total,
            resets_in_ms: u32::try_from(left.as_millis()).unwrap_or(u32::MAX),
        }
    }
}

/// Maps keyed by plugin-chosen strings: a fast hasher, randomly seeded.
type Map<V> = HashMap<String, V, foldhash::fast::RandomState>;

/// State shared by all instances of one plugin.
pub struct PluginShared {
    /// The plugin's name (for logs).
    pub name: String,
    kv: Mutex<Map<KvEntry>>,
    counters: Mutex<Map<Window>>,
}

impl PluginShared {
    /// Empty state for plugin `name`.
    pub fn new(name: &str) -> Arc<Self> {
        Arc::new(Self {
            name: name.into(),
            kv: Mutex::default(),
            counters: Mutex::default(),
        })
    }

    /// Adds `delta` to counter `key` in a fixed window of `window_ms`.
    pub fn counter_add(&self, key: &str, delta: i64, window_ms: u32) -> CounterState {
        let now = Instant::now();
        let length = Duration::from_millis(u64::from(window_ms.max(1)));
        let Ok(mut counters) = self.counters.lock() else {
            return CounterState {
                total: 0,
                resets_in_ms: 0,
            };
        };
        if let Some(window) = counters.get_mut(key) {
            return window.add(now, length, delta);
        }
        if counters.len() >= MAX_ENTRIES {
            counters.retain(|_, w| now.duration_since(w.started) < w.length);
            if counters.len() >= MAX_ENTRIES {
                tracing::warn!(plugin = %self.name, "plugin counter table is full; update ignored");
                return CounterState {
                    total: 0,
                    resets_in_ms: 0,
                };
            }
        }
        let mut window = Window {
            started: now,
            length,
            total: 0,
        };
        let state = window.add(now, length, delta);
        counters.insert(key.to_owned(), window);
        state
    }

    fn kv_get(&self, key: &str) -> Option<Vec<u8>> {
        let mut kv = self.kv.lock().ok()?;
        match kv.get(key) {
            Some((_, Some(expiry))) if *expiry <= Instant::now() => {
                kv.remove(key);
                None
            }
            Some((value, _)) => Some(value.clone()),
            None => None,
        }
    }

    fn kv_set(&self, key: String, value: Vec<u8>, ttl_ms: Option<u32>) {
        if value.len() > MAX_VALUE_BYTES {
            tracing::warn!(plugin = %self.name, bytes = value.len(), "plugin kv value too large; ignored");
            return;
        }
        let Ok(mut kv) = self.kv.lock() else { return };
        let now = Instant::now();
        if kv.len() >= MAX_ENTRIES && !kv.contains_key(&key) {
            kv.retain(|_, (_, expiry)| expiry.is_none_or(|e| e > now));
            if kv.len() >= MAX_ENTRIES {
                tracing::warn!(plugin = %self.name, "plugin kv store is full; set ignored");
                return;
            }
        }
        let expiry = ttl_ms.map(|ms| now + Duration::from_millis(u64::from(ms)));
        kv.insert(key, (value, expiry));
    }
}

/// The data of one plugin `Store`.
pub struct HostState {
    wasi: WasiCtx,
    /// The guest's stderr, kept for the message of a failing call.
    pub stderr: GuestStderr,
    table: ResourceTable,
    limits: StoreLimits,
    /// The plugin's shared state.
    pub shared: Arc<PluginShared>,
    /// The time budget and overrun lane of the call in progress.
    pub clock: CallClock,
    /// The views lent to the call in progress (1.1 policies).
    pub lent: LentViews,
    /// The name of the key counter being updated, kept to reuse its buffer.
    counter_name: String,
}

impl HostState {
    /// State with nothing granted (no files, sockets, env, args), a memory
    /// limit, and calls that share `lanes` once they overrun their first slice.
    pub fn new(shared: Arc<PluginShared>, memory_limit: usize, lanes: Arc<Semaphore>) -> Self {
        let stderr = GuestStderr::default();
        let mut wasi = WasiCtx::builder();
        wasi.stderr(stderr.clone());
        Self {
            wasi: wasi.build(),
            stderr,
            table: ResourceTable::new(),
            limits: wasmtime::StoreLimitsBuilder::new()
                .memory_size(memory_limit)
                .table_elements(100_000)
                .instances(32)
                .trap_on_grow_failure(true)
                .build(),
            shared,
            clock: CallClock::new(lanes),
            lent: LentViews::default(),
            counter_name: String::new(),
        }
    }

    /// Adds `delta` to the lent key's counter `name` (stored as `name:<key
    /// id>`, the name the host charges tokens to).
    ///
    /// # Errors
    /// When no key is lent.
    pub fn key_counter_add(
        &mut self,
        name: &str,
        delta: i64,
        window_ms: u32,
    ) -> wasmtime::Result<CounterState> {
        let id = &self.lent.lent_key()?.record.id;
        self.counter_name.clear();
        self.counter_name.push_str(name);
        self.counter_name.push(':');
        self.counter_name.push_str(id);
        Ok(self
            .shared
            .counter_add(&self.counter_name, delta, window_ms))
    }

    /// The store's resource limiter.
    pub fn limiter(&mut self) -> &mut dyn ResourceLimiter {
        &mut self.limits
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for HostState {}

impl host::Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        let plugin = self.shared.name.as_str();
        let mut message = message;
        if message.len() > MAX_LOG_BYTES {
            let mut cut = MAX_LOG_BYTES;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        match level {
            Level::Trace => tracing::trace!(plugin, "{message}"),
            Level::Debug => tracing::debug!(plugin, "{message}"),
            Level::Info => tracing::info!(plugin, "{message}"),
            Level::Warn => tracing::warn!(plugin, "{message}"),
            Level::Error => tracing::error!(plugin, "{message}"),
        }
    }

    fn now_ms(&mut self) -> u64 {
        crate::keys::now_ms()
    }

    fn kv_get(&mut self, key: String) -> Option<Vec<u8>> {
        self.shared.kv_get(&key)
    }

    fn kv_set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u32>) {
        self.shared.kv_set(key, value, ttl_ms);
    }

    fn counter_add(&mut self, key: String, delta: i64, window_ms: u32) -> CounterState {
        self.shared.counter_add(&key, delta, window_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_reset_after_their_window() {
        let shared = PluginShared::new("t");
        assert_eq!(shared.counter_add("a", 2, 50).total, 2);
        assert_eq!(shared.counter_add("a", 3, 50).total, 5);
        std::thread::sleep(Duration::from_millis(60));
        let state = shared.counter_add("a", 1, 50);
        assert_eq!(state.total, 1);
        assert!(state.resets_in_ms <= 50);
    }

    #[test]
    fn kv_values_expire() {
        let shared = PluginShared::new("t");
        shared.kv_set("k".into(), vec![1], Some(20));
        assert_eq!(shared.kv_get("k"), Some(vec![1]));
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(shared.kv_get("k"), None);
        shared.kv_set("big".into(), vec![0; MAX_VALUE_BYTES + 1], None);
        assert_eq!(shared.kv_get("big"), None);
    }
}
