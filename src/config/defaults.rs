//! Every default of `config.toml` lives here, so the operator's reference
//! (`config/gateway.toml`) and the code cannot drift apart: a test reads that
//! file and checks each documented default against these constants.

use std::time::Duration;

pub const LISTEN: &str = "0.0.0.0:8080";
pub const ADMIN_LISTEN: &str = "127.0.0.1:9090";
/// 0 = one worker thread per CPU core.
pub const THREADS: usize = 0;
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// A request body must arrive whole within this time (slow-client defense).
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Pooled upstream connections are dropped after this idle time. It must stay
/// below vLLM's (uvicorn's) 5 s keep-alive, or a POST can be written to a
/// connection the worker already closed (../shared/reference/pingora.md §6).
pub const UPSTREAM_KEEPALIVE_IDLE: Duration = Duration::from_secs(4);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const FIRST_TOKEN_TIMEOUT: Duration = Duration::from_secs(60);
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(600);
