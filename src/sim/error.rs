//! Errors the simulated API answers with, in vLLM's shape (../shared/reference/vllm.md §6):
//! `{"error": {"message", "type", "param", "code"}}` where `code` is the HTTP status as an
//! integer and `type` is a vLLM class name.

use serde::Serialize;

/// One failed API request: the status and the body vLLM would send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {kind}: {message}")]
pub(crate) struct ApiError {
    pub status: u16,
    /// vLLM's `type`, e.g. `BadRequestError`.
    pub kind: &'static str,
    pub message: String,
    pub param: Option<String>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Info<'a>,
}

#[derive(Serialize)]
struct Info<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: u16,
}

impl ApiError {
    /// A `VLLMValidationError`: 400 `BadRequestError`; vLLM appends the parameter and value
    /// to the message (`... (parameter=max_tokens, value=5000)`).
    pub(crate) fn validation(
        message: impl Into<String>,
        param: &str,
        value: impl ToString,
    ) -> Self {
        let message = format!(
            "{} (parameter={param}, value={})",
            message.into(),
            value.to_string()
        );
        Self {
            status: 400,
            kind: "BadRequestError",
            message,
            param: Some(param.to_string()),
        }
    }

    /// A plain `ValueError` turned into 400 `BadRequestError`.
    pub(crate) fn bad_request(message: impl Into<String>, param: Option<&str>) -> Self {
        Self {
            status: 400,
            kind: "BadRequestError",
            message: message.into(),
            param: param.map(str::to_string),
        }
    }

    /// A schema (pydantic) failure or a wrong Content-Type: 400 with type `Bad Request`.
    pub(crate) fn schema(message: impl Into<String>, param: Option<&str>) -> Self {
        Self {
            status: 400,
            kind: "Bad Request",
            message: message.into(),
            param: param.map(str::to_string),
        }
    }

    /// Unknown model or LoRA adapter: 404 `NotFoundError`, param `model`.
    pub(crate) fn model_not_found(name: &str) -> Self {
        Self {
            status: 404,
            kind: "NotFoundError",
            message: format!("The model `{name}` does not exist."),
            param: Some("model".to_string()),
        }
    }

    /// The error vLLM would send with `status`, for injected failures.
    pub(crate) fn injected(status: u16) -> Self {
        let (kind, message) = match status {
            400 => ("BadRequestError", "Injected bad request (simulator fault)."),
            404 => ("NotFoundError", "Injected not found (simulator fault)."),
            422 => (
                "UnprocessableEntityError",
                "Injected unprocessable entity (simulator fault).",
            ),
            501 => (
                "NotImplementedError",
                "Injected not implemented (simulator fault).",
            ),
            503 => (
                "Service Unavailable",
                "The engine is currently busy. Please try again later (simulator fault).",
            ),
            500 => (
                "InternalServerError",
                "Injected internal server error (simulator fault).",
            ),
            _ => (
                http::StatusCode::from_u16(status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("Error"),
                "Injected error (simulator fault).",
            ),
        };
        Self {
            status,
            kind,
            message: message.to_string(),
            param: None,
        }
    }

    /// A generation failure after the request was accepted (finish reason `error`).
    pub(crate) fn generation_failed() -> Self {
        Self {
            status: 500,
            kind: "InternalServerError",
            message: "Internal server error: generation failed (simulator fault).".to_string(),
            param: None,
        }
    }

    /// The JSON body.
    pub(crate) fn body(&self) -> Vec<u8> {
        let body = Body {
            error: Info {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.status,
            },
        };
        serde_json::to_vec(&body).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_matches_vllm() {
        let e = ApiError::validation("max_tokens must be at least 1, got 0.", "max_tokens", 0);
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["error"]["code"], 400);
        assert_eq!(v["error"]["type"], "BadRequestError");
        assert_eq!(v["error"]["param"], "max_tokens");
        assert_eq!(
            v["error"]["message"],
            "max_tokens must be at least 1, got 0. (parameter=max_tokens, value=0)"
        );
        let v: serde_json::Value =
            serde_json::from_slice(&ApiError::model_not_found("x").body()).unwrap();
        assert_eq!(v["error"]["code"], 404);
        assert_eq!(v["error"]["type"], "NotFoundError");
        let v: serde_json::Value = serde_json::from_slice(&ApiError::injected(503).body()).unwrap();
        assert_eq!(v["error"]["type"], "Service Unavailable");
        assert!(v["error"]["param"].is_null());
        let v: serde_json::Value = serde_json::from_slice(&ApiError::injected(418).body()).unwrap();
        assert_eq!(v["error"]["type"], "I'm a teapot");
    }
}
