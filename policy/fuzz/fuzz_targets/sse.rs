//! The SSE event splitter, fed the same stream in arbitrary chunks: never a
//! panic, and the events it yields do not depend on where chunks end (what
//! the gateway judges in a streamed answer is what the client reads).
//!
//! Input: one byte of chunk-size seed, then the stream.
#![no_main]

use airlock_policy::gateway::sse::{EventSplitter, parse_event};
use libfuzzer_sys::fuzz_target;

fn split(stream: &[u8], mut sizes: impl FnMut() -> usize) -> (Vec<String>, String) {
    let mut splitter = EventSplitter::default();
    let mut events = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let (chunk, after) = rest.split_at(sizes().clamp(1, rest.len()));
        events.extend(splitter.push(chunk));
        rest = after;
    }
    (events, splitter.finish())
}

fuzz_target!(|input: &[u8]| {
    let Some((&seed, stream)) = input.split_first() else {
        return;
    };
    let whole = split(stream, || usize::MAX);
    let mut state = u32::from(seed) | 1;
    let chunked = split(stream, || {
        // xorshift: chunk sizes from 1 to 16 bytes, as many as the stream needs.
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        (state % 16) as usize + 1
    });
    let bytewise = split(stream, || 1);
    assert_eq!(whole, chunked, "chunking changed the events");
    assert_eq!(whole, bytewise, "byte-by-byte changed the events");
    for event in &whole.0 {
        assert!(event.ends_with("\n\n"), "an event ends with a blank line");
        let _ = parse_event(event);
    }
    if std::str::from_utf8(stream).is_ok() {
        // Only CRLF becomes LF (invalid UTF-8 would grow into U+FFFD).
        assert!(
            whole.0.concat().len() + whole.1.len() <= stream.len(),
            "line endings only shrink"
        );
    }
});
