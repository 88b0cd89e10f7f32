//! Server-sent events, split incrementally across chunk boundaries.
//!
//! Streams pass chunk by chunk; the gateway must never buffer a whole SSE
//! response. It reads complete events only, keeping the unfinished tail of a
//! chunk until the next one. Line endings may be CRLF, LF or CR (the SSE
//! specification allows all three); events come out with LF endings.

/// Splits a byte stream into complete events (each ending with a blank line).
#[derive(Debug, Default)]
pub struct EventSplitter {
    pending: Vec<u8>,
    /// The previous chunk ended in CR: an LF starting this one belongs to it.
    after_cr: bool,
}

impl EventSplitter {
    /// Adds a chunk; returns the events it completed, each ending in "\n\n".
    pub fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        for &byte in chunk {
            match byte {
                b'\n' if self.after_cr => self.after_cr = false,
                b'\r' => {
                    self.pending.push(b'\n');
                    self.after_cr = true;
                }
                other => {
                    self.pending.push(other);
                    self.after_cr = false;
                }
            }
        }
        let mut events = Vec::new();
        while let Some(end) = self.pending.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = self.pending.drain(..end + 2).collect();
            events.push(String::from_utf8_lossy(&event).into_owned());
        }
        events
    }

    /// Bytes held back waiting for the end of an event.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// What is left when the stream ends (an unterminated last event).
    pub fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        rest
    }
}

/// The `event:` name and the joined `data:` lines of one event.
pub fn parse_event(event: &str) -> (Option<&str>, Option<String>) {
    let mut name = None;
    let mut data: Vec<&str> = Vec::new();
    for line in event.lines() {
        if let Some(value) = line.strip_prefix("event:") {
            name = Some(value.trim());
        } else if let Some(value) = line.strip_prefix("data:") {
            data.push(value.strip_prefix(' ').unwrap_or(value));
        }
    }
    let data = (!data.is_empty()).then(|| data.join("\n"));
    (name, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_across_chunks_and_line_endings() {
        let mut s = EventSplitter::default();
        assert!(
            s.push(b"event: endpoint\r\ndata: /m?session_id=1\r")
                .is_empty()
        );
        let events = s.push(b"\n\r\ndata: {\"a\":1}\n\ndata: par");
        assert_eq!(
            events,
            vec![
                "event: endpoint\ndata: /m?session_id=1\n\n",
                "data: {\"a\":1}\n\n"
            ]
        );
        assert_eq!(s.pending(), "data: par".len());
        assert_eq!(s.push(b"t\r\rdata: x"), vec!["data: part\n\n"]);
        assert_eq!(s.finish(), "data: x");
    }

    #[test]
    fn parses_events() {
        assert_eq!(
            parse_event("event: message\nid: 3\ndata: {\"a\":\ndata: 1}\n\n"),
            (Some("message"), Some("{\"a\":\n1}".to_string()))
        );
        assert_eq!(parse_event(": ping\n\n"), (None, None));
    }
}
