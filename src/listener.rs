//! The accept loop of a listener, as a Pingora service.
//!
//! Pingora's own listening service binds its address itself and stops
//! accepting only when the whole server shuts down. The gateway runs its own
//! accept loop over a socket bound *before* the server starts, handing every
//! connection to Pingora's HTTP application (the documented use of
//! `pingora_proxy::http_proxy`), because:
//! - a bad or busy address fails start-up with a clear error naming the key,
//!   instead of a panic inside Pingora's service start;
//! - `listen = "127.0.0.1:0"` works, and the bound port is known, so tests run
//!   real gateways on ephemeral ports;
//! - on SIGTERM the gateway stops accepting at once but lets requests in flight
//!   finish, and exits as soon as they have (Pingora's graceful shutdown
//!   always sleeps its whole grace period: pingora.md §9).

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::apps::HttpServerApp;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::GetSocketDigest;
use pingora_core::protocols::SocketDigest;
use pingora_core::server::{ListenFds, ShutdownWatch};
use pingora_core::services::Service;
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

/// Per-connection settings.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionSettings {
    /// Seconds an idle keep-alive connection waits for its next request.
    pub keepalive_idle_secs: u64,
}

/// A service accepting connections on one pre-bound listener and serving
/// them with `app`.
pub struct Listener<A> {
    name: String,
    socket: Option<std::net::TcpListener>,
    app: Arc<A>,
    threads: usize,
    settings: ConnectionSettings,
    /// Flips to true when the listener must stop accepting (drain).
    stop: watch::Receiver<bool>,
}

impl<A> Listener<A> {
    pub fn new(
        name: impl Into<String>,
        socket: std::net::TcpListener,
        app: Arc<A>,
        threads: usize,
        settings: ConnectionSettings,
        stop: watch::Receiver<bool>,
    ) -> Listener<A> {
        Listener {
            name: name.into(),
            socket: Some(socket),
            app,
            threads,
            settings,
            stop,
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
                        let app = Arc::clone(&self.app);
                        let shutdown = shutdown.clone();
                        let settings = self.settings;
                        tokio::spawn(serve_connection(app, tcp, peer, shutdown, settings));
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

async fn serve_connection<A: HttpServerApp + Send + Sync + 'static>(
    app: Arc<A>,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    shutdown: ShutdownWatch,
    settings: ConnectionSettings,
) {
    let mut stream: L4Stream = tcp.into();
    // SSE events are small writes that must leave at once.
    let _ = stream.set_nodelay();
    let digest = SocketDigest::from_raw_fd(std::os::fd::AsRawFd::as_raw_fd(&stream));
    let _ = digest.peer_addr.set(Some(peer.into()));
    stream.set_socket_digest(digest);

    let mut session = ServerSession::new_http1(Box::new(stream));
    session.set_keepalive(Some(settings.keepalive_idle_secs));
    let mut reused = app.process_new_http(session, &shutdown).await;
    while let Some((stream, persistent)) = reused.map(|r| r.consume()) {
        let mut session = ServerSession::new_http1(stream);
        if let Some(p) = persistent {
            p.apply_to_session(&mut session);
        }
        reused = app.process_new_http(session, &shutdown).await;
    }
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
