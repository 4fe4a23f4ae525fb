use super::*;
use crate::cost::usage;
use crate::cost::Usage;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

fn events(chunks: &[&[u8]]) -> Vec<String> {
    let mut scanner = Scanner::default();
    let mut out = Vec::new();
    for chunk in chunks {
        scanner.feed(chunk, |data| out.push(String::from_utf8_lossy(data).into_owned()));
    }
    out
}

const CHAT: &[u8] = b"data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n\
data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2}}\n\n\
data: [DONE]\n\n";

#[test]
fn events_are_read_whole_however_the_stream_is_cut() {
    let whole = events(&[CHAT]);
    assert_eq!(whole.len(), 3);
    assert_eq!(whole[2], "[DONE]");
    for cut in 0..CHAT.len() {
        let (a, b) = CHAT.split_at(cut);
        assert_eq!(events(&[a, b]), whole, "cut at {cut}");
    }
    let bytes: Vec<&[u8]> = CHAT.chunks(1).collect();
    assert_eq!(events(&bytes), whole, "a byte at a time");
}

#[test]
fn crlf_multi_line_data_and_other_fields() {
    let stream = b"event: message_delta\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\n: a comment\n\nid: 7\ndata:x\n\n";
    assert_eq!(events(&[stream]), ["{\"a\":\n1}", "x"]);
}

#[test]
fn usage_split_across_chunks_is_found() {
    let mut scanner = Scanner::default();
    let mut found = None;
    let (a, b) = CHAT.split_at(CHAT.len() - 30);
    for chunk in [a, b] {
        scanner.feed(chunk, |data| found = usage::read(data).or(found));
    }
    assert_eq!(found, Some(Usage { input_tokens: 9, output_tokens: 2 }));
}

#[test]
fn an_event_longer_than_the_cap_is_dropped_and_the_next_is_read() {
    let mut long = b"data: ".to_vec();
    long.extend(std::iter::repeat_n(b'x', MAX_EVENT_BYTES + 5000));
    long.extend_from_slice(b"\n\ndata: after\n\n");
    let chunks: Vec<&[u8]> = long.chunks(1000).collect();
    let read = events(&chunks);
    assert_eq!(read.iter().map(String::len).collect::<Vec<_>>(), [5], "only `after` is read");
}

#[cfg(not(target_arch = "wasm32"))]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn any_bytes_cut_anywhere_never_panic_and_read_the_same(
            bytes in prop::collection::vec(prop::sample::select(b"data: {}\r\n:x".to_vec()), 0..400),
            cut in 0usize..400,
        ) {
            let cut = cut.min(bytes.len());
            let (a, b) = bytes.split_at(cut);
            prop_assert_eq!(events(&[a, b]), events(&[&bytes]));
        }
    }
}
