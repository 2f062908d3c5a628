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
/// Deepest JSON nesting accepted in a request body. Real chat requests nest a
/// handful of levels (JSON schemas in tools a few more); deep nesting only
/// costs stack and time.
pub const MAX_JSON_DEPTH: usize = 64;
/// Longest single JSON string in a request body (a base64 image is the usual
/// large one); bounded anyway by `max_body_bytes`.
pub const MAX_STRING_BYTES: usize = 4 * 1024 * 1024;
/// A request head (request line and headers) must arrive whole within this
/// time of the connection opening (or of the previous answer): slowloris
/// clients trickling a header byte by byte are cut off.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// An idle keep-alive connection waiting for its next request is closed
/// after this.
pub const KEEPALIVE_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Requests served on one connection before it is closed (as nginx's
/// keepalive_requests: bounds per-connection state).
pub const MAX_REQUESTS_PER_CONNECTION: u32 = 1000;
/// Concurrent client connections; more are accepted and closed at once.
pub const MAX_CONNECTIONS: usize = 16384;
/// A write to a client that makes no progress for this long fails (nginx's
/// send_timeout): a client that stops reading cannot hold a request forever.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest request head, counting every header name and value (431 beyond).
pub const MAX_HEADER_BYTES: usize = 32 * 1024;
/// Most request headers (431 beyond).
pub const MAX_HEADERS: usize = 100;

/// Pooled upstream connections are dropped after this idle time. It must stay
/// below vLLM's (uvicorn's) 5 s keep-alive, or a POST can be written to a
/// connection the worker already closed (../shared/reference/pingora.md §6).
pub const UPSTREAM_KEEPALIVE_IDLE: Duration = Duration::from_secs(4);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const FIRST_TOKEN_TIMEOUT: Duration = Duration::from_secs(60);
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

// Pools (issue: routing, health, retries, discovery).
pub const AFFINITY_MAX_IMBALANCE: f64 = 1.25;
/// Bytes of the leading prompt (system prompt and first messages) hashed for
/// prefix affinity: enough to tell tenants' system prompts apart, small enough
/// that the conversation's tail does not change the key.
pub const AFFINITY_PREFIX_BYTES: usize = 4096;
pub const LOAD_POLL_INTERVAL: Duration = Duration::from_secs(1);
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
pub const UNHEALTHY_AFTER: u32 = 2;
pub const HEALTHY_AFTER: u32 = 2;
pub const MAX_RETRIES: u32 = 2;
/// Largest answer accepted from a worker. Chat answers are kilobytes; a big
/// embeddings batch is megabytes; anything beyond this is a broken worker.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
pub const FAILURES_TO_EJECT: u32 = 3;
pub const EJECTION_BASE: Duration = Duration::from_secs(5);
pub const EJECTION_MAX: Duration = Duration::from_secs(120);
pub const DNS_INTERVAL: Duration = Duration::from_secs(10);

// Keys and rate limits.
/// A Redis decision that takes longer than this counts as a store failure
/// (the request then follows `on_store_error`): limits must never become the
/// slowest part of a request.
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(50);
pub const REDIS_KEY_PREFIX: &str = "vllm-gateway:rl";
