//! vllm-gateway: an OpenAI-compatible ingress gateway for pools of vLLM workers.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod request;
