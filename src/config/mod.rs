//! The validated runtime configuration.
//!
//! Loading is two steps, as in TensorZero's gateway: `raw` is the serde file
//! format (`deny_unknown_fields`), and [`Config::from_raw`] resolves defaults
//! from [`defaults`] and checks every value. Every problem is reported with
//! the key path an operator can find in the file (`models[1].workers[0]`), and
//! all problems are reported at once, like `nginx -t`.

pub mod defaults;
pub mod raw;
pub mod reload;

use std::collections::HashSet;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::ratelimit::{OnStoreError, Quotas};
use crate::request::{JsonLimits, LimitPolicy, ValidationPolicy};
pub use raw::{Discovery, LimitStore, Routing, StreamHead};
use raw::{RawApiKey, RawConfig, RawModel, RawRateLimit, RawServer};

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Key path, e.g. `models[1].workers[0]`; empty for file-level problems.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

/// Why a configuration could not be loaded. Display prints one problem per line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", render_issues(.0))]
    Invalid(Vec<ConfigIssue>),
}

fn render_issues(issues: &[ConfigIssue]) -> String {
    issues
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl ConfigError {
    /// The individual problems (a read failure is one problem with no key).
    pub fn issues(&self) -> Vec<ConfigIssue> {
        match self {
            ConfigError::Read { .. } => vec![ConfigIssue {
                key: String::new(),
                message: self.to_string(),
            }],
            ConfigError::Invalid(issues) => issues.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub models: Vec<ModelConfig>,
    pub api_keys: Vec<KeyConfig>,
    pub rate_limit: RateLimitConfig,
    /// Things that work but deserve the operator's attention (printed at
    /// start-up and by `check-config`).
    pub warnings: Vec<ConfigIssue>,
}

/// One API key, as the gateway keeps it: its SHA-256 digest, never the key.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyConfig {
    /// The only name logs and metrics use.
    pub name: String,
    pub digest: [u8; 32],
    pub quotas: Quotas,
    /// Models the key may use; None = all.
    pub models: Option<Vec<String>>,
}

impl fmt::Debug for KeyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the digest: it identifies the key.
        f.debug_struct("KeyConfig")
            .field("name", &self.name)
            .field("quotas", &self.quotas)
            .field("models", &self.models)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitConfig {
    pub store: LimitStore,
    pub redis_url: Option<String>,
    pub redis_timeout: Duration,
    pub redis_key_prefix: String,
    pub on_store_error: OnStoreError,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// Worker threads of the public listener's runtime (resolved: never 0).
    pub threads: usize,
    pub max_body_bytes: usize,
    pub shutdown_grace: Duration,
    pub body_read_timeout: Duration,
    /// Nesting and string bounds for request bodies.
    pub json: JsonLimits,
    pub header_read_timeout: Duration,
    pub keepalive_idle_timeout: Duration,
    pub send_timeout: Duration,
    pub max_requests_per_connection: u32,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub name: String,
    /// Static workers (empty when discovered through DNS).
    pub workers: Vec<WorkerSpec>,
    pub timeouts: UpstreamTimeouts,
    pub pool: PoolPolicy,
    pub health: HealthPolicy,
    pub discovery: DiscoverySource,
    /// Output-token limits; `max_model_len` here is only the configured
    /// override (workers report theirs through `/v1/models`).
    pub limits: LimitPolicy,
    pub validation: ValidationPolicy,
}

/// How the pool routes and retries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PoolPolicy {
    pub routing: Routing,
    pub affinity_max_imbalance: f64,
    pub affinity_prefix_bytes: usize,
    /// Skip a worker whose own queue (`vllm:num_requests_waiting`) is this
    /// deep while others have room.
    pub max_waiting: Option<u32>,
    pub max_retries: u32,
    pub breaker: BreakerPolicy,
    /// Largest answer accepted from a worker (JSON or stream).
    pub max_response_bytes: usize,
    pub stream_head: StreamHead,
}

/// Circuit breaker over request outcomes (passive health).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerPolicy {
    /// Consecutive request failures (connect errors, resets, timeouts, 5xx)
    /// that eject a worker.
    pub failures_to_eject: u32,
    /// First ejection; each further ejection doubles it.
    pub base_ejection: Duration,
    pub max_ejection: Duration,
}

/// Active checks and load polling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthPolicy {
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_after: u32,
    pub healthy_after: u32,
    pub load_poll_interval: Duration,
}

/// Where a pool's workers come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoverySource {
    Static,
    /// Re-resolve `name` every `interval`; every address is a worker on `port`.
    Dns {
        name: String,
        port: u16,
        interval: Duration,
    },
}

/// One vLLM worker as configured: its normalized URL (the identity used in
/// metrics and logs) and the address it resolved to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WorkerSpec {
    pub url: String,
    pub addr: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamTimeouts {
    pub connect: Duration,
    /// Streaming: until the response head and the first event. Non-streaming
    /// answers have no head before generation ends, so `request` bounds them.
    pub first_token: Duration,
    /// Longest silence between two reads of the answer body (SSE events).
    pub idle: Duration,
    /// The whole exchange with the worker.
    pub request: Duration,
    /// How long a pooled upstream connection may idle before it is dropped.
    pub keepalive_idle: Duration,
}

impl Default for UpstreamTimeouts {
    fn default() -> Self {
        UpstreamTimeouts {
            connect: defaults::CONNECT_TIMEOUT,
            first_token: defaults::FIRST_TOKEN_TIMEOUT,
            idle: defaults::IDLE_TIMEOUT,
            request: defaults::REQUEST_TIMEOUT,
            keepalive_idle: defaults::UPSTREAM_KEEPALIVE_IDLE,
        }
    }
}

impl Config {
    /// Read, parse and validate a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text)
    }

    /// Parse and validate configuration text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            ConfigError::Invalid(vec![ConfigIssue {
                key: String::new(),
                message: e.to_string().trim_end().to_string(),
            }])
        })?;
        Config::from_raw(raw)
    }

    /// Resolve defaults and check every value of a parsed file.
    pub fn from_raw(raw: RawConfig) -> Result<Config, ConfigError> {
        let mut issues = Issues::default();
        let server = server_from_raw(raw.server, &mut issues);
        let mut names = HashSet::new();
        let mut models = Vec::with_capacity(raw.models.len());
        if raw.models.is_empty() {
            issues.push("models", "at least one [[models]] table is required");
        }
        for (i, m) in raw.models.into_iter().enumerate() {
            let key = format!("models[{i}]");
            if let Some(model) = model_from_raw(&key, m, &mut issues) {
                if !names.insert(model.name.clone()) {
                    issues.push(
                        format!("{key}.name"),
                        format!("duplicate model name {:?}", model.name),
                    );
                }
                models.push(model);
            }
        }
        let mut warnings = Vec::new();
        let api_keys = keys_from_raw(raw.api_keys, &models, &mut issues, &mut warnings);
        let rate_limit = rate_limit_from_raw(raw.rate_limit, &mut issues);
        match (server, issues.0.is_empty()) {
            (Some(server), true) => Ok(Config {
                server,
                models,
                api_keys,
                rate_limit,
                warnings,
            }),
            _ => Err(ConfigError::Invalid(issues.0)),
        }
    }

    pub fn model(&self, name: &str) -> Option<&ModelConfig> {
        self.models.iter().find(|m| m.name == name)
    }
}

#[derive(Default)]
struct Issues(Vec<ConfigIssue>);

impl Issues {
    fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigIssue {
            key: key.into(),
            message: message.into(),
        });
    }
}

fn server_from_raw(raw: RawServer, issues: &mut Issues) -> Option<ServerConfig> {
    let listen = socket_addr(
        "server.listen",
        raw.listen.as_deref().unwrap_or(defaults::LISTEN),
        issues,
    );
    let admin_listen = socket_addr(
        "server.admin_listen",
        raw.admin_listen
            .as_deref()
            .unwrap_or(defaults::ADMIN_LISTEN),
        issues,
    );
    if let (Some(l), Some(a)) = (listen, admin_listen) {
        // Port 0 asks the OS for a free port, so two zeros never collide.
        if l == a && l.port() != 0 {
            issues.push(
                "server.admin_listen",
                "must differ from server.listen: /metrics never shares the public listener",
            );
        }
    }
    let threads = match raw.threads.unwrap_or(defaults::THREADS) {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n if n > 1024 => {
            issues.push("server.threads", "must be at most 1024");
            1
        }
        n => n,
    };
    let max_body_bytes = raw.max_body_bytes.unwrap_or(defaults::MAX_BODY_BYTES);
    if max_body_bytes == 0 {
        issues.push("server.max_body_bytes", "must be greater than 0");
    }
    let shutdown_grace = duration(
        "server.shutdown_grace",
        raw.shutdown_grace.as_deref(),
        defaults::SHUTDOWN_GRACE,
        issues,
    );
    let body_read_timeout = duration(
        "server.body_read_timeout",
        raw.body_read_timeout.as_deref(),
        defaults::BODY_READ_TIMEOUT,
        issues,
    );
    let json = JsonLimits {
        max_depth: match raw.max_json_depth.unwrap_or(defaults::MAX_JSON_DEPTH) {
            0 => {
                issues.push("server.max_json_depth", "must be at least 1");
                defaults::MAX_JSON_DEPTH
            }
            d if d > 1024 => {
                issues.push("server.max_json_depth", "must be at most 1024");
                defaults::MAX_JSON_DEPTH
            }
            d => d,
        },
        max_string_bytes: match raw.max_string_bytes.unwrap_or(defaults::MAX_STRING_BYTES) {
            0 => {
                issues.push("server.max_string_bytes", "must be greater than 0");
                defaults::MAX_STRING_BYTES
            }
            n => n,
        },
    };
    let header_read_timeout = duration(
        "server.header_read_timeout",
        raw.header_read_timeout.as_deref(),
        defaults::HEADER_READ_TIMEOUT,
        issues,
    );
    let keepalive_idle_timeout = duration(
        "server.keepalive_idle_timeout",
        raw.keepalive_idle_timeout.as_deref(),
        defaults::KEEPALIVE_IDLE_TIMEOUT,
        issues,
    );
    let send_timeout = duration(
        "server.send_timeout",
        raw.send_timeout.as_deref(),
        defaults::SEND_TIMEOUT,
        issues,
    );
    let mut at_least_one = |key: &str, v: Option<usize>, default: usize| match v {
        Some(0) => {
            issues.push(key, "must be at least 1");
            default
        }
        Some(n) => n,
        None => default,
    };
    let max_requests_per_connection = at_least_one(
        "server.max_requests_per_connection",
        raw.max_requests_per_connection.map(|n| n as usize),
        defaults::MAX_REQUESTS_PER_CONNECTION as usize,
    ) as u32;
    let max_connections = at_least_one(
        "server.max_connections",
        raw.max_connections,
        defaults::MAX_CONNECTIONS,
    );
    let max_header_bytes = at_least_one(
        "server.max_header_bytes",
        raw.max_header_bytes,
        defaults::MAX_HEADER_BYTES,
    );
    let max_headers = at_least_one("server.max_headers", raw.max_headers, defaults::MAX_HEADERS);
    Some(ServerConfig {
        listen: listen?,
        admin_listen: admin_listen?,
        threads,
        max_body_bytes,
        shutdown_grace,
        body_read_timeout,
        json,
        header_read_timeout,
        keepalive_idle_timeout,
        send_timeout,
        max_requests_per_connection,
        max_connections,
        max_header_bytes,
        max_headers,
    })
}

fn model_from_raw(key: &str, raw: RawModel, issues: &mut Issues) -> Option<ModelConfig> {
    let discovery = discovery_from_raw(key, &raw, issues);
    let name = match raw.name.clone() {
        Some(n) if !n.trim().is_empty() => Some(n),
        Some(_) => {
            issues.push(format!("{key}.name"), "must not be empty");
            None
        }
        None => {
            issues.push(format!("{key}.name"), "is required");
            None
        }
    };
    if raw.workers.is_empty() && discovery == DiscoverySource::Static {
        issues.push(
            format!("{key}.workers"),
            "at least one worker URL is required",
        );
    }
    if !raw.workers.is_empty() && discovery != DiscoverySource::Static {
        issues.push(
            format!("{key}.workers"),
            "must be empty with discovery = \"dns\" (workers come from dns_name)",
        );
    }
    let mut workers = Vec::with_capacity(raw.workers.len());
    let mut seen = HashSet::new();
    for (j, url) in raw.workers.iter().enumerate() {
        let wkey = format!("{key}.workers[{j}]");
        if let Some(spec) = worker_spec(&wkey, url, issues) {
            if !seen.insert(spec.url.clone()) {
                issues.push(wkey, format!("duplicate worker {}", spec.url));
                continue;
            }
            workers.push(spec);
        }
    }
    let d = UpstreamTimeouts::default();
    let timeouts = UpstreamTimeouts {
        connect: duration(
            &format!("{key}.connect_timeout"),
            raw.connect_timeout.as_deref(),
            d.connect,
            issues,
        ),
        first_token: duration(
            &format!("{key}.first_token_timeout"),
            raw.first_token_timeout.as_deref(),
            d.first_token,
            issues,
        ),
        idle: duration(
            &format!("{key}.idle_timeout"),
            raw.idle_timeout.as_deref(),
            d.idle,
            issues,
        ),
        request: duration(
            &format!("{key}.request_timeout"),
            raw.request_timeout.as_deref(),
            d.request,
            issues,
        ),
        keepalive_idle: duration(
            &format!("{key}.upstream_keepalive_idle"),
            raw.upstream_keepalive_idle.as_deref(),
            d.keepalive_idle,
            issues,
        ),
    };
    let pool = PoolPolicy {
        routing: raw.routing.unwrap_or_default(),
        affinity_max_imbalance: match raw.affinity_max_imbalance {
            None => defaults::AFFINITY_MAX_IMBALANCE,
            Some(x) if x.is_finite() && x >= 1.0 => x,
            Some(_) => {
                issues.push(
                    format!("{key}.affinity_max_imbalance"),
                    "must be a number >= 1.0 (1.25 lets a worker carry 25% more than the average)",
                );
                defaults::AFFINITY_MAX_IMBALANCE
            }
        },
        affinity_prefix_bytes: match raw.affinity_prefix_bytes {
            None => defaults::AFFINITY_PREFIX_BYTES,
            Some(0) => {
                issues.push(
                    format!("{key}.affinity_prefix_bytes"),
                    "must be greater than 0",
                );
                defaults::AFFINITY_PREFIX_BYTES
            }
            Some(n) => n,
        },
        max_waiting: raw.max_waiting,
        max_retries: raw.max_retries.unwrap_or(defaults::MAX_RETRIES),
        stream_head: raw.stream_head.unwrap_or_default(),
        max_response_bytes: match raw.max_response_bytes {
            Some(0) => {
                issues.push(
                    format!("{key}.max_response_bytes"),
                    "must be greater than 0",
                );
                defaults::MAX_RESPONSE_BYTES
            }
            Some(n) => n,
            None => defaults::MAX_RESPONSE_BYTES,
        },
        breaker: BreakerPolicy {
            failures_to_eject: positive(
                &format!("{key}.failures_to_eject"),
                raw.failures_to_eject,
                defaults::FAILURES_TO_EJECT,
                issues,
            ),
            base_ejection: duration(
                &format!("{key}.ejection_base"),
                raw.ejection_base.as_deref(),
                defaults::EJECTION_BASE,
                issues,
            ),
            max_ejection: duration(
                &format!("{key}.ejection_max"),
                raw.ejection_max.as_deref(),
                defaults::EJECTION_MAX,
                issues,
            ),
        },
    };
    if pool.breaker.max_ejection < pool.breaker.base_ejection {
        issues.push(
            format!("{key}.ejection_max"),
            "must not be shorter than ejection_base",
        );
    }
    let health = HealthPolicy {
        interval: duration(
            &format!("{key}.health_interval"),
            raw.health_interval.as_deref(),
            defaults::HEALTH_INTERVAL,
            issues,
        ),
        timeout: duration(
            &format!("{key}.health_timeout"),
            raw.health_timeout.as_deref(),
            defaults::HEALTH_TIMEOUT,
            issues,
        ),
        unhealthy_after: positive(
            &format!("{key}.unhealthy_after"),
            raw.unhealthy_after,
            defaults::UNHEALTHY_AFTER,
            issues,
        ),
        healthy_after: positive(
            &format!("{key}.healthy_after"),
            raw.healthy_after,
            defaults::HEALTHY_AFTER,
            issues,
        ),
        load_poll_interval: duration(
            &format!("{key}.load_poll_interval"),
            raw.load_poll_interval.as_deref(),
            defaults::LOAD_POLL_INTERVAL,
            issues,
        ),
    };
    for (field, value) in [
        ("default_max_tokens", raw.default_max_tokens),
        ("max_tokens_cap", raw.max_tokens_cap),
        ("max_model_len", raw.max_model_len),
    ] {
        if value == Some(0) {
            issues.push(format!("{key}.{field}"), "must be at least 1");
        }
    }
    if let (Some(d), Some(c)) = (raw.default_max_tokens, raw.max_tokens_cap) {
        if d > c {
            issues.push(
                format!("{key}.default_max_tokens"),
                format!("is above max_tokens_cap ({c})"),
            );
        }
    }
    let limits = LimitPolicy {
        default_max_tokens: raw.default_max_tokens,
        max_tokens_cap: raw.max_tokens_cap,
        on_exceed: raw.on_exceed.unwrap_or_default(),
        limit_field: raw.limit_field.unwrap_or_default(),
        max_model_len: raw.max_model_len,
    };
    let mut validation = raw.validation.unwrap_or_default();
    validation.prefix_window_bytes = pool.affinity_prefix_bytes;
    if validation.max_messages == 0 {
        issues.push(
            format!("{key}.validation.max_messages"),
            "must be at least 1",
        );
    }
    Some(ModelConfig {
        name: name?,
        workers,
        timeouts,
        pool,
        health,
        discovery,
        limits,
        validation,
    })
}

fn keys_from_raw(
    raw: Vec<RawApiKey>,
    models: &[ModelConfig],
    issues: &mut Issues,
    warnings: &mut Vec<ConfigIssue>,
) -> Vec<KeyConfig> {
    let mut out = Vec::with_capacity(raw.len());
    let mut names = HashSet::new();
    let mut digests = HashSet::new();
    for (i, k) in raw.into_iter().enumerate() {
        let key = format!("api_keys[{i}]");
        let name = match k.name.as_deref() {
            Some(n)
                if !n.is_empty()
                    && n.len() <= 64
                    && n.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) =>
            {
                n.to_string()
            }
            Some(_) => {
                // The name becomes a metric label and a log field.
                issues.push(
                    format!("{key}.name"),
                    "must be 1-64 characters of A-Z a-z 0-9 - _ .",
                );
                continue;
            }
            None => {
                issues.push(
                    format!("{key}.name"),
                    "is required (it is what logs and metrics show instead of the key)",
                );
                continue;
            }
        };
        if !names.insert(name.clone()) {
            issues.push(
                format!("{key}.name"),
                format!("duplicate key name {name:?}"),
            );
        }
        let sources = [k.key_sha256.is_some(), k.key_env.is_some(), k.key.is_some()];
        match sources.iter().filter(|s| **s).count() {
            1 => {}
            0 => {
                issues.push(key.clone(), "needs one of key_sha256, key_env or key");
                continue;
            }
            _ => {
                issues.push(key.clone(), "set only one of key_sha256, key_env or key");
                continue;
            }
        }
        let digest = if let Some(hexed) = &k.key_sha256 {
            match hex::decode(hexed.trim()) {
                Ok(bytes) if bytes.len() == 32 => {
                    let mut d = [0u8; 32];
                    d.copy_from_slice(&bytes);
                    d
                }
                _ => {
                    issues.push(
                        format!("{key}.key_sha256"),
                        "must be 64 hex digits (sha256sum of the key)",
                    );
                    continue;
                }
            }
        } else if let Some(var) = &k.key_env {
            match std::env::var(var) {
                Ok(v) if !v.trim().is_empty() => crate::auth::digest(v.trim().as_bytes()),
                _ => {
                    issues.push(
                        format!("{key}.key_env"),
                        format!("environment variable {var} is not set"),
                    );
                    continue;
                }
            }
        } else if let Some(plain) = &k.key {
            if plain.trim().is_empty() {
                issues.push(format!("{key}.key"), "must not be empty");
                continue;
            }
            warnings.push(ConfigIssue {
                key: format!("{key}.key"),
                message: "a plain key in the configuration file; prefer key_sha256 or key_env"
                    .into(),
            });
            crate::auth::digest(plain.trim().as_bytes())
        } else {
            continue;
        };
        if !digests.insert(digest) {
            issues.push(key.clone(), "the same key is configured twice");
        }
        for (field, v) in [
            ("requests_per_minute", k.requests_per_minute.map(u64::from)),
            ("tokens_per_minute", k.tokens_per_minute),
        ] {
            if v == Some(0) {
                issues.push(
                    format!("{key}.{field}"),
                    "must be at least 1 (leave it out for no limit)",
                );
            }
        }
        if let Some(list) = &k.models {
            for (j, m) in list.iter().enumerate() {
                if !models.iter().any(|c| &c.name == m) {
                    issues.push(
                        format!("{key}.models[{j}]"),
                        format!("no [[models]] is named {m:?}"),
                    );
                }
            }
        }
        out.push(KeyConfig {
            name,
            digest,
            quotas: Quotas {
                requests_per_minute: k.requests_per_minute.filter(|v| *v > 0),
                tokens_per_minute: k.tokens_per_minute.filter(|v| *v > 0),
            },
            models: k.models,
        });
    }
    out
}

fn rate_limit_from_raw(raw: RawRateLimit, issues: &mut Issues) -> RateLimitConfig {
    let store = raw.store.unwrap_or_default();
    let redis_url = match (store, raw.redis_url) {
        (LimitStore::Redis, Some(url)) => {
            if url.starts_with("redis://")
                || url.starts_with("unix://")
                || url.starts_with("redis+unix://")
            {
                Some(url)
            } else {
                issues.push(
                    "rate_limit.redis_url",
                    "must start with redis:// (or unix:// for a socket)",
                );
                None
            }
        }
        (LimitStore::Redis, None) => {
            issues.push("rate_limit.redis_url", "is required with store = \"redis\"");
            None
        }
        (LimitStore::Memory, Some(_)) => {
            issues.push(
                "rate_limit.redis_url",
                "only applies with store = \"redis\"",
            );
            None
        }
        (LimitStore::Memory, None) => None,
    };
    RateLimitConfig {
        store,
        redis_url,
        redis_timeout: duration(
            "rate_limit.redis_timeout",
            raw.redis_timeout.as_deref(),
            defaults::REDIS_TIMEOUT,
            issues,
        ),
        redis_key_prefix: raw
            .redis_key_prefix
            .unwrap_or_else(|| defaults::REDIS_KEY_PREFIX.to_string()),
        on_store_error: raw.on_store_error.unwrap_or_default(),
    }
}

fn discovery_from_raw(key: &str, raw: &RawModel, issues: &mut Issues) -> DiscoverySource {
    match raw.discovery.unwrap_or_default() {
        Discovery::Static => {
            for (field, set) in [
                ("dns_name", raw.dns_name.is_some()),
                ("port", raw.port.is_some()),
                ("dns_interval", raw.dns_interval.is_some()),
            ] {
                if set {
                    issues.push(
                        format!("{key}.{field}"),
                        "only applies with discovery = \"dns\"",
                    );
                }
            }
            DiscoverySource::Static
        }
        Discovery::Dns => {
            let name = match raw.dns_name.as_deref().map(str::trim) {
                Some(n) if !n.is_empty() => n.to_string(),
                _ => {
                    issues.push(
                        format!("{key}.dns_name"),
                        "is required with discovery = \"dns\" (e.g. \"vllm.ns.svc.cluster.local\")",
                    );
                    String::new()
                }
            };
            let port = match raw.port {
                Some(p) if p != 0 => p,
                _ => {
                    issues.push(
                        format!("{key}.port"),
                        "is required with discovery = \"dns\"",
                    );
                    0
                }
            };
            let interval = duration(
                &format!("{key}.dns_interval"),
                raw.dns_interval.as_deref(),
                defaults::DNS_INTERVAL,
                issues,
            );
            DiscoverySource::Dns {
                name,
                port,
                interval,
            }
        }
    }
}

fn positive(key: &str, value: Option<u32>, default: u32, issues: &mut Issues) -> u32 {
    match value {
        None => default,
        Some(0) => {
            issues.push(key, "must be at least 1");
            default
        }
        Some(n) => n,
    }
}

/// Parse a worker URL (`http://host:port`) and resolve its host. Only plain
/// HTTP: the gateway is built without a TLS feature (pingora.md §1), and vLLM
/// workers sit on a private network.
pub fn worker_spec(key: &str, url: &str, issues: &mut impl IssueSink) -> Option<WorkerSpec> {
    let uri: http::Uri = match url.parse() {
        Ok(u) => u,
        Err(_) => {
            issues.issue(key, format!("not a URL: {url:?}"));
            return None;
        }
    };
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            issues.issue(
                key,
                "https workers are not supported (the gateway speaks plain HTTP to its workers)",
            );
            return None;
        }
        _ => {
            issues.issue(
                key,
                format!("not a URL: {url:?} (expected http://host:port)"),
            );
            return None;
        }
    }
    let Some(host) = uri.host() else {
        issues.issue(key, format!("not a URL: {url:?} (no host)"));
        return None;
    };
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        issues.issue(
            key,
            "must not have a path: vLLM serves /v1 at the root of its address",
        );
        return None;
    }
    let port = uri.port_u16().unwrap_or(80);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addr = match (host, port).to_socket_addrs() {
        Ok(mut addrs) => addrs.next(),
        Err(e) => {
            issues.issue(key, format!("cannot resolve {host:?}: {e}"));
            return None;
        }
    };
    let Some(addr) = addr else {
        issues.issue(key, format!("{host:?} resolved to no address"));
        return None;
    };
    let display_host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    Some(WorkerSpec {
        url: format!("http://{display_host}:{port}"),
        addr,
    })
}

/// Where validation helpers report problems (lets discovery reuse them).
pub trait IssueSink {
    fn issue(&mut self, key: &str, message: impl Into<String>);
}

impl IssueSink for Issues {
    fn issue(&mut self, key: &str, message: impl Into<String>) {
        self.push(key, message);
    }
}

impl IssueSink for Vec<ConfigIssue> {
    fn issue(&mut self, key: &str, message: impl Into<String>) {
        self.push(ConfigIssue {
            key: key.to_string(),
            message: message.into(),
        });
    }
}

fn socket_addr(key: &str, value: &str, issues: &mut Issues) -> Option<SocketAddr> {
    if let Ok(a) = value.parse::<SocketAddr>() {
        return Some(a);
    }
    match value.to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(a)) => Some(a),
        _ => {
            issues.push(
                key,
                format!("not a socket address: {value:?} (expected host:port)"),
            );
            None
        }
    }
}

fn duration(key: &str, value: Option<&str>, default: Duration, issues: &mut Issues) -> Duration {
    let Some(text) = value else {
        return default;
    };
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => {
            issues.push(key, "must be greater than 0");
            default
        }
        Ok(d) => d,
        Err(e) => {
            issues.push(
                key,
                format!("not a duration: {text:?} ({e}; write e.g. \"500ms\", \"30s\", \"2m\")"),
            );
            default
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issues_of(text: &str) -> Vec<String> {
        match Config::parse(text) {
            Ok(_) => vec![],
            Err(e) => e.issues().iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn minimal_config_takes_defaults() {
        let c = Config::parse(
            r#"
            [[models]]
            name = "m"
            workers = ["http://127.0.0.1:8000"]
            "#,
        )
        .unwrap();
        assert_eq!(c.server.listen, defaults::LISTEN.parse().unwrap());
        assert_eq!(
            c.server.admin_listen,
            defaults::ADMIN_LISTEN.parse().unwrap()
        );
        assert_eq!(c.server.max_body_bytes, defaults::MAX_BODY_BYTES);
        assert_eq!(c.models[0].workers[0].url, "http://127.0.0.1:8000");
        assert_eq!(c.models[0].timeouts, UpstreamTimeouts::default());
    }

    #[test]
    fn bad_worker_url_names_its_key() {
        let got = issues_of(
            r#"
            [[models]]
            name = "a"
            workers = ["http://127.0.0.1:8000"]
            [[models]]
            name = "b"
            workers = ["not a url", "https://127.0.0.1:1", "http://127.0.0.1:2/v1"]
            "#,
        );
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(
            got[0].starts_with("models[1].workers[0]: not a URL"),
            "{got:?}"
        );
        assert!(got[1].starts_with("models[1].workers[1]: https"), "{got:?}");
        assert!(
            got[2].starts_with("models[1].workers[2]: must not have a path"),
            "{got:?}"
        );
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let got = issues_of(
            r#"
            [server]
            listne = "0.0.0.0:1"
            "#,
        );
        assert_eq!(got.len(), 1);
        assert!(got[0].contains("listne"), "{got:?}");
    }

    #[test]
    fn all_problems_are_reported_at_once() {
        let got = issues_of(
            r#"
            [server]
            listen = "nowhere"
            shutdown_grace = "soon"
            [[models]]
            workers = []
            "#,
        );
        let joined = got.join("\n");
        assert!(
            joined.contains("server.listen: not a socket address"),
            "{joined}"
        );
        assert!(
            joined.contains("server.shutdown_grace: not a duration"),
            "{joined}"
        );
        assert!(joined.contains("models[0].name: is required"), "{joined}");
        assert!(
            joined.contains("models[0].workers: at least one"),
            "{joined}"
        );
    }

    #[test]
    fn duplicate_names_and_workers_are_rejected() {
        let got = issues_of(
            r#"
            [[models]]
            name = "a"
            workers = ["http://127.0.0.1:1", "http://127.0.0.1:1/"]
            [[models]]
            name = "a"
            workers = ["http://127.0.0.1:2"]
            "#,
        );
        assert_eq!(
            got,
            vec![
                "models[0].workers[1]: duplicate worker http://127.0.0.1:1".to_string(),
                "models[1].name: duplicate model name \"a\"".to_string(),
            ]
        );
    }

    #[test]
    fn admin_listener_must_differ_from_public() {
        let got = issues_of(
            r#"
            [server]
            listen = "127.0.0.1:8080"
            admin_listen = "127.0.0.1:8080"
            [[models]]
            name = "a"
            workers = ["http://127.0.0.1:1"]
            "#,
        );
        assert_eq!(got.len(), 1);
        assert!(got[0].starts_with("server.admin_listen: must differ"));
    }
}
