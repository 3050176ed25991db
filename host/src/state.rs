//! The gateway's shared state: every long-lived part a request or a
//! background task touches. Built and run by [`crate::app`]; read by the
//! server, the relay, accounting, the admin API and background tasks.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::keys::KeyCache;
use crate::metrics::Metrics;
use crate::plugins::Policies;
use crate::plugins::loader::Loader;
use crate::relay::channels::Channels;
use crate::relay::upstream::Upstream;
use crate::store::Store;
use crate::store::writer::UsageWriter;

/// Everything a request handler needs.
pub struct AppState {
    /// The configuration.
    pub config: Arc<Config>,
    /// The store.
    pub store: Arc<dyn Store>,
    /// Key lookups and live quota.
    pub keys: Arc<KeyCache>,
    /// Policy runner.
    pub policies: Arc<Policies>,
    /// Plugin loader.
    pub loader: Arc<Loader>,
    /// Upstream channels.
    pub channels: Channels,
    /// Upstream HTTP client.
    pub upstream: Upstream,
    /// Usage batch writer.
    pub writer: UsageWriter,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Tracks every spawned task so shutdown can drain them.
    pub tracker: TaskTracker,
    /// Settled requests' records on their way to the writer, per thread.
    pub settling: crate::settling::Settling,
    /// Cancelled when shutdown begins: stop accepting, finish in-flight work.
    pub shutdown: CancellationToken,
    /// Cancelled when the shutdown grace period is over: connections still
    /// open are cut, and their requests are accounted as `shutdown`.
    pub cut_off: CancellationToken,
    /// When the gateway started, in Unix seconds (`created` in `/v1/models`).
    pub started_s: u64,
    /// Request-body bytes held in memory, over all requests.
    pub body_budget: crate::server::intake::BodyBudget,
    /// The secret the admin API proves knowledge of to the CLI (see
    /// [`crate::runtime`]).
    pub instance: String,
}
