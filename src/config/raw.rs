//! The file format of `config.toml`, exactly as an operator writes it.
//!
//! Every table denies unknown keys, so a typo is an error that names the key
//! instead of a setting that silently does nothing. Values stay raw here
//! (strings for addresses and durations, `Option` for everything that has a
//! default); `super::Config::from_raw` resolves defaults from
//! [`super::defaults`] and checks every value, naming its key path.

use serde::Deserialize;

use crate::ratelimit::OnStoreError;
use crate::request::{LimitField, OnExceed, ValidationPolicy};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub models: Vec<RawModel>,
    #[serde(default)]
    pub api_keys: Vec<RawApiKey>,
    #[serde(default)]
    pub rate_limit: RawRateLimit,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApiKey {
    pub name: Option<String>,
    pub key_sha256: Option<String>,
    pub key_env: Option<String>,
    pub key: Option<String>,
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u64>,
    pub models: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub store: Option<LimitStore>,
    pub redis_url: Option<String>,
    pub redis_timeout: Option<String>,
    pub redis_key_prefix: Option<String>,
    pub on_store_error: Option<OnStoreError>,
}

/// Where rate-limit budgets live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitStore {
    #[default]
    Memory,
    Redis,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub threads: Option<usize>,
    pub max_body_bytes: Option<usize>,
    pub shutdown_grace: Option<String>,
    pub body_read_timeout: Option<String>,
    pub max_json_depth: Option<usize>,
    pub max_string_bytes: Option<usize>,
    pub header_read_timeout: Option<String>,
    pub keepalive_idle_timeout: Option<String>,
    pub send_timeout: Option<String>,
    pub max_requests_per_connection: Option<u32>,
    pub max_connections: Option<usize>,
    pub max_header_bytes: Option<usize>,
    pub max_headers: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    pub name: Option<String>,
    #[serde(default)]
    pub workers: Vec<String>,
    pub connect_timeout: Option<String>,
    pub first_token_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub request_timeout: Option<String>,
    pub upstream_keepalive_idle: Option<String>,
    pub routing: Option<Routing>,
    pub affinity_max_imbalance: Option<f64>,
    pub affinity_prefix_bytes: Option<usize>,
    pub load_poll_interval: Option<String>,
    pub health_interval: Option<String>,
    pub health_timeout: Option<String>,
    pub unhealthy_after: Option<u32>,
    pub healthy_after: Option<u32>,
    pub max_waiting: Option<u32>,
    pub max_retries: Option<u32>,
    pub max_response_bytes: Option<usize>,
    pub stream_head: Option<StreamHead>,
    pub failures_to_eject: Option<u32>,
    pub ejection_base: Option<String>,
    pub ejection_max: Option<String>,
    pub discovery: Option<Discovery>,
    pub dns_name: Option<String>,
    pub port: Option<u16>,
    pub dns_interval: Option<String>,
    pub default_max_tokens: Option<u64>,
    pub max_tokens_cap: Option<u64>,
    pub on_exceed: Option<OnExceed>,
    pub limit_field: Option<LimitField>,
    pub max_model_len: Option<u64>,
    pub validation: Option<ValidationPolicy>,
}

/// How a model's pool picks a worker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Routing {
    #[default]
    LeastLoaded,
    PrefixAffinity,
}

/// When a stream's response head goes to the client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamHead {
    /// As soon as the first worker sends its own stream head, as vLLM does
    /// (vllm.md §5). A worker that fails before its first event is still
    /// replaced by another within the same stream; a first-token timeout, or
    /// running out of workers, is an in-band error event.
    #[default]
    Immediate,
    /// With the first event (the first token): until then a silent worker
    /// is a clean 504 and any failure a JSON error with its HTTP status.
    FirstEvent,
}

/// Where a model's workers come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Discovery {
    #[default]
    Static,
    Dns,
}
