//! Answers the gateway writes itself (errors, `/v1/models`): OpenAI-shaped
//! JSON with the request id and, for a rate-limited key, the
//! `x-ratelimit-*` headers every answer to that key carries.

use bytes::Bytes;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

use crate::error::GatewayError;
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
    let headers = limits.headers();
    let Ok(mut resp) = ResponseHeader::build_no_case(status, Some(3 + headers.len() + extra.len()))
    else {
        return;
    };
    let mut ok = resp
        .insert_header("content-type", "application/json")
        .is_ok()
        && resp
            .insert_header("content-length", body.len().to_string())
            .is_ok()
        && resp.insert_header("x-request-id", request_id).is_ok();
    for (name, value) in headers.iter().chain(extra) {
        ok &= resp.insert_header(*name, value.as_str()).is_ok();
    }
    if !ok {
        return;
    }
    if session
        .write_response_header(Box::new(resp), false)
        .await
        .is_ok()
    {
        let _ = session.write_response_body(Some(body), true).await;
    }
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
