//! The accept loop of a listener, as a Pingora service.
//!
//! Pingora's own listening service binds its address itself and stops
//! accepting only when the whole server shuts down. The gateway runs its own
//! accept loop over a socket bound *before* the server starts, handing every
//! connection to an HTTP application over Pingora's HTTP session
//! (`HttpServerApp::process_new_http`), because:
//! - a bad or busy address fails start-up with a clear error naming the key,
//!   instead of a panic inside Pingora's service start;
//! - `listen = "127.0.0.1:0"` works, and the bound port is known, so tests run
//!   real gateways on ephemeral ports;
//! - on SIGTERM the gateway stops accepting at once but lets requests in flight
//!   finish, and exits as soon as they have (Pingora's graceful shutdown
//!   always sleeps its whole grace period: pingora.md §9).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::GetSocketDigest;
use pingora_core::protocols::SocketDigest;
use pingora_core::server::{ListenFds, ShutdownWatch};
use pingora_core::services::Service;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

/// Binds a TCP listener now, so errors surface before the server starts.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // A restarted gateway must be able to bind while old connections sit in
    // TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    // A deep backlog absorbs connection bursts (thousands of streams opening
    // at once) instead of dropping SYNs.
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Per-connection settings, read for every new connection (so a reload
/// applies to new connections at once).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionSettings {
    /// Seconds an idle keep-alive connection waits for its next request.
    pub keepalive_idle_secs: u64,
    /// The request head must arrive within this time (slowloris defense).
    pub header_read_timeout: Duration,
    pub max_requests_per_connection: u32,
    /// Connections beyond this are closed as soon as they are accepted.
    pub max_connections: usize,
    /// A write to the client that makes no progress for this long fails,
    /// so a client that stops reading cannot hold its request (and a worker's
    /// slot) forever.
    pub send_timeout: Duration,
}

/// Where a listener reads its current settings.
pub type SettingsSource = Arc<dyn Fn() -> ConnectionSettings + Send + Sync>;

/// Set when a request's head has been read: handed to the application
/// through the connection's user context, which the application takes back
/// once the head is in, so the accept loop knows it arrived in time. It also carries the
/// connection's [`FlushHold`] to the application.
#[derive(Debug)]
pub struct HeadSignal {
    read: AtomicBool,
    hold: Arc<FlushHold>,
}

impl HeadSignal {
    fn new(hold: Arc<FlushHold>) -> HeadSignal {
        HeadSignal {
            read: AtomicBool::new(false),
            hold,
        }
    }

    pub fn mark_read(&self) {
        self.read.store(true, Ordering::Release);
    }

    fn is_read(&self) -> bool {
        self.read.load(Ordering::Acquire)
    }

    /// The connection's flush hold, for the request's answer.
    pub fn flush_hold(&self) -> Arc<FlushHold> {
        Arc::clone(&self.hold)
    }
}

/// Lets an answer's writer send its last piece and the end of the body in
/// one write. Pingora flushes after every chunk it writes and again after
/// the chunked terminator; when the writer knows the end follows at once,
/// it holds the flush of that last chunk, so the terminator's flush sends
/// both: one send per streamed answer fewer, a quarter of a fast stream's.
/// A hold covers the next flush only, and the writer clears it after that
/// write whatever happened; Pingora flushes once more when an answer is
/// done, so no byte of an answer can wait for a later one.
#[derive(Debug, Default)]
pub struct FlushHold(AtomicBool);

impl FlushHold {
    /// The next flush keeps what the stream holds.
    pub fn hold_next(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn clear(&self) {
        self.0.store(false, Ordering::Release);
    }

    fn take(&self) -> bool {
        self.0.swap(false, Ordering::AcqRel)
    }
}

/// A service accepting connections on one pre-bound listener and serving
/// them with `app`.
pub struct Listener<A> {
    name: String,
    socket: Option<std::net::TcpListener>,
    app: Arc<A>,
    threads: usize,
    settings: SettingsSource,
    /// Flips to true when the listener must stop accepting (drain).
    stop: watch::Receiver<bool>,
    open: Arc<AtomicUsize>,
}

impl<A> Listener<A> {
    pub fn new(
        name: impl Into<String>,
        socket: std::net::TcpListener,
        app: Arc<A>,
        threads: usize,
        settings: SettingsSource,
        stop: watch::Receiver<bool>,
    ) -> Listener<A> {
        Listener {
            name: name.into(),
            socket: Some(socket),
            app,
            threads,
            settings,
            stop,
            open: Arc::new(AtomicUsize::new(0)),
        }
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> Service for Listener<A> {
    async fn start_service(
        &mut self,
        _fds: Option<ListenFds>,
        mut shutdown: ShutdownWatch,
        _listeners_per_fd: usize,
    ) {
        let Some(socket) = self.socket.take() else {
            return;
        };
        let listener = match socket
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(socket))
        {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(listener = %self.name, error = %e, "cannot start listener");
                return;
            }
        };
        let mut stop = self.stop.clone();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        let settings = (self.settings)();
                        let open = OpenConnection::new(&self.open);
                        if open.count() > settings.max_connections {
                            // Over the limit: close at once rather than let
                            // the connection hold memory and a descriptor.
                            drop(tcp);
                            rejected_log(&self.name, settings.max_connections);
                            continue;
                        }
                        // The socket is registered with this (the accept
                        // loop's) runtime; it moves to the serving thread's
                        // runtime bare and registers there. Served on another
                        // thread while registered here, every readiness event
                        // would be a cross-thread wake-up: an eventfd write
                        // and a trip through epoll, about one per request in
                        // a profile at 64 connections.
                        let tcp = match tcp.into_std() {
                            Ok(tcp) => tcp,
                            Err(e) => {
                                tracing::warn!(listener = %self.name, error = %e, "accepted connection unusable");
                                continue;
                            }
                        };
                        let app = Arc::clone(&self.app);
                        let shutdown = shutdown.clone();
                        // Spread connections over the service's threads (each
                        // runs its own single-threaded runtime).
                        pingora_runtime::current_handle().spawn(async move {
                            let _open = open;
                            let Ok(tcp) = tokio::net::TcpStream::from_std(tcp) else {
                                return;
                            };
                            serve_connection(app, tcp, peer, shutdown, settings).await;
                        });
                    }
                    Err(e) => {
                        tracing::warn!(listener = %self.name, error = %e, "accept failed");
                        // Out of file descriptors: accept fails at once until
                        // some close; back off instead of spinning.
                        if e.raw_os_error() == Some(24) {
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        }
                    }
                },
                r = stop.changed() => if r.is_err() || *stop.borrow() { break },
                r = shutdown.changed() => if r.is_err() || *shutdown.borrow() { break },
            }
        }
        // Closing the socket makes new connections fail at once, which is how
        // a load balancer learns to send them elsewhere.
        drop(listener);
        // Idle keep-alive connections waiting for a next request close now;
        // requests in flight are not affected.
        self.app.http_cleanup().await;
        tracing::info!(listener = %self.name, "stopped accepting");
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn threads(&self) -> Option<usize> {
        Some(self.threads)
    }
}

/// A client connection whose writes are held until Pingora flushes, so an
/// answer's head and body leave in one segment (one `send` instead of two).
///
/// Pingora's own listeners give accepted streams a small write buffer; its
/// API for that is internal, so the gateway's accept loop wraps the stream
/// instead. Pingora flushes after every streamed chunk, after a complete
/// body and after a head with no body, so nothing waits in the buffer.
#[derive(Debug)]
struct CoalescingStream {
    inner: L4Stream,
    buf: Vec<u8>,
    hold: Arc<FlushHold>,
}

/// Writes above this go straight out instead of being copied.
const COALESCE_LIMIT: usize = 16 * 1024;

/// Room made by the first write after the buffer was released: a typical
/// answer head and body, or a streamed event, fit without growing it. An
/// answer head carrying a key's limits is about 450 bytes and a short chat
/// answer 700, so at 1 KiB most answers grew the buffer once (a reallocation
/// and a copy, 1% of a JSON request's instructions). The buffer is released
/// between a stream's events, so open streams hold none of it.
const COALESCE_FIRST: usize = 4096;

impl CoalescingStream {
    fn new(inner: L4Stream, hold: Arc<FlushHold>) -> CoalescingStream {
        CoalescingStream {
            inner,
            buf: Vec::new(),
            hold,
        }
    }

    /// Write out what is held.
    fn poll_drain(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        while !self.buf.is_empty() {
            match std::pin::Pin::new(&mut self.inner).poll_write(cx, &self.buf) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => {
                    self.buf.drain(..n);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        // Nothing is held between writes: an open stream that waits a second
        // for its next token (ten thousand of them) keeps no buffer. The next
        // answer pays one allocation for it.
        self.buf = Vec::new();
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for CoalescingStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CoalescingStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::task::Poll;
        if self.buf.len() + data.len() > COALESCE_LIMIT {
            match self.poll_drain(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
            if data.len() > COALESCE_LIMIT {
                return std::pin::Pin::new(&mut self.inner).poll_write(cx, data);
            }
        }
        if self.buf.capacity() == 0 {
            self.buf.reserve(data.len().max(COALESCE_FIRST));
        }
        self.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        if self.hold.take() {
            // The end of the answer follows at once and flushes this too.
            return Poll::Ready(Ok(()));
        }
        match self.poll_drain(cx) {
            Poll::Ready(Ok(())) => std::pin::Pin::new(&mut self.inner).poll_flush(cx),
            other => other,
        }
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        match self.poll_drain(cx) {
            Poll::Ready(Ok(())) => std::pin::Pin::new(&mut self.inner).poll_shutdown(cx),
            other => other,
        }
    }
}

#[async_trait]
impl pingora_core::protocols::Shutdown for CoalescingStream {
    async fn shutdown(&mut self) {
        let _ = tokio::io::AsyncWriteExt::flush(self).await;
        pingora_core::protocols::Shutdown::shutdown(&mut self.inner).await;
    }
}

impl pingora_core::protocols::UniqueID for CoalescingStream {
    fn id(&self) -> pingora_core::protocols::UniqueIDType {
        self.inner.id()
    }
}

impl pingora_core::protocols::Ssl for CoalescingStream {}

impl pingora_core::protocols::GetTimingDigest for CoalescingStream {
    fn get_timing_digest(&self) -> Vec<Option<pingora_core::protocols::TimingDigest>> {
        self.inner.get_timing_digest()
    }
}

impl pingora_core::protocols::GetProxyDigest for CoalescingStream {
    fn get_proxy_digest(&self) -> Option<Arc<pingora_core::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for CoalescingStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, socket_digest: SocketDigest) {
        self.inner.set_socket_digest(socket_digest);
    }
}

#[async_trait]
impl pingora_core::protocols::Peek for CoalescingStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

/// Counts a connection as open while it lives.
struct OpenConnection(Arc<AtomicUsize>, usize);

impl OpenConnection {
    fn new(counter: &Arc<AtomicUsize>) -> OpenConnection {
        let n = counter.fetch_add(1, Ordering::AcqRel) + 1;
        OpenConnection(Arc::clone(counter), n)
    }

    fn count(&self) -> usize {
        self.1
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// At most one warning a second about refused connections.
fn rejected_log(listener: &str, limit: usize) {
    static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if LAST.swap(now, Ordering::Relaxed) != now {
        tracing::warn!(
            listener,
            limit,
            "connection limit reached; closing new connections"
        );
    }
}

async fn serve_connection<A: HttpServerApp + Send + Sync + 'static>(
    app: Arc<A>,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    shutdown: ShutdownWatch,
    settings: ConnectionSettings,
) {
    let hold = Arc::new(FlushHold::default());
    let mut stream = client_stream(tcp, peer, Arc::clone(&hold));
    let mut persistent = None;
    // The first head must arrive within the header timeout of the accept;
    // later ones within the idle timeout plus the header timeout.
    let mut allowance = settings.header_read_timeout;
    for served in 0..settings.max_requests_per_connection {
        let head = Arc::new(HeadSignal::new(Arc::clone(&hold)));
        let serving = serve_request(
            &app,
            stream,
            persistent.take(),
            &settings,
            served,
            &head,
            &shutdown,
        );
        let deadline = std::time::Instant::now() + allowance;
        let reused = tokio::select! {
            r = serving => r,
            () = head_overdue(&head, deadline) => {
                // The head did not arrive in time: dropping the session
                // closes the connection.
                return;
            }
        };
        let Some(r) = reused else { return };
        let (next, p) = r.consume();
        stream = next;
        persistent = p;
        allowance =
            Duration::from_secs(settings.keepalive_idle_secs) + settings.header_read_timeout;
    }
}

/// An accepted connection as Pingora serves it.
fn client_stream(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    hold: Arc<FlushHold>,
) -> pingora_core::protocols::Stream {
    let mut stream: L4Stream = tcp.into();
    // SSE events are small writes that must leave at once.
    let _ = stream.set_nodelay();
    let digest = SocketDigest::from_raw_fd(std::os::fd::AsRawFd::as_raw_fd(&stream));
    let _ = digest.peer_addr.set(Some(peer.into()));
    stream.set_socket_digest(digest);
    Box::new(CoalescingStream::new(stream, hold))
}

/// The next request's session on `stream`, set up, and the future that
/// serves it. A plain function: the session (about 700 bytes) then lives
/// only in Pingora's boxed future, not also in the connection's task for as
/// long as the connection is open (a long stream, ten thousand at once).
fn serve_request<'a, A: HttpServerApp + Send + Sync + 'static>(
    app: &'a Arc<A>,
    stream: pingora_core::protocols::Stream,
    persistent: Option<HttpPersistentSettings>,
    settings: &ConnectionSettings,
    served: u32,
    head: &Arc<HeadSignal>,
    shutdown: &'a ShutdownWatch,
) -> Pin<Box<dyn Future<Output = Option<ReusedHttpStream>> + Send + 'a>> {
    let mut session = ServerSession::new_http1(stream);
    if let Some(p) = persistent {
        HttpPersistentSettings::apply_to_session(p, &mut session);
    }
    session.set_keepalive(Some(settings.keepalive_idle_secs));
    // How many more requests this connection may serve after this one.
    // Pingora re-derives keep-alive from the client's head after reading
    // it (an HTTP/1.1 request turns it on), but it honours this count:
    // at 0 the answer says `Connection: close` and the connection closes,
    // so a client never sends a request into a closing connection.
    session.set_keepalive_reuses_remaining(Some(settings.max_requests_per_connection - served - 1));
    // Pipelined requests (sent before the previous answer was read,
    // RFC 9112 §9.3.2) are served in order. Without this, Pingora reads
    // a request that arrives while the previous one is being served as
    // "data after the end of the body": the first request is abandoned
    // unanswered and a byte of the second is lost.
    session.set_pipelining_enabled(true);
    session.set_write_timeout(Some(settings.send_timeout));
    session.set_connection_user_context(Some(Box::new(Arc::clone(head))));
    app.process_new_http(session, shutdown)
}

/// Resolves when `deadline` passes before the request head was read; never
/// once it was. The connection's task polls this on every wake-up (every
/// chunk of a stream), so once the head is in, the timer is not polled again.
async fn head_overdue(head: &HeadSignal, deadline: std::time::Instant) {
    let mut timer = std::pin::pin!(crate::deadline::sleep_until(deadline));
    std::future::poll_fn(|cx| {
        if head.is_read() {
            return std::task::Poll::Pending;
        }
        timer.as_mut().poll(cx)
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_port_zero_and_reports_it() {
        let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_ne!(l.local_addr().unwrap().port(), 0);
    }

    #[test]
    fn busy_port_is_an_error() {
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        // SO_REUSEADDR does not let a second socket listen on a port that
        // has an active listener.
        assert!(bind(a.local_addr().unwrap()).is_err());
    }
}
