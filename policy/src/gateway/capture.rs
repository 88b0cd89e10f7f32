//! Session capture of the server's answer: the messages of a JSON or SSE
//! response, collected chunk by chunk as they stream past (never held back),
//! redacted, and bounded so one large answer cannot exhaust the filter.

use super::sse::{EventSplitter, parse_event};
use crate::audit::captured_message;
use crate::json::{self, Limits};
use serde_json::Value;

/// Largest answer captured whole; beyond it, what was captured is kept and
/// the rest is noted as left out.
pub const CAPTURE_LIMIT_BYTES: usize = 256 * 1024;

#[derive(Debug)]
pub struct ResponseCapture {
    event_stream: bool,
    redact: Vec<String>,
    /// A JSON body so far.
    body: Vec<u8>,
    events: EventSplitter,
    messages: Vec<Value>,
    seen_bytes: usize,
}

impl ResponseCapture {
    pub fn new(event_stream: bool, redact: Vec<String>) -> ResponseCapture {
        ResponseCapture {
            event_stream,
            redact,
            body: Vec::new(),
            events: EventSplitter::default(),
            messages: Vec::new(),
            seen_bytes: 0,
        }
    }

    /// Takes the next chunk of the response body.
    pub fn push(&mut self, chunk: &[u8]) {
        self.seen_bytes = self.seen_bytes.saturating_add(chunk.len());
        if self.seen_bytes > CAPTURE_LIMIT_BYTES {
            return;
        }
        if self.event_stream {
            for event in self.events.push(chunk) {
                self.take_event(&event);
            }
        } else {
            self.body.extend_from_slice(chunk);
        }
    }

    fn take_event(&mut self, event: &str) {
        if let (_, Some(data)) = parse_event(event) {
            self.take(data.as_bytes());
        }
    }

    fn take(&mut self, bytes: &[u8]) {
        match json::parse(bytes, Limits::default()) {
            Ok(Value::Array(batch)) => {
                let redact = &self.redact;
                self.messages
                    .extend(batch.iter().map(|m| captured_message(m, redact)));
            }
            Ok(message) => self.messages.push(captured_message(&message, &self.redact)),
            // SSE priming events carry no data worth keeping; anything else is noted.
            Err(_) if bytes.iter().all(u8::is_ascii_whitespace) => {}
            Err(e) => self
                .messages
                .push(Value::String(format!("[not JSON: {e}]"))),
        }
    }

    /// The captured messages, in the order the server sent them.
    pub fn finish(mut self) -> Vec<Value> {
        if self.seen_bytes <= CAPTURE_LIMIT_BYTES {
            if self.event_stream {
                let rest = self.events.finish();
                self.take_event(&rest);
            } else {
                let body = std::mem::take(&mut self.body);
                self.take(&body);
            }
        } else {
            self.messages.push(Value::String(format!(
                "[not captured: the answer is {} bytes, over the capture limit of {CAPTURE_LIMIT_BYTES}]",
                self.seen_bytes
            )));
        }
        self.messages
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_json_answer_is_captured_redacted() {
        let mut capture =
            ResponseCapture::new(false, vec!["/result/structuredContent/secret".into()]);
        let answer = json!({"jsonrpc": "2.0", "id": 1, "result": {"structuredContent": {"secret": "s3", "ok": true}}});
        let bytes = answer.to_string().into_bytes();
        let (a, b) = bytes.split_at(10);
        capture.push(a);
        capture.push(b);
        assert_eq!(
            capture.finish(),
            vec![
                json!({"jsonrpc": "2.0", "id": 1, "result": {"structuredContent": {"secret": "[redacted]", "ok": true}}})
            ]
        );
    }

    #[test]
    fn an_event_stream_is_captured_message_by_message() {
        let mut capture = ResponseCapture::new(true, vec![]);
        capture.push(b"id: 1\ndata: \n\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\ndata: {\"jsonrpc\":\"2.0\",");
        capture.push(b"\"id\":7,\"result\":{}}\n\n");
        assert_eq!(
            capture.finish(),
            vec![
                json!({"jsonrpc": "2.0", "method": "notifications/progress"}),
                json!({"jsonrpc": "2.0", "id": 7, "result": {}})
            ]
        );
    }

    #[test]
    fn an_oversized_or_broken_answer_is_noted_not_kept() {
        let mut capture = ResponseCapture::new(false, vec![]);
        capture.push(&vec![b' '; CAPTURE_LIMIT_BYTES + 1]);
        let noted = capture.finish();
        assert_eq!(noted.len(), 1);
        assert!(
            noted[0]
                .as_str()
                .unwrap_or_default()
                .contains("over the capture limit")
        );

        let mut capture = ResponseCapture::new(false, vec![]);
        capture.push(b"{not json");
        assert!(
            capture.finish()[0]
                .as_str()
                .unwrap_or_default()
                .starts_with("[not JSON")
        );
    }
}
