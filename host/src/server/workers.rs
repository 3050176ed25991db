//! The per-core runtime (nginx's and pingora's model): one thread per
//! worker, each with a single-threaded tokio runtime, its own listening
//! socket on the client address (`SO_REUSEPORT`: the kernel spreads new
//! connections over the sockets) and its own upstream connection pool. A
//! request is accepted, relayed, answered and accounted on one thread; what
//! it leaves behind (its usage record's shaping) runs there too, so a worker
//! keeps its runtime until the gateway says every record is queued.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;

use crate::state::AppState;

/// Pending connections the kernel queues per listening socket.
const BACKLOG: u32 = 1024;

/// How long an idle blocking-pool thread lives (tokio's default is 10 s).
/// The periodic jobs (the known-key refresh every `cache.key_ttl`, retention
/// purges every minute) would otherwise start a thread each time and end it
/// seconds later: the soak counted 9 to 14 threads, one started and ended
/// every 30 s; with this, the same few threads serve them all run long.
pub const BLOCKING_KEEP_ALIVE: Duration = Duration::from_secs(3600);

/// Binds `count` listening sockets on `addr` that share its port. With port
/// 0 the first socket picks the port and the others join it. A port that
/// another process holds is refused as with a single socket (`SO_REUSEPORT`
/// alone would let a second gateway of the same user share it, silently):
/// a plain bind probes it first.
///
/// # Errors
/// When a socket cannot be created or bound, or the port is in use.
pub fn bind_shared_port(
    addr: SocketAddr,
    count: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    if addr.port() != 0 && count > 1 {
        drop(socket_for(addr, false)?);
    }
    let mut bound = addr;
    let mut sockets = Vec::with_capacity(count);
    for _ in 0..count {
        let socket = socket_for(bound, count > 1)?;
        let listener = socket.listen(BACKLOG)?;
        bound = listener.local_addr()?;
        // Off this runtime's reactor: each worker registers its own.
        sockets.push(listener.into_std()?);
    }
    Ok(sockets)
}

/// A socket bound to `addr`, sharing its port with others if `shared`.
fn socket_for(addr: SocketAddr, shared: bool) -> std::io::Result<TcpSocket> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(shared)?;
    socket.bind(addr)?;
    Ok(socket)
}

/// The running worker threads.
pub struct Workers {
    threads: Vec<std::thread::JoinHandle<()>>,
    release: CancellationToken,
}

/// How far ahead a worker's timer wheel always holds an entry.
const TIMER_ANCHOR: Duration = Duration::from_secs(1);

/// Keeps an entry in the worker's timer wheel at most [`TIMER_ANCHOR`] away.
///
/// tokio wakes its driver (a write to the runtime's eventfd, and an extra
/// turn of the event loop) whenever a timer is armed earlier than the
/// driver's next planned wake. Under load a worker's connections are mostly
/// waiting on their upstream, so the wheel can hold only long timeouts, and
/// a request arming one of its own then counted as earlier: with hyper's
/// server (TLS, h2c, `server.direct_http = false`) its 30 s header timeout,
/// a system call for one request in six; with the gateway's own server,
/// whose header timer is per connection, still the relay's first-byte
/// timeout. With an entry a second away, no request timeout is ever
/// earlier, at the cost of one wake a second.
async fn keep_next_timer_near() {
    let mut tick = tokio::time::interval(TIMER_ANCHOR);
    loop {
        tick.tick().await;
    }
}

impl Workers {
    /// Starts one worker thread per socket. Each serves the future `serve`
    /// makes from its listener (the accept loop, which returns at shutdown),
    /// then keeps its runtime running until [`Workers::stop`].
    ///
    /// # Errors
    /// When a runtime or a thread cannot be started.
    pub fn start<F, Fut>(
        state: &Arc<AppState>,
        sockets: Vec<std::net::TcpListener>,
        serve: F,
    ) -> std::io::Result<Self>
    where
        F: Fn(TcpListener) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let release = CancellationToken::new();
        let mut threads = Vec::with_capacity(sockets.len());
        for (i, socket) in sockets.into_iter().enumerate() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_keep_alive(BLOCKING_KEEP_ALIVE)
                .build()?;
            let listener = {
                let _entered = runtime.enter();
                TcpListener::from_std(socket)?
            };
            let accept = serve(listener);
            let state = state.clone();
            let released = release.clone();
            let thread = std::thread::Builder::new()
                .name(format!("sluice-worker-{i}"))
                .spawn(move || {
                    if let Err(e) = state.upstream.own_pool_for_this_thread() {
                        // The CA file was read at start-up; if it is gone now
                        // the shared pool serves this worker.
                        tracing::warn!(error = %e, "worker keeps the shared upstream pool");
                    }
                    runtime.block_on(async move {
                        let serve = async move {
                            accept.await;
                            released.cancelled().await;
                        };
                        tokio::select! {
                            () = serve => {}
                            () = keep_next_timer_near() => {}
                        }
                    });
                })?;
            threads.push(thread);
        }
        Ok(Self { threads, release })
    }

    /// Lets the workers' runtimes end (once every request has settled and its
    /// record is queued) and waits for their threads.
    pub async fn stop(self) {
        self.release.cancel();
        let threads = self.threads;
        let joined = tokio::task::spawn_blocking(move || {
            threads.into_iter().filter_map(|t| t.join().err()).count()
        })
        .await;
        if !matches!(joined, Ok(0)) {
            tracing::error!("a worker thread panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sockets_share_one_port_even_when_it_is_picked() -> std::io::Result<()> {
        let sockets = bind_shared_port(SocketAddr::from(([127, 0, 0, 1], 0)), 3)?;
        let ports: Vec<u16> = sockets
            .iter()
            .map(|s| s.local_addr().map(|a| a.port()))
            .collect::<Result<_, _>>()?;
        assert_ne!(ports[0], 0);
        assert!(ports.iter().all(|p| *p == ports[0]), "{ports:?}");
        Ok(())
    }

    #[tokio::test]
    async fn a_port_another_socket_holds_is_refused() -> std::io::Result<()> {
        let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = taken.local_addr()?;
        let error = bind_shared_port(addr, 2).err().map(|e| e.kind());
        assert_eq!(error, Some(std::io::ErrorKind::AddrInUse));
        Ok(())
    }
}
