//! vllm-gateway: an OpenAI-compatible ingress gateway for pools of vLLM
//! workers, built on Pingora. `main.rs` only wires the command line to the
//! entry points here, which the integration tests share.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod access;
pub mod admin;
pub mod admission;
pub mod auth;
pub mod cli;
pub mod config;
pub mod deadline;
pub mod demo;
pub mod error;
pub mod forward;
pub mod gateway;
pub mod listener;
pub mod metering;
pub mod metrics;
pub mod pool;
pub mod proxy;
pub mod ratelimit;
pub mod reply;
pub mod request;
pub mod shutdown;
pub mod sim;
pub mod sse;
pub mod state;
pub mod telemetry;
pub mod upstream;
pub mod usage;
