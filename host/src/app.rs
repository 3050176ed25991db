//! Wiring: builds every part from a validated [`Config`], runs the listeners and
//! background tasks, and performs the graceful shutdown sequence: stop
//! accepting, let in-flight requests finish up to the grace period, drain the
//! usage queue, final durable commit.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ServerRuntime};
use crate::keys::KeyCache;
use crate::metrics::Metrics;
use crate::plugins::engine::{InstanceSettings, PolicyEngine};
use crate::plugins::loader::Loader;
use crate::plugins::{PluginError, Policies};
use crate::relay::channels::Channels;
use crate::relay::upstream;
use crate::runtime::{self, Bound, Runtime};
use crate::server::Role;
use crate::server::listener::{Connections, ListenerShare, serve};
use crate::server::tls::Certificate;
use crate::server::workers::{Workers, bind_shared_port};
use crate::state::AppState;
use crate::store;
use crate::store::writer::{UsageWriter, WriterSettings};

/// How long streams cut at the end of the grace period get to deliver their
/// closing error event before their connections are dropped.
const CUT_OFF_FLUSH: std::time::Duration = std::time::Duration::from_secs(1);

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Store problem.
    #[error("store: {0}")]
    Store(#[from] store::StoreError),
    /// Plugin problem.
    #[error("plugins: {0}")]
    Plugins(#[from] PluginError),
    /// Upstream client problem.
    #[error("upstream: {0}")]
    Upstream(String),
    /// The usage writer's committing thread could not be started.
    #[error("usage writer: {0}")]
    Writer(std::io::Error),
    /// The instance secret could not be drawn.
    #[error("instance secret: {0}")]
    Instance(getrandom::Error),
    /// The TLS listener's certificate could not be loaded.
    #[error("tls: {0}")]
    Tls(String),
    /// Listener problem.
    #[error("listen {addr}: {error}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The error.
        error: std::io::Error,
    },
}

/// Builds the gateway's state: opens the store, loads plugins, and starts the
/// writer, the plugin folder watcher and the background tasks.
///
/// # Errors
/// Any start-up failure.
pub async fn build(config: Config) -> Result<Arc<AppState>, StartError> {
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::default());
    let store = store::open(config.store.backend, &config.store.path)?;
    let keys = Arc::new(KeyCache::new(
        store.clone(),
        config.cache.key_ttl,
        config.cache.capacity,
        metrics.clone(),
    )?);
    let engine = Arc::new(PolicyEngine::new(
        InstanceSettings::from_config(&config.plugins),
        config.plugins.cache_dir.clone(),
    )?);
    let policies = Arc::new(Policies::new(
        config.plugins.on_failure.clone(),
        metrics.clone(),
    ));
    let loader = Loader::start(
        engine,
        policies.clone(),
        config.plugins.clone(),
        metrics.clone(),
    )
    .await?;
    let upstream = upstream::Upstream::new(
        config.upstream.connect_timeout,
        config.upstream.ca_file.as_deref(),
        config.upstream.direct_http,
    )
    .map_err(StartError::Upstream)?;
    let committed = keys.clone();
    let writer = UsageWriter::start(
        store.clone(),
        WriterSettings {
            batch_size: config.store.batch_size,
            flush_interval: config.store.flush_interval,
            capacity: config.store.queue_capacity,
            backpressure_wait: config.store.backpressure_wait,
        },
        metrics.clone(),
        Arc::new(move |charges, kept| committed.committed(charges, kept)),
    )
    .map_err(StartError::Writer)?;
    let body_budget = crate::server::intake::BodyBudget::new(config.server.max_body_memory);
    let state = Arc::new(AppState {
        channels: Channels::new(&config.channels),
        config,
        store,
        keys,
        policies,
        loader,
        upstream,
        writer,
        metrics,
        tracker: TaskTracker::new(),
        settling: crate::settling::Settling::default(),
        shutdown: CancellationToken::new(),
        cut_off: CancellationToken::new(),
        started_s: crate::keys::now_ms() / 1000,
        body_budget,
        instance: runtime::new_instance_secret().map_err(StartError::Instance)?,
    });
    state.loader.watch(&state.tracker, state.shutdown.clone())?;
    crate::background::spawn_all(&state);
    Ok(state)
}

/// Runs the gateway until `stop` is cancelled, then shuts down gracefully.
/// `ready` receives the bound addresses once both listeners accept.
///
/// # Errors
/// Any start-up failure.
pub async fn run(
    config: Config,
    stop: CancellationToken,
    ready: impl FnOnce(Bound),
) -> Result<(), StartError> {
    let state = build(config).await?;
    crate::server::listener::raise_open_files_limit();
    let server = &state.config.server;
    let listen_error = |addr: SocketAddr| move |error| StartError::Listen { addr, error };
    let socket_count = match server.runtime {
        ServerRuntime::PerCore => server.workers,
        ServerRuntime::Shared => 1,
    };
    let sockets =
        bind_shared_port(server.listen, socket_count).map_err(listen_error(server.listen))?;
    let admin = tokio::net::TcpListener::bind(state.config.admin.listen)
        .await
        .map_err(listen_error(state.config.admin.listen))?;
    let tls = match &server.tls {
        Some(tls) => {
            let listener = tokio::net::TcpListener::bind(tls.listen)
                .await
                .map_err(listen_error(tls.listen))?;
            let certificate = Certificate::load(tls).map_err(StartError::Tls)?;
            let acceptor = certificate.acceptor().map_err(StartError::Tls)?;
            certificate.watch(
                &state.tracker,
                state.shutdown.clone(),
                state.metrics.clone(),
            );
            Some((listener, acceptor))
        }
        None => None,
    };
    let bound = Bound {
        proxy: sockets[0]
            .local_addr()
            .map_err(listen_error(server.listen))?,
        admin: admin
            .local_addr()
            .map_err(listen_error(state.config.admin.listen))?,
        tls: tls
            .as_ref()
            .map(|(listener, _)| listener.local_addr())
            .transpose()
            .map_err(listen_error(
                server.tls.as_ref().map_or(server.listen, |t| t.listen),
            ))?,
    };
    let connections = Connections::default();
    let listeners = TaskTracker::new();
    let proxy_share = ListenerShare::new(&state, Role::Proxy);
    let accept = |listener| {
        listeners.track_future(serve(
            listener,
            state.clone(),
            connections.clone(),
            (Role::Proxy, None),
            proxy_share.clone(),
        ))
    };
    let workers = match server.runtime {
        ServerRuntime::PerCore => {
            Some(Workers::start(&state, sockets, accept).map_err(listen_error(server.listen))?)
        }
        ServerRuntime::Shared => {
            for socket in sockets {
                let listener = tokio::net::TcpListener::from_std(socket)
                    .map_err(listen_error(server.listen))?;
                listeners.spawn(accept(listener));
            }
            None
        }
    };
    listeners.spawn(serve(
        admin,
        state.clone(),
        connections.clone(),
        (Role::Admin, None),
        ListenerShare::new(&state, Role::Admin),
    ));
    // TLS connections are served on this runtime, under the client
    // listener's connection cap.
    if let Some((listener, acceptor)) = tls {
        listeners.spawn(serve(
            listener,
            state.clone(),
            connections.clone(),
            (Role::Proxy, Some(acceptor)),
            proxy_share.clone(),
        ));
    }
    listeners.close();
    tracing::info!(proxy = %bound.proxy, admin = %bound.admin, tls = ?bound.tls, backend = state.store.backend(), "sluice listening");
    let runtime_file = runtime::path(&state.config);
    let record = Runtime {
        bound,
        pid: std::process::id(),
        instance: state.instance.clone(),
    };
    if let Err(e) = runtime::write(&runtime_file, &record) {
        tracing::warn!(file = %runtime_file.display(), error = %e, "cannot write the runtime file the CLI uses to find the admin API");
    }
    ready(bound);
    stop.cancelled().await;
    let _ = std::fs::remove_file(&runtime_file);

    tracing::info!(
        grace_ms = state.config.server.shutdown_grace.as_millis() as u64,
        "shutting down: no new connections"
    );
    state.shutdown.cancel();
    listeners.wait().await;
    let open = &connections.tracker;
    open.close();
    if tokio::time::timeout(state.config.server.shutdown_grace, open.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "grace period over; cutting what is still running (recorded as partial, error kind shutdown)"
        );
        // Streams end themselves with an SSE error event; give them a moment
        // to leave, then drop whatever connection is still open.
        state.cut_off.cancel();
        if tokio::time::timeout(CUT_OFF_FLUSH, open.wait())
            .await
            .is_err()
        {
            connections.abort.cancel();
            open.wait().await;
        }
    }
    // Every connection has ended, so every request's accounting has settled
    // and queued its record on the tracker.
    state.tracker.close();
    state.tracker.wait().await;
    state.writer.close().await;
    if let Some(workers) = workers {
        workers.stop().await;
    }
    tracing::info!("shutdown complete");
    Ok(())
}
