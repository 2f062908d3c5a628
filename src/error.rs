//! Every answer the gateway makes itself, as one enum.
//!
//! Each variant maps to exactly one HTTP status and one OpenAI-shaped body
//! `{"error":{"message","type","param","code"}}` (all four keys present, `code`
//! a string or null: ../shared/reference/chat-completions.md §7.1), so clients'
//! SDKs raise the right exception and retry only what is worth retrying
//! (§7.2). Messages never echo an API key or message content.

use bytes::Bytes;
use serde::Serialize;

#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    #[error("Unknown request URL: {method} {path}. The gateway serves /v1/chat/completions, /v1/completions, /v1/embeddings and /v1/models.")]
    RouteNotFound { method: String, path: String },

    #[error("Method {method} is not allowed on {path}.")]
    MethodNotAllowed { method: String, path: String },

    #[error("The model `{model}` does not exist or you do not have access to it.")]
    ModelNotFound { model: String },

    #[error("Request headers are too large: at most {max_headers} headers and {max_bytes} bytes.")]
    HeadersTooLarge {
        max_headers: usize,
        max_bytes: usize,
    },

    #[error("Request body is larger than the gateway's limit of {limit} bytes.")]
    BodyTooLarge { limit: usize },

    #[error("The request body did not arrive within {}.", humantime::format_duration(*timeout))]
    BodyTimeout { timeout: std::time::Duration },

    #[error("Request body could not be read: {reason}.")]
    BodyRead { reason: String },

    #[error("Unsupported Media Type: Only 'application/json' is allowed")]
    UnsupportedMediaType,

    /// `message` already names the byte offset.
    #[error("{message}")]
    MalformedJson {
        offset: usize,
        message: String,
        code: &'static str,
    },

    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<String>,
        code: &'static str,
    },

    #[error("{}", if *missing { "You didn't provide an API key. Send it as `Authorization: Bearer <key>` or in the `api-key` header." } else { "Incorrect API key provided." })]
    Unauthorized { missing: bool },

    #[error("Rate limit reached for {} per minute on this key: limit {limit}. Please try again in {}.", kind.label(), crate::ratelimit::go_duration(*retry_after))]
    RateLimited {
        kind: crate::ratelimit::LimitKind,
        limit: u64,
        retry_after: std::time::Duration,
    },

    #[error("The rate-limit store is unavailable; try again shortly.")]
    RateLimitUnavailable,

    #[error("No healthy worker is available for model `{model}`; try again shortly.")]
    NoHealthyWorker { model: String },

    #[error("The gateway is shutting down; retry on another replica.")]
    ShuttingDown,

    #[error("The worker for model `{model}` could not be reached.")]
    UpstreamUnavailable { model: String },

    #[error("The worker for model `{model}` failed (status {status}): {message}")]
    UpstreamFailed {
        model: String,
        status: u16,
        message: String,
    },

    /// The worker refused the request (a 4xx of its own), in OpenAI's shape.
    #[error("{message}")]
    WorkerRejected {
        status: u16,
        message: String,
        param: Option<String>,
    },

    #[error("The worker for model `{model}` sent an answer larger than the gateway accepts ({limit} bytes).")]
    ResponseTooLarge { model: String, limit: usize },

    #[error("The worker for model `{model}` sent an invalid response.")]
    UpstreamProtocol { model: String },

    #[error("The worker for model `{model}` did not answer in time ({phase}).")]
    UpstreamTimeout { model: String, phase: &'static str },

    #[error("The gateway failed to handle the request.")]
    Internal,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorInfo<'a>,
}

#[derive(Serialize)]
struct ErrorInfo<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl GatewayError {
    pub fn status(&self) -> u16 {
        use GatewayError::*;
        match self {
            RouteNotFound { .. } | ModelNotFound { .. } => 404,
            Unauthorized { .. } => 401,
            RateLimited { .. } => 429,
            RateLimitUnavailable => 503,
            MethodNotAllowed { .. } => 405,
            BodyTooLarge { .. } => 413,
            HeadersTooLarge { .. } => 431,
            BodyTimeout { .. } => 408,
            // vLLM answers a wrong Content-Type with 400, not 415
            // (../shared/reference/vllm.md §1); clients built against vLLM
            // expect that.
            UnsupportedMediaType
            | MalformedJson { .. }
            | InvalidRequest { .. }
            | BodyRead { .. } => 400,
            NoHealthyWorker { .. } | ShuttingDown | UpstreamUnavailable { .. } => 503,
            UpstreamProtocol { .. } | UpstreamFailed { .. } | ResponseTooLarge { .. } => 502,
            WorkerRejected { status, .. } => *status,
            UpstreamTimeout { .. } => 504,
            Internal => 500,
        }
    }

    /// OpenAI's `type` field.
    pub fn error_type(&self) -> &'static str {
        use GatewayError::*;
        match self {
            // OpenAI's 429 `type` names the budget (chat-completions.md §7.1).
            RateLimited { kind, .. } => kind.label(),
            NoHealthyWorker { .. }
            | RateLimitUnavailable
            | ShuttingDown
            | UpstreamUnavailable { .. }
            | UpstreamProtocol { .. }
            | UpstreamFailed { .. }
            | ResponseTooLarge { .. }
            | UpstreamTimeout { .. }
            | Internal => "server_error",
            _ => "invalid_request_error",
        }
    }

    /// OpenAI's `code` field (a string or null).
    pub fn code(&self) -> Option<&'static str> {
        use GatewayError::*;
        match self {
            RouteNotFound { .. } => Some("unknown_url"),
            MethodNotAllowed { .. } => Some("method_not_allowed"),
            ModelNotFound { .. } => Some("model_not_found"),
            Unauthorized { .. } => Some("invalid_api_key"),
            RateLimited { .. } => Some("rate_limit_exceeded"),
            RateLimitUnavailable => Some("rate_limit_store_unavailable"),
            BodyTooLarge { .. } => Some("request_too_large"),
            HeadersTooLarge { .. } => Some("headers_too_large"),
            BodyTimeout { .. } => Some("request_timeout"),
            BodyRead { .. } => Some("invalid_body"),
            UnsupportedMediaType => Some("unsupported_media_type"),
            MalformedJson { code, .. } => Some(code),
            InvalidRequest { code, .. } => Some(code),
            NoHealthyWorker { .. } => Some("no_healthy_upstream"),
            ShuttingDown => Some("shutting_down"),
            UpstreamUnavailable { .. } => Some("upstream_unavailable"),
            UpstreamProtocol { .. } => Some("upstream_protocol_error"),
            UpstreamFailed { .. } => Some("upstream_error"),
            WorkerRejected { .. } => None,
            ResponseTooLarge { .. } => Some("upstream_response_too_large"),
            UpstreamTimeout { .. } => Some("upstream_timeout"),
            Internal => None,
        }
    }

    pub fn param(&self) -> Option<&str> {
        use GatewayError::*;
        match self {
            InvalidRequest { param, .. } | WorkerRejected { param, .. } => param.as_deref(),
            ModelNotFound { .. } => Some("model"),
            _ => None,
        }
    }

    /// `retry-after` (seconds) and `retry-after-ms` for a 429, which the
    /// official SDKs honour (chat-completions.md §7.2).
    pub fn retry_headers(&self) -> Vec<(&'static str, String)> {
        match self {
            GatewayError::RateLimited { retry_after, .. } => {
                let ms = retry_after.as_millis().max(1);
                vec![
                    ("retry-after", ms.div_ceil(1000).to_string()),
                    ("retry-after-ms", ms.to_string()),
                ]
            }
            _ => Vec::new(),
        }
    }

    /// Metric label for the kind of failure: bounded, never user data.
    pub fn kind(&self) -> &'static str {
        use GatewayError::*;
        match self {
            RouteNotFound { .. } => "route_not_found",
            MethodNotAllowed { .. } => "method_not_allowed",
            ModelNotFound { .. } => "model_not_found",
            Unauthorized { .. } => "unauthorized",
            RateLimited { .. } => "rate_limited",
            RateLimitUnavailable => "rate_limit_store_unavailable",
            BodyTooLarge { .. } => "body_too_large",
            HeadersTooLarge { .. } => "headers_too_large",
            BodyTimeout { .. } => "body_timeout",
            BodyRead { .. } => "body_read",
            UnsupportedMediaType => "unsupported_media_type",
            MalformedJson { .. } => "malformed_json",
            InvalidRequest { .. } => "invalid_request",
            NoHealthyWorker { .. } => "no_healthy_worker",
            ShuttingDown => "shutting_down",
            UpstreamUnavailable { .. } => "upstream_unavailable",
            UpstreamProtocol { .. } => "upstream_protocol",
            UpstreamFailed { .. } => "upstream_failed",
            WorkerRejected { .. } => "worker_rejected",
            ResponseTooLarge { .. } => "response_too_large",
            UpstreamTimeout { .. } => "upstream_timeout",
            Internal => "internal",
        }
    }

    /// The JSON body, OpenAI-shaped.
    pub fn body(&self) -> Bytes {
        let message = self.to_string();
        render(&message, self.error_type(), self.param(), self.code())
    }
}

/// Render an OpenAI-shaped error body.
pub fn render(message: &str, kind: &str, param: Option<&str>, code: Option<&str>) -> Bytes {
    let body = ErrorBody {
        error: ErrorInfo {
            message,
            kind,
            param,
            code,
        },
    };
    // Serializing a struct of strings cannot fail; fall back to a fixed body
    // rather than panic if it ever did.
    serde_json::to_vec(&body).map_or_else(
        |_| Bytes::from_static(br#"{"error":{"message":"internal error","type":"server_error","param":null,"code":null}}"#),
        Bytes::from,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_all_four_keys() {
        let e = GatewayError::ModelNotFound { model: "x".into() };
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        let err = &v["error"];
        assert_eq!(err["type"], "invalid_request_error");
        assert_eq!(err["code"], "model_not_found");
        assert_eq!(err["param"], "model");
        assert!(err["message"].as_str().unwrap().contains("`x`"));
        assert_eq!(e.status(), 404);

        let e = GatewayError::Internal;
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert!(v["error"].get("param").unwrap().is_null());
        assert!(v["error"].get("code").unwrap().is_null());
    }

    #[test]
    fn message_is_json_escaped() {
        let e = GatewayError::ModelNotFound {
            model: "a\"b\n".into(),
        };
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert!(v["error"]["message"].as_str().unwrap().contains("a\"b\n"));
    }
}
