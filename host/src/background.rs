//! Background tasks, all tracked: channel probes, health gauges, known-key
//! refresh, and retention purges in small batches.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::state::AppState;

/// Records purged per purge transaction, so the writer is never blocked for long.
const PURGE_BATCH: usize = 500;

/// Starts every background task on the state's tracker.
pub fn spawn_all(state: &Arc<AppState>) {
    every(state, state.config.upstream.probe_interval, |s| {
        Box::pin(probe_channels(s))
    });
    every(state, state.config.cache.key_ttl, |s| {
        Box::pin(async move {
            let keys = s.keys.clone();
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || keys.refresh_known()).await {
                tracing::error!(error = %e, "refreshing known keys failed");
            }
        })
    });
    every(state, Duration::from_secs(60), |s| Box::pin(purge(s)));
}

type Job = fn(Arc<AppState>) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

fn every(state: &Arc<AppState>, period: Duration, job: Job) {
    let s = state.clone();
    state.tracker.spawn(async move {
        let mut ticker = tokio::time::interval(period.max(Duration::from_millis(10)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = s.shutdown.cancelled() => break,
                _ = ticker.tick() => job(s.clone()).await,
            }
        }
    });
}

async fn probe_channels(state: Arc<AppState>) {
    state.channels.publish(&state.metrics);
    for channel in state.channels.all().iter().filter(|c| c.due_for_probe()) {
        let Some(uri) = channel.wire.probe_uri() else {
            continue;
        };
        let mut request = http::Request::get(uri);
        for (name, value) in channel.wire.credentials() {
            request = request.header(name, value.clone());
        }
        let ok = match request.body(Bytes::new()) {
            Ok(req) => matches!(
                tokio::time::timeout(state.config.upstream.connect_timeout, state.upstream.request(req)).await,
                Ok(Ok(resp)) if resp.status().is_success()
            ),
            Err(_) => false,
        };
        channel.probed(ok, state.config.upstream.cooldown);
    }
}

async fn purge(state: Arc<AppState>) {
    let retention = u64::try_from(state.config.store.retention.as_millis()).unwrap_or(u64::MAX);
    let cutoff = crate::keys::now_ms().saturating_sub(retention);
    loop {
        let store = state.store.clone();
        match tokio::task::spawn_blocking(move || store.purge_before(cutoff, PURGE_BATCH)).await {
            Ok(Ok((0, 0))) => break,
            Ok(Ok((records, entries))) => {
                tracing::info!(records, ledger_entries = entries, "retention purge");
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "retention purge failed");
                break;
            }
            Err(e) => {
                tracing::error!(error = %e, "retention purge task failed");
                break;
            }
        }
        if state.shutdown.is_cancelled() {
            break;
        }
        tokio::task::yield_now().await;
    }
}
