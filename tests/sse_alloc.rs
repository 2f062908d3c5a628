//! The pass-through path allocates nothing per event: a counting allocator watches the scanner
//! while it reads a 500-event vLLM stream.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::Bytes;
use vllm_gateway::sse::{SseScanner, UsageMode};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counter is a
// const-initialised thread-local, which does not allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|a| a.set(a.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|a| a.set(a.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_during(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

fn stream() -> Vec<Bytes> {
    let head = r#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"#;
    let tail = r#"},"logprobs":null,"finish_reason":null}]}"#;
    let mut events = vec![format!(
        "{head}\"role\":\"assistant\",\"content\":\"\"{tail}\n\n"
    )];
    for i in 0..497 {
        events.push(format!(
            "{head}\"content\":\" word{i} \\\"q\\\"\"{tail}\n\n"
        ));
    }
    events.push(r#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":5,"total_tokens":502,"completion_tokens":497}}"#.to_string() + "\n\n");
    events.push("data: [DONE]\n\n".to_string());
    events.into_iter().map(Bytes::from).collect()
}

fn scan(chunks: &[Bytes], mode: UsageMode) -> u64 {
    let mut scanner = SseScanner::new(mode);
    let mut forwarded = 0;
    let n = allocations_during(|| {
        for c in chunks {
            forwarded += scanner.feed(c.clone()).len();
        }
        forwarded += scanner.finish().len();
    });
    assert!(forwarded > 0);
    assert_eq!(scanner.events(), 500);
    assert_eq!(scanner.content_events(), 497);
    assert_eq!(scanner.usage().map(|u| u.completion_tokens), Some(497));
    n
}

#[test]
fn no_allocation_per_event() {
    let per_event = stream();
    let whole: Vec<u8> = per_event.iter().flat_map(|b| b.to_vec()).collect();
    let reads: Vec<Bytes> = whole.chunks(4096).map(Bytes::copy_from_slice).collect();
    // Warm-up, not counted: the process-wide byte finders are built on first use, and the first
    // clone of a `Bytes` made from a Vec allocates its shared header (the test clones each chunk
    // to feed it; a gateway hands its chunks over instead).
    scan(&per_event, UsageMode::Observe);
    reads.iter().for_each(|r| drop(r.clone()));

    assert_eq!(
        scan(&per_event, UsageMode::Observe),
        0,
        "Observe, one event per chunk"
    );
    assert_eq!(
        scan(&per_event, UsageMode::StripUsageChunk),
        0,
        "Strip, one event per chunk"
    );
    // continuous_usage_stats: every chunk carries a cumulative usage, kept for a lazy parse in a
    // reused buffer (it grows once)
    let continuous: Vec<Bytes> = per_event
        .iter()
        .map(|b| {
            let text = std::str::from_utf8(b).unwrap();
            Bytes::from(text.replacen(
                "]}\n\n",
                "],\"usage\":{\"prompt_tokens\":5,\"total_tokens\":6,\"completion_tokens\":1}}\n\n",
                1,
            ))
        })
        .collect();
    continuous.iter().for_each(|r| drop(r.clone()));
    let observe_continuous = scan(&continuous, UsageMode::Observe);
    assert!(
        observe_continuous <= 2,
        "Observe, continuous usage: {observe_continuous}"
    );
    // With 4 KiB reads an event is split at most chunks. Observe copies the split head into a
    // reused buffer (a few growths at most). Strip must also return held and new bytes as one
    // `Bytes`: one buffer plus the header `freeze` adds, per read and not per event (plus the
    // carry buffer's growths).
    let observe_reads = scan(&reads, UsageMode::Observe);
    assert!(observe_reads <= 4, "Observe, 4 KiB reads: {observe_reads}");
    let strip_reads = scan(&reads, UsageMode::StripUsageChunk);
    assert!(
        strip_reads <= 2 * reads.len() as u64 + 4,
        "Strip, 4 KiB reads: {strip_reads} for {} reads",
        reads.len()
    );
}
