//! Asking a streamed chat for its usage: OpenAI sends a stream's usage only when the
//! request says `stream_options.include_usage`. For a client that streams without it,
//! tollgate asks upstream ([`with_usage`]) so that the request can be settled to what it
//! used, and takes the usage event back out of the stream the client gets
//! ([`Stripper`]): the client receives the stream it asked for.

use serde::de::IgnoredAny;
use serde::Deserialize;

use super::body::read;
use super::sse::{data_of, event_end, MAX_EVENT_BYTES};
use super::Api;

/// The body of a streamed chat request that does not ask for its usage, asking for it;
/// `None` when the request does not stream, already says something of `stream_options`
/// (left as it is), or is not a chat request.
pub fn with_usage(api: Api, body: &[u8]) -> Option<Vec<u8>> {
    if api != Api::OpenaiChat {
        return None;
    }
    let demand = read(api, body).ok()?;
    if !demand.stream || demand.stream_options {
        return None;
    }
    // A JSON object: the field goes first, the rest follows untouched.
    let open = body.iter().position(|b| !b.is_ascii_whitespace()).filter(|&i| body.get(i) == Some(&b'{'))?;
    let rest = body.get(open + 1..)?;
    let empty = rest.iter().all(|b| b.is_ascii_whitespace() || *b == b'}');
    let mut out = Vec::with_capacity(body.len() + 48);
    out.extend_from_slice(body.get(..=open)?);
    out.extend_from_slice(br#""stream_options":{"include_usage":true}"#);
    if !empty {
        out.push(b',');
    }
    out.extend_from_slice(rest);
    Some(out)
}

/// Takes the usage event (`"choices": []` with a `usage`) out of a chat stream, passing
/// every other byte through in order. An unfinished event is held back until its end
/// arrives (or the stream ends).
#[derive(Debug, Default)]
pub struct Stripper {
    pending: Vec<u8>,
}

impl Stripper {
    /// The bytes to pass on for this chunk; `end`: the stream ends with it.
    pub fn pass(&mut self, chunk: &[u8], end: bool) -> Vec<u8> {
        self.pending.extend_from_slice(chunk);
        let mut out = Vec::with_capacity(self.pending.len());
        let mut start = 0;
        while let Some(end_of_event) = event_end(&self.pending, start) {
            if let Some(event) = self.pending.get(start..end_of_event) {
                if !is_usage_event(event) {
                    out.extend_from_slice(event);
                }
            }
            start = end_of_event;
        }
        self.pending.drain(..start.min(self.pending.len()));
        // What cannot be an event of ours (too long) or is the stream's last bytes goes on.
        if end || self.pending.len() > MAX_EVENT_BYTES {
            out.append(&mut self.pending);
        }
        out
    }
}

/// A streamed chat chunk, as far as telling the usage event apart goes.
#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Option<Vec<IgnoredAny>>,
    #[serde(default)]
    usage: Option<IgnoredAny>,
}

/// An event whose data is a chunk with no choices and a usage: the one that was asked for.
fn is_usage_event(event: &[u8]) -> bool {
    let data = data_of(event);
    serde_json::from_slice::<Chunk>(&data)
        .is_ok_and(|c| c.choices.is_some_and(|choices| choices.is_empty()) && c.usage.is_some())
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn a_streamed_chat_is_asked_for_its_usage_once() {
        let body = br#"{"model":"m","messages":[],"stream":true}"#;
        let asked: Value = serde_json::from_slice(&with_usage(Api::OpenaiChat, body).unwrap()).unwrap();
        assert_eq!(asked["stream_options"]["include_usage"], true);
        assert_eq!(asked["model"], "m");
        let options = br#"{"stream":true,"stream_options":{"include_usage":false}}"#;
        assert_eq!(with_usage(Api::OpenaiChat, options), None, "the client said no: left as it is");
        let spaced = with_usage(Api::OpenaiChat, b" { \"stream\" : true } ").unwrap();
        let spaced: Value = serde_json::from_slice(&spaced).unwrap();
        assert_eq!(spaced["stream_options"]["include_usage"], true);
        assert_eq!(with_usage(Api::OpenaiChat, br#"{"stream":true,"stream_options":{"include_usage":true}}"#), None);
        assert_eq!(with_usage(Api::OpenaiChat, br#"{"stream":false}"#), None);
        assert_eq!(with_usage(Api::AnthropicMessages, br#"{"stream":true}"#), None);
    }

    const STREAM: &[u8] = b"data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n\
data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2}}\n\n\
data: [DONE]\n\n";
    const WITHOUT: &[u8] = b"data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\ndata: [DONE]\n\n";

    #[test]
    fn the_usage_event_is_taken_out_however_the_stream_is_cut() {
        for cut in 0..=STREAM.len() {
            let (a, b) = STREAM.split_at(cut);
            let mut s = Stripper::default();
            let mut out = s.pass(a, false);
            out.extend(s.pass(b, true));
            assert_eq!(out, WITHOUT, "cut at {cut}");
        }
    }

    #[test]
    fn an_unfinished_stream_is_passed_on_at_its_end() {
        let mut s = Stripper::default();
        let mut out = s.pass(b"data: {\"choices\":[]", false);
        assert!(out.is_empty(), "held back until the event ends");
        out.extend(s.pass(b"}", true));
        assert_eq!(out, b"data: {\"choices\":[]}");
    }
}
