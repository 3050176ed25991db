//! Idle upstream HTTP/1.1 connections, kept per thread and per authority.
//!
//! A connection is checked out by the request that uses it and checked back
//! in by its response body once read to the end, on the same thread (a
//! per-core worker) or on whichever worker finished it (the shared runtime):
//! no lock, no task per connection. Before reuse, a connection the upstream
//! closed or wrote to while idle is dropped; one idle too long is dropped at
//! the thread's next check-in, whatever its authority.

use std::cell::RefCell;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use http::uri::Authority;

use super::conn::Conn;

/// How long an idle connection is kept (the hyper pool's default; a tenth
/// of a second in unit tests, so that they see it expire).
pub(super) const IDLE_TIMEOUT: Duration = if cfg!(test) {
    Duration::from_millis(100)
} else {
    Duration::from_secs(90)
};

/// Most idle connections kept per thread and authority.
const MAX_IDLE: usize = 1024;

/// A connection waiting for its next request.
struct Idle {
    conn: Conn,
    since: Instant,
}

/// Idle connections by authority. Channels name a handful of authorities, so
/// a scan comparing their text beats hashing (an `Authority` hashes
/// case-insensitively, byte by byte).
type IdleByAuthority = Vec<(Authority, Vec<Idle>)>;

thread_local! {
    static IDLE: RefCell<IdleByAuthority> = const { RefCell::new(Vec::new()) };
}

/// The idle list of `authority`, if this thread has one.
fn list<'a>(idle: &'a mut IdleByAuthority, authority: &Authority) -> Option<&'a mut Vec<Idle>> {
    idle.iter_mut()
        .find(|(a, _)| a.as_str() == authority.as_str())
        .map(|(_, list)| list)
}

/// The most recently used idle connection to `authority` on this thread that
/// is still fit for a request, if any.
pub fn checkout(authority: &Authority) -> Option<Conn> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = list(&mut idle, authority)?;
        while let Some(Idle { conn, since }) = list.pop() {
            if since.elapsed() < IDLE_TIMEOUT && quiet(&conn) {
                return Some(conn);
            }
        }
        None
    })
}

/// Keeps a connection whose response was read to its end for the next
/// request to `authority`. Drops this thread's connections idle past the
/// timeout, to any authority (one a reload took out of the config included).
pub fn checkin(authority: Authority, conn: Conn) {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let now = Instant::now();
        // Each list is in check-in order, so the expired ones lead it.
        for (_, list) in idle.iter_mut() {
            let expired = list
                .iter()
                .take_while(|i| now.duration_since(i.since) >= IDLE_TIMEOUT)
                .count();
            list.drain(..expired);
        }
        idle.retain(|(a, list)| !list.is_empty() || a.as_str() == authority.as_str());
        if list(&mut idle, &authority).is_none() {
            idle.push((authority.clone(), Vec::new()));
        }
        if let Some(list) = list(&mut idle, &authority)
            && list.len() < MAX_IDLE
        {
            list.push(Idle { conn, since: now });
        }
    });
}

/// How many idle connections this thread keeps, to any authority.
#[cfg(test)]
pub fn idle_here() -> usize {
    IDLE.with(|idle| idle.borrow().iter().map(|(_, list)| list.len()).sum())
}

/// Whether nothing arrived on an idle connection: no close, no stray bytes.
/// Asks the reactor's readiness first, so a quiet connection costs no
/// system call.
fn quiet(conn: &Conn) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    match conn.io().poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => matches!(
            conn.io().try_read(&mut [0; 1]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
        ),
    }
}
