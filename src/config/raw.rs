//! The file format of `config.toml`, exactly as an operator writes it.
//!
//! Every table denies unknown keys, so a typo is an error that names the key
//! instead of a setting that silently does nothing. Values stay raw here
//! (strings for addresses and durations, `Option` for everything that has a
//! default); `super::Config::from_raw` resolves defaults from
//! [`super::defaults`] and checks every value, naming its key path.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub models: Vec<RawModel>,
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
}
