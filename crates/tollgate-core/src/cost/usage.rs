//! What a response says was used: the `usage` object of a JSON response body or of a
//! streamed event, under the names each API gives it.
//!
//! - OpenAI Chat Completions and Embeddings: `usage.prompt_tokens`,
//!   `usage.completion_tokens`; a streamed chat's last event before `[DONE]` carries it
//!   when asked for (`stream_options.include_usage`), earlier ones `"usage": null`.
//! - OpenAI Responses: `usage.input_tokens`, `usage.output_tokens`; streamed, in the
//!   `response.completed` event's `response.usage`.
//! - Anthropic Messages: `usage.input_tokens`, `usage.output_tokens`; streamed,
//!   `message_start` carries `message.usage` and `message_delta` the cumulative `usage`.

use serde::Deserialize;

use super::Usage;

#[derive(Deserialize)]
struct Carrier {
    #[serde(default)]
    usage: Option<Counts>,
    /// Responses' `response.completed` event.
    #[serde(default)]
    response: Option<Inner>,
    /// Anthropic's `message_start` event.
    #[serde(default)]
    message: Option<Inner>,
}

#[derive(Deserialize)]
struct Inner {
    #[serde(default)]
    usage: Option<Counts>,
}

#[derive(Deserialize)]
struct Counts {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
}

impl Counts {
    fn usage(&self) -> Usage {
        Usage {
            input_tokens: self.input_tokens.or(self.prompt_tokens).unwrap_or(0),
            output_tokens: self.output_tokens.or(self.completion_tokens).unwrap_or(0),
        }
    }
}

/// The usage a JSON document (a response body, or one streamed event's data) reports;
/// `None` when it reports none or is not a JSON object.
pub fn read(json: &[u8]) -> Option<Usage> {
    let carrier: Carrier = serde_json::from_slice(json).ok()?;
    let found = [carrier.usage, carrier.response.and_then(|r| r.usage), carrier.message.and_then(|m| m.usage)];
    found.iter().flatten().map(Counts::usage).reduce(Usage::merge)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn usage(input_tokens: u64, output_tokens: u64) -> Option<Usage> {
        Some(Usage { input_tokens, output_tokens })
    }

    #[test]
    fn every_api_names_its_counts_its_own_way() {
        let chat = br#"{"id":"c","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":30,"total_tokens":42}}"#;
        assert_eq!(read(chat), usage(12, 30));
        let embeddings = br#"{"data":[],"usage":{"prompt_tokens":8,"total_tokens":8}}"#;
        assert_eq!(read(embeddings), usage(8, 0));
        let responses = br#"{"type":"response.completed","response":{"usage":{"input_tokens":5,"output_tokens":7}}}"#;
        assert_eq!(read(responses), usage(5, 7));
        let start = br#"{"type":"message_start","message":{"usage":{"input_tokens":25,"output_tokens":1}}}"#;
        assert_eq!(read(start), usage(25, 1));
        let delta = br#"{"type":"message_delta","delta":{},"usage":{"output_tokens":15}}"#;
        assert_eq!(read(delta), usage(0, 15));
    }

    #[test]
    fn no_usage_is_none() {
        assert_eq!(read(br#"{"choices":[{"delta":{"content":"hi"}}],"usage":null}"#), None);
        assert_eq!(read(b"[DONE]"), None);
        assert_eq!(read(b"not json"), None);
        assert_eq!(read(br#"{"usage":"twelve"}"#), None);
    }
}
