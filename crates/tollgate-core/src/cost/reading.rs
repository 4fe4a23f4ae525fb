//! A response read as it streams past, for the usage it reports: a JSON body is kept (up
//! to a bound) and read at its end; a stream of server-sent events is scanned event by
//! event, and only events that mention `usage` are parsed.

use super::sse::Scanner;
use super::{usage, Usage};

/// The most of a JSON response body kept to find its usage; a larger body's usage is
/// missing (and the reservation stands).
pub const MAX_JSON_BYTES: usize = 1024 * 1024;

/// The reading of one response.
#[derive(Debug)]
pub enum Reading {
    /// A JSON body, kept until its end.
    Json { body: Vec<u8>, overflowed: bool },
    /// Server-sent events, scanned as they pass; the usage seen so far.
    Events { scanner: Scanner, usage: Option<Usage> },
}

impl Reading {
    /// How to read a response whose `content-type` is this.
    pub fn for_content_type(content_type: Option<&str>) -> Reading {
        let events = content_type.is_some_and(|t| t.trim_start().to_ascii_lowercase().starts_with("text/event-stream"));
        if events {
            Reading::Events { scanner: Scanner::default(), usage: None }
        } else {
            Reading::Json { body: Vec::new(), overflowed: false }
        }
    }

    /// Reads the next chunk of the body.
    pub fn feed(&mut self, chunk: &[u8]) {
        match self {
            Reading::Json { body, overflowed } => {
                if *overflowed || body.len().saturating_add(chunk.len()) > MAX_JSON_BYTES {
                    *overflowed = true;
                    body.clear();
                } else {
                    body.extend_from_slice(chunk);
                }
            }
            Reading::Events { scanner, usage: seen } => scanner.feed(chunk, |data| {
                // Most events carry text, not usage: parse only those that name it.
                if mentions_usage(data) {
                    if let Some(u) = usage::read(data) {
                        *seen = Some(seen.map_or(u, |s| s.merge(u)));
                    }
                }
            }),
        }
    }

    /// The usage the response reported, read so far (all of it once the body has ended).
    pub fn usage(&self) -> Option<Usage> {
        match self {
            Reading::Json { body, overflowed: false } => usage::read(body),
            Reading::Json { overflowed: true, .. } => None,
            Reading::Events { usage, .. } => *usage,
        }
    }
}

/// Whether an event's data holds a usage object (`"usage": {`): OpenAI's chunks carry
/// `"usage": null` until the last, and parsing each of them would cost every chunk.
fn mentions_usage(data: &[u8]) -> bool {
    memchr::memmem::find_iter(data, b"\"usage\"").any(|at| {
        let after = data.get(at + 7..).unwrap_or_default();
        let mut rest = after.iter().skip_while(|b| b.is_ascii_whitespace());
        rest.next() == Some(&b':') && rest.find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn a_json_body_is_read_at_its_end_however_it_is_cut() {
        let body = br#"{"choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#;
        let mut r = Reading::for_content_type(Some("application/json"));
        let (a, b) = body.split_at(40);
        r.feed(a);
        assert_eq!(r.usage(), None, "not yet whole");
        r.feed(b);
        assert_eq!(r.usage(), Some(Usage { input_tokens: 3, output_tokens: 1 }));
    }

    #[test]
    fn anthropic_events_add_up_input_from_the_start_and_output_from_the_last_delta() {
        let stream = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"Hi\"}}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\n\n",
        );
        let mut r = Reading::for_content_type(Some("text/event-stream; charset=utf-8"));
        for chunk in stream.as_bytes().chunks(17) {
            r.feed(chunk);
        }
        assert_eq!(r.usage(), Some(Usage { input_tokens: 25, output_tokens: 15 }));
    }

    #[test]
    fn only_events_with_a_usage_object_are_read() {
        assert!(!mentions_usage(br#"{"choices":[{"delta":{"content":"x"}}],"usage":null}"#));
        assert!(!mentions_usage(br#"{"delta":{"content":"the "usage" of words"}}"#));
        assert!(mentions_usage(br#"{"choices":[],"usage" : {"prompt_tokens":1}}"#));
        assert!(mentions_usage(br#"{"usage":null,"x":{"usage":{"output_tokens":2}}}"#));
        let mut r = Reading::for_content_type(Some("text/event-stream"));
        r.feed(b"data: {\"usage\":null}\n\ndata: {\"usage\": {\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n");
        assert_eq!(r.usage(), Some(Usage { input_tokens: 3, output_tokens: 4 }));
    }

    #[test]
    fn a_body_over_the_bound_reports_no_usage() {
        let mut r = Reading::for_content_type(None);
        r.feed(&vec![b' '; MAX_JSON_BYTES]);
        r.feed(br#"{"usage":{"prompt_tokens":1}}"#);
        assert_eq!(r.usage(), None);
    }
}
