//! Bodies of every size up to `max_body_bytes` reach the worker byte-exact,
//! on one code path (Pingora's replay buffer is only 64 KiB: pingora.md §3).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;

/// A chat body of about `size` bytes, with unusual but valid JSON formatting
/// so that any re-serialization would show.
fn body_of_size(size: usize) -> Vec<u8> {
    let head = format!(
        "{{ \"model\" : \"{MODEL}\",\n  \"messages\":[ {{\"role\":\"user\", \"content\":\""
    );
    let tail = "\"} ],\n  \"x_unknown\" : {\"kept\" : [1, 2.50, \"\\u00e9\"]},  \"seed\":3 }";
    let filler = size.saturating_sub(head.len() + tail.len());
    let mut body = head.into_bytes();
    body.extend((0..filler).map(|i| b"abcdefgh "[i % 9]));
    body.extend_from_slice(tail.as_bytes());
    body
}

async fn roundtrip(size: usize, streaming: bool) {
    let s = sim_with(|c| c.max_model_len = 4_000_000);
    let gw = gateway_for(&[&s]).await;
    let mut body = body_of_size(size);
    if streaming {
        // Insert `"stream": true` in the same formatting style.
        let pos = body.len() - 2;
        body.splice(pos..pos, b", \"stream\": true".iter().copied());
    }
    let r = client()
        .post(format!("{}/v1/chat/completions", gw.url()))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(
        status,
        200,
        "{size} bytes: {}",
        &text[..text.len().min(300)]
    );
    if streaming {
        assert_eq!(sse_data(&text).last().map(String::as_str), Some("[DONE]"));
    }
    let sent = last_chat(&s);
    let mut expected = body.clone();
    if streaming {
        // The gateway asks for usage on every stream (to count tokens
        // exactly): the one edit it makes, spliced in right after the last
        // member's value (the body ends with " }").
        let pos = expected.len() - 2;
        expected.splice(
            pos..pos,
            br#","stream_options":{"include_usage":true}"#.iter().copied(),
        );
    }
    assert_eq!(
        sent.body.len(),
        expected.len(),
        "{size} bytes: length differs"
    );
    assert!(
        sent.body[..] == expected[..],
        "{size} bytes: content differs"
    );
}

#[tokio::test]
async fn one_kilobyte() {
    roundtrip(1_000, false).await;
}

#[tokio::test]
async fn one_hundred_kilobytes() {
    roundtrip(100_000, false).await;
}

#[tokio::test]
async fn three_megabytes() {
    roundtrip(3_000_000, false).await;
}

#[tokio::test]
async fn three_megabytes_streaming() {
    roundtrip(3_000_000, true).await;
}
