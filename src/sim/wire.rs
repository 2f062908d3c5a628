//! Response bodies in vLLM's shapes (../shared/reference/vllm.md §5): streamed chunks for chat
//! and completions, and the full non-streaming objects.
//!
//! Chunks are built by hand into reused buffers: the part shared by every chunk of a request
//! (`id`, `object`, `created`, `model`) is serialised once, and a token costs a few `memcpy`s and
//! no allocation. Chat chunks follow vLLM's `exclude_unset` dumps (no `usage` key unless usage is
//! reported); completion chunks follow its `exclude_unset=False` dumps (`"usage":null`).

use std::io::Write as _;

use serde::Serialize;

use super::http::push_chunk;
use super::text::{Answer, Finish};

/// Which OpenAI API a generation request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    Chat,
    Completion,
}

impl Api {
    pub(crate) fn id_prefix(self) -> &'static str {
        match self {
            Api::Chat => "chatcmpl-",
            Api::Completion => "cmpl-",
        }
    }
}

/// Token counts for a `usage` object.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Usage {
    pub prompt: u32,
    pub completion: u64,
    /// `prompt_tokens_details.cached_tokens`, reported when the prefix cache is on.
    pub cached: Option<u32>,
}

impl Usage {
    fn write_json(&self, out: &mut Vec<u8>) {
        let total = u64::from(self.prompt) + self.completion;
        let _ = write!(
            out,
            "{{\"prompt_tokens\":{},\"total_tokens\":{total},\"completion_tokens\":{}",
            self.prompt, self.completion
        );
        if let Some(c) = self.cached {
            let _ = write!(out, ",\"prompt_tokens_details\":{{\"cached_tokens\":{c}}}");
        }
        out.push(b'}');
    }
}

/// Builds the SSE events of one streaming response, each framed as one HTTP chunk.
pub(crate) struct ChunkWriter {
    api: Api,
    /// `{"id":...,"object":...,"created":...,"model":...,"choices":[`
    prefix: Vec<u8>,
    event: Vec<u8>,
    frame: Vec<u8>,
}

impl ChunkWriter {
    pub(crate) fn new(api: Api, id: &str, created: u64, model: &str) -> Self {
        let object = match api {
            Api::Chat => "chat.completion.chunk",
            Api::Completion => "text_completion",
        };
        let mut prefix = Vec::with_capacity(128);
        prefix.extend_from_slice(b"{\"id\":");
        json_str(&mut prefix, id);
        let _ = write!(
            prefix,
            ",\"object\":\"{object}\",\"created\":{created},\"model\":"
        );
        json_str(&mut prefix, model);
        prefix.extend_from_slice(b",\"choices\":[");
        Self {
            api,
            prefix,
            event: Vec::with_capacity(512),
            frame: Vec::with_capacity(512),
        }
    }

    fn begin(&mut self) {
        self.event.clear();
        self.event.extend_from_slice(b"data: ");
        self.event.extend_from_slice(&self.prefix);
    }

    /// Closes the choices array, adds usage, frames the event; returns the bytes to write.
    fn end(&mut self, usage: Option<&Usage>) -> &[u8] {
        self.event.push(b']');
        match usage {
            Some(u) => {
                self.event.extend_from_slice(b",\"usage\":");
                u.write_json(&mut self.event);
            }
            None if self.api == Api::Completion => {
                self.event.extend_from_slice(b",\"usage\":null");
            }
            None => {}
        }
        self.event.extend_from_slice(b"}\n\n");
        self.frame.clear();
        push_chunk(&mut self.frame, &self.event);
        &self.frame
    }

    /// The first chat chunk of a choice: `delta: {"role":"assistant","content":""}`.
    pub(crate) fn role(&mut self, index: usize, usage: Option<&Usage>) -> &[u8] {
        self.begin();
        let _ = write!(
            self.event,
            "{{\"index\":{index},\"delta\":{{\"role\":\"assistant\",\"content\":\"\"}},\"logprobs\":null,\"finish_reason\":null}}"
        );
        self.end(usage)
    }

    /// A content chunk; `finish` marks the choice's last token (vLLM sends the final text delta
    /// together with `finish_reason` and `stop_reason`).
    pub(crate) fn token(
        &mut self,
        index: usize,
        text: &str,
        finish: Option<(Finish, Option<&str>)>,
        usage: Option<&Usage>,
    ) -> &[u8] {
        self.begin();
        let _ = write!(self.event, "{{\"index\":{index},");
        match self.api {
            Api::Chat => {
                self.event.extend_from_slice(b"\"delta\":{\"content\":");
                json_str(&mut self.event, text);
                self.event
                    .extend_from_slice(b"},\"logprobs\":null,\"finish_reason\":");
            }
            Api::Completion => {
                self.event.extend_from_slice(b"\"text\":");
                json_str(&mut self.event, text);
                self.event
                    .extend_from_slice(b",\"logprobs\":null,\"finish_reason\":");
            }
        }
        match finish {
            Some((f, stop)) => {
                let _ = write!(self.event, "\"{}\",\"stop_reason\":", f.as_str());
                match stop {
                    Some(s) => json_str(&mut self.event, s),
                    None => self.event.extend_from_slice(b"null"),
                }
            }
            None if self.api == Api::Completion => {
                self.event.extend_from_slice(b"null,\"stop_reason\":null");
            }
            None => self.event.extend_from_slice(b"null"),
        }
        self.event.push(b'}');
        self.end(usage)
    }

    /// The final usage chunk: `"choices":[]` and the request's totals.
    pub(crate) fn usage(&mut self, usage: &Usage) -> &[u8] {
        self.begin();
        self.end(Some(usage))
    }

    /// Any other event: `data: <payload>\n\n`, framed.
    pub(crate) fn event(&mut self, payload: &[u8]) -> &[u8] {
        self.event.clear();
        self.event.extend_from_slice(b"data: ");
        self.event.extend_from_slice(payload);
        self.event.extend_from_slice(b"\n\n");
        self.frame.clear();
        push_chunk(&mut self.frame, &self.event);
        &self.frame
    }

    /// A chunk that starts like a real one and breaks off mid-JSON (the `malformed` fault).
    pub(crate) fn malformed(&mut self) -> &[u8] {
        self.begin();
        self.event
            .extend_from_slice(b"{\"index\":0,\"delta\":{\"content\":\" bro\n\n");
        self.frame.clear();
        push_chunk(&mut self.frame, &self.event);
        &self.frame
    }
}

fn json_str(out: &mut Vec<u8>, s: &str) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

#[derive(Serialize)]
struct UsageBody {
    prompt_tokens: u32,
    total_tokens: u64,
    completion_tokens: u64,
    prompt_tokens_details: Option<CachedBody>,
}

#[derive(Serialize)]
struct CachedBody {
    cached_tokens: u32,
}

impl From<&Usage> for UsageBody {
    fn from(u: &Usage) -> Self {
        Self {
            prompt_tokens: u.prompt,
            total_tokens: u64::from(u.prompt) + u.completion,
            completion_tokens: u.completion,
            prompt_tokens_details: u.cached.map(|c| CachedBody { cached_tokens: c }),
        }
    }
}

#[derive(Serialize)]
struct ChatMessage<'a> {
    role: &'static str,
    content: &'a str,
    refusal: Option<()>,
    annotations: Option<()>,
    audio: Option<()>,
    function_call: Option<()>,
    tool_calls: [(); 0],
    reasoning: Option<()>,
}

#[derive(Serialize)]
struct ChatChoice<'a> {
    index: usize,
    message: ChatMessage<'a>,
    logprobs: Option<()>,
    finish_reason: &'static str,
    stop_reason: Option<&'a str>,
    token_ids: Option<()>,
}

#[derive(Serialize)]
struct TextChoice<'a> {
    index: usize,
    text: &'a str,
    logprobs: Option<()>,
    finish_reason: &'static str,
    stop_reason: Option<&'a str>,
    prompt_logprobs: Option<()>,
}

#[derive(Serialize)]
struct Full<'a, C> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<C>,
    service_tier: Option<()>,
    system_fingerprint: Option<()>,
    usage: UsageBody,
    prompt_logprobs: Option<()>,
    prompt_token_ids: Option<()>,
    kv_transfer_params: Option<()>,
}

impl<'a, C: Serialize> Full<'a, C> {
    /// The envelope vLLM puts around the choices; its extra keys are always null.
    fn new(
        id: &'a str,
        object: &'static str,
        created: u64,
        model: &'a str,
        choices: Vec<C>,
        usage: &Usage,
    ) -> Self {
        Self {
            id,
            object,
            created,
            model,
            choices,
            service_tier: None,
            system_fingerprint: None,
            usage: usage.into(),
            prompt_logprobs: None,
            prompt_token_ids: None,
            kv_transfer_params: None,
        }
    }
}

/// The non-streaming `chat.completion` / `text_completion` object.
pub(crate) fn full_response(
    api: Api,
    id: &str,
    created: u64,
    model: &str,
    answers: &[Answer],
    usage: &Usage,
) -> Vec<u8> {
    let result = match api {
        Api::Chat => {
            let choices = answers
                .iter()
                .enumerate()
                .map(|(index, a)| ChatChoice {
                    index,
                    message: ChatMessage {
                        role: "assistant",
                        content: &a.text,
                        refusal: None,
                        annotations: None,
                        audio: None,
                        function_call: None,
                        tool_calls: [],
                        reasoning: None,
                    },
                    logprobs: None,
                    finish_reason: a.finish.as_str(),
                    stop_reason: a.stop_reason.as_deref(),
                    token_ids: None,
                })
                .collect();
            serde_json::to_vec(&Full::new(
                id,
                "chat.completion",
                created,
                model,
                choices,
                usage,
            ))
        }
        Api::Completion => {
            let choices = answers
                .iter()
                .enumerate()
                .map(|(index, a)| TextChoice {
                    index,
                    text: &a.text,
                    logprobs: None,
                    finish_reason: a.finish.as_str(),
                    stop_reason: a.stop_reason.as_deref(),
                    prompt_logprobs: None,
                })
                .collect();
            serde_json::to_vec(&Full::new(
                id,
                "text_completion",
                created,
                model,
                choices,
                usage,
            ))
        }
    };
    result.unwrap_or_default()
}

/// The two halves of a full response whose single choice's content is to be padded to reach a
/// chosen body size (the `huge_body_bytes` fault): the padding goes between them.
pub(crate) fn padded_response_parts(
    api: Api,
    id: &str,
    created: u64,
    model: &str,
    usage: &Usage,
) -> (Vec<u8>, Vec<u8>) {
    const MARK: &str = "\u{1}SPLIT\u{1}";
    let answer = Answer {
        text: MARK.to_string(),
        ends: vec![0],
        finish: Finish::Length,
        stop_reason: None,
    };
    let body = full_response(api, id, created, model, &[answer], usage);
    // The marker is serialised as `\u0001SPLIT\u0001`; split around it.
    let marker = b"\\u0001SPLIT\\u0001";
    match memchr::memmem::find(&body, marker) {
        Some(at) => (body[..at].to_vec(), body[at + marker.len()..].to_vec()),
        None => (body, Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn payload(framed: &[u8]) -> Value {
        let s = std::str::from_utf8(framed).unwrap();
        let (len, rest) = s.split_once("\r\n").unwrap();
        let body = &rest[..usize::from_str_radix(len, 16).unwrap()];
        assert!(body.starts_with("data: ") && body.ends_with("\n\n"));
        serde_json::from_str(&body[6..body.len() - 2]).unwrap()
    }

    #[test]
    fn chat_chunks() {
        let mut w = ChunkWriter::new(Api::Chat, "chatcmpl-1", 7, "m\"");
        let v = payload(w.role(0, None));
        assert_eq!(v["id"], "chatcmpl-1");
        assert_eq!(v["object"], "chat.completion.chunk");
        assert_eq!(v["model"], "m\"");
        assert_eq!(v["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(v["choices"][0]["delta"]["content"], "");
        assert!(v.get("usage").is_none());
        let v = payload(w.token(1, " a\"b", None, None));
        assert_eq!(v["choices"][0]["index"], 1);
        assert_eq!(v["choices"][0]["delta"]["content"], " a\"b");
        assert!(v["choices"][0]["finish_reason"].is_null());
        assert!(v["choices"][0].get("stop_reason").is_none());
        let u = Usage {
            prompt: 3,
            completion: 2,
            cached: Some(0),
        };
        let v = payload(w.token(0, "", Some((Finish::Stop, Some("x"))), Some(&u)));
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["choices"][0]["stop_reason"], "x");
        assert_eq!(v["usage"]["total_tokens"], 5);
        let v = payload(w.usage(&u));
        assert_eq!(v["choices"], serde_json::json!([]));
        assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    }

    #[test]
    fn completion_chunks_and_full() {
        let mut w = ChunkWriter::new(Api::Completion, "cmpl-1", 7, "m");
        let v = payload(w.token(0, " hi", None, None));
        assert_eq!(v["object"], "text_completion");
        assert_eq!(v["choices"][0]["text"], " hi");
        assert!(v["usage"].is_null() && v.get("usage").is_some());
        let u = Usage {
            prompt: 1,
            completion: 1,
            cached: None,
        };
        let a = Answer {
            text: " hi".into(),
            ends: vec![3],
            finish: Finish::Length,
            stop_reason: None,
        };
        let v: Value =
            serde_json::from_slice(&full_response(Api::Chat, "c", 1, "m", &[a], &u)).unwrap();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["choices"][0]["message"]["content"], " hi");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert!(v["usage"]["prompt_tokens_details"].is_null());
    }

    #[test]
    fn padded_parts_wrap_the_content() {
        let u = Usage {
            prompt: 1,
            completion: 1,
            cached: None,
        };
        let (head, tail) = padded_response_parts(Api::Chat, "c", 1, "m", &u);
        let mut body = head.clone();
        body.extend_from_slice(b"aaaa");
        body.extend_from_slice(&tail);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "aaaa");
    }
}
