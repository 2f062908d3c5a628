//! Connections to workers: opened with a bounded connect, kept idle per
//! worker after a complete exchange, and reused most-recent-first.
//!
//! Pingora's connector pool spawns a watcher task for every released
//! connection and wakes it (often on another thread) on every reuse; under
//! load that was a task spawn, a cross-thread wake-up and a `getpeername` per
//! request. A worker's idle connections here are a short stack behind a
//! mutex held for a push or a pop (never by a reload or a check), and a
//! connection is tested for life when it is taken, not watched meanwhile.
//! A sweep every second closes the ones that expired or that the worker
//! closed, so nothing lingers in CLOSE_WAIT.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::Stream;
use tokio::io::AsyncReadExt;

pub mod http1;

/// Idle connections kept per worker and thread: enough for a burst's worth of
/// concurrency to find warm connections, bounded so a spike does not leave
/// thousands of sockets behind.
const MAX_IDLE: usize = 256;

/// Slots of idle connections, one per gateway thread (modulo): the gateway
/// runs one single-threaded runtime per thread, a connection's socket is
/// registered with the runtime that opened it, and a request reusing it on
/// another thread would have that runtime wake it for every read.
const SLOTS: usize = 16;

thread_local! {
    static SLOT: usize = next_slot();
}

fn next_slot() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % SLOTS
}

type Idle = Vec<(Stream, Instant)>;

/// A worker's idle keep-alive connections.
pub struct ConnectionPool {
    slots: Box<[Mutex<Idle>]>,
}

impl Default for ConnectionPool {
    fn default() -> Self {
        ConnectionPool {
            slots: (0..SLOTS).map(|_| Mutex::new(Vec::new())).collect(),
        }
    }
}

impl std::fmt::Debug for ConnectionPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionPool")
            .field("idle", &self.idle_count())
            .finish()
    }
}

impl ConnectionPool {
    fn slot(&self) -> &Mutex<Idle> {
        &self.slots[SLOT.with(|s| *s)]
    }

    /// The most recently used idle connection of this thread that is still
    /// usable.
    pub fn take(&self, max_idle_time: Duration) -> Option<Stream> {
        loop {
            let (mut stream, since) = self.slot().lock().ok()?.pop()?;
            if since.elapsed() < max_idle_time && is_reusable(&mut stream) {
                return Some(stream);
            }
            // Expired, or closed by the worker: dropping closes it.
        }
    }

    /// Keep a connection whose exchange completed cleanly.
    pub fn put(&self, stream: Stream) {
        if let Ok(mut idle) = self.slot().lock() {
            if idle.len() < MAX_IDLE {
                idle.push((stream, Instant::now()));
            }
        }
    }

    /// Close the connections that expired or that the worker closed.
    pub fn sweep(&self, max_idle_time: Duration) {
        for slot in self.slots.iter() {
            if let Ok(mut idle) = slot.lock() {
                idle.retain_mut(|(stream, since)| {
                    since.elapsed() < max_idle_time && is_reusable(stream)
                });
            }
        }
    }

    pub fn idle_count(&self) -> usize {
        self.slots
            .iter()
            .map(|s| s.lock().map_or(0, |i| i.len()))
            .sum()
    }
}

/// An idle connection is reusable when a read would block: no EOF (the
/// worker closed it) and no unexpected bytes.
fn is_reusable(stream: &mut Stream) -> bool {
    let mut probe = [0u8; 1];
    // `unconstrained`: a read that is ready must not be reported pending
    // because the task ran out of its cooperative budget.
    tokio::task::unconstrained(stream.read(&mut probe))
        .now_or_never()
        .is_none()
}

/// Open a connection to a worker within `timeout`.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<Stream> {
    let tcp = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    // Requests are small writes that must leave at once.
    tcp.set_nodelay(true)?;
    // A worker that vanishes without a FIN or RST (a lost node) is noticed
    // by TCP keep-alive on idle connections, not only by timeouts.
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(30))
        .with_interval(Duration::from_secs(5));
    let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
    let stream: L4Stream = tcp.into();
    Ok(Box::new(stream))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn reuses_live_connections_and_drops_closed_and_expired_ones() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pool = ConnectionPool::default();
        let a = connect(addr, Duration::from_secs(1)).await.unwrap();
        let (mut server_a, _) = listener.accept().await.unwrap();
        let b = connect(addr, Duration::from_secs(1)).await.unwrap();
        let (_server_b, _) = listener.accept().await.unwrap();
        pool.put(a);
        pool.put(b);
        assert_eq!(pool.idle_count(), 2);
        // Most recent first: b.
        let b = pool.take(Duration::from_secs(10)).unwrap();
        drop(b);
        // The worker closes a: it is not handed out.
        server_a.shutdown().await.unwrap();
        drop(server_a);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(pool.take(Duration::from_secs(10)).is_none());
        // Expired connections are not handed out either.
        let c = connect(addr, Duration::from_secs(1)).await.unwrap();
        let (_server_c, _) = listener.accept().await.unwrap();
        pool.put(c);
        assert!(pool.take(Duration::ZERO).is_none());
        let d = connect(addr, Duration::from_secs(1)).await.unwrap();
        let (_server_d, _) = listener.accept().await.unwrap();
        pool.put(d);
        pool.sweep(Duration::ZERO);
        assert_eq!(pool.idle_count(), 0);
    }

    #[tokio::test]
    async fn connect_refused_and_timed_out() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        assert!(connect(addr, Duration::from_secs(1)).await.is_err());
    }
}
