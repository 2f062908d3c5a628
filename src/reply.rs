//! Answers the gateway writes itself (errors, `/v1/models`): OpenAI-shaped
//! JSON with the request id and, for a rate-limited key, the
//! `x-ratelimit-*` headers every answer to that key carries.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use http::StatusCode;
use pingora_core::protocols::http::ServerSession as Session;
use pingora_http::ResponseHeader;

use crate::error::GatewayError;
use crate::forward::X_REQUEST_ID;
use crate::ratelimit::LimitStatus;

/// Write a complete JSON answer. Failures mean the client is gone; there is
/// nobody left to tell.
pub async fn json(
    session: &mut Session,
    request_id: &str,
    limits: &LimitStatus,
    extra: &[(&'static str, String)],
    status: u16,
    body: Bytes,
) {
    let Some(resp) = json_head(request_id, limits, extra, status, body.len()) else {
        return;
    };
    if session.write_response_header(Box::new(resp)).await.is_ok() {
        let _ = session.write_response_body(body, true).await;
    }
}

/// The head of [`json`]'s answer; `None` if a header cannot be written (a
/// request id the client chose that is not a valid header value).
fn json_head(
    request_id: &str,
    limits: &LimitStatus,
    extra: &[(&'static str, String)],
    status: u16,
    body_len: usize,
) -> Option<ResponseHeader> {
    let limit_headers = limits.headers();
    let mut map = HeaderMap::try_with_capacity(3 + limit_headers.len() + extra.len()).ok()?;
    map.try_insert(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .ok()?;
    map.try_insert(CONTENT_LENGTH, HeaderValue::from(body_len))
        .ok()?;
    map.try_insert(X_REQUEST_ID, HeaderValue::from_str(request_id).ok()?)
        .ok()?;
    for (name, value) in limit_headers {
        map.try_insert(name, value).ok()?;
    }
    for (name, value) in extra {
        let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
        map.try_insert(name, HeaderValue::from_str(value).ok()?)
            .ok()?;
    }
    response_head(status, map)
}

/// A response head holding exactly `headers`. Pingora's `insert_header`
/// turns every typed name back into bytes and parses it again (allocating a
/// copy of each custom name, on every answer); a head converted from
/// `http` parts is Pingora's no-case head, whose map is all it writes out,
/// so typed headers go in as they are.
pub fn response_head(status: u16, headers: HeaderMap) -> Option<ResponseHeader> {
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = StatusCode::from_u16(status).ok()?;
    parts.headers = headers;
    Some(ResponseHeader::from(parts))
}

/// Write `e` as an OpenAI error (with `retry-after` on a 429).
pub async fn error(
    session: &mut Session,
    request_id: &str,
    limits: &LimitStatus,
    e: &GatewayError,
) {
    let extra = e.retry_headers();
    json(session, request_id, limits, &extra, e.status(), e.body()).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::Window;
    use std::time::Duration;

    #[test]
    fn json_head_carries_framing_id_limits_and_retry() {
        let limits = LimitStatus {
            requests: Some(Window {
                limit: 3,
                remaining: 0,
                reset: Duration::from_secs(20),
            }),
            tokens: None,
        };
        let extra = [("retry-after", "20".to_string())];
        let h = json_head("req-1", &limits, &extra, 429, 57).unwrap();
        assert_eq!(h.status.as_u16(), 429);
        let get = |n: &str| h.headers.get(n).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(get("content-type").as_deref(), Some("application/json"));
        assert_eq!(get("content-length").as_deref(), Some("57"));
        assert_eq!(get("x-request-id").as_deref(), Some("req-1"));
        assert_eq!(get("x-ratelimit-limit-requests").as_deref(), Some("3"));
        assert_eq!(get("x-ratelimit-remaining-requests").as_deref(), Some("0"));
        assert_eq!(get("x-ratelimit-reset-requests").as_deref(), Some("20s"));
        assert_eq!(get("retry-after").as_deref(), Some("20"));
        assert_eq!(h.headers.len(), 7);
    }

    #[test]
    fn json_head_refuses_a_request_id_that_is_no_header_value() {
        let none = LimitStatus::default();
        assert!(json_head("bad\nid", &none, &[], 400, 2).is_none());
        assert!(response_head(1000, HeaderMap::new()).is_none());
    }
}
