use super::*;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

#[test]
fn images_count_n_with_a_default_of_one() {
    let d = read(Api::OpenaiImages, br#"{"model":"gpt-image-1","prompt":"a cat","n":3,"size":"1024x1024"}"#).unwrap();
    assert_eq!((d.images, d.size.as_deref(), d.quality.as_deref()), (3, Some("1024x1024"), None));
    assert_eq!(read(Api::OpenaiImages, br#"{"prompt":"a cat"}"#).unwrap().images, 1);
    let e = read(Api::OpenaiImages, br#"{"prompt":"a cat","n":0}"#).unwrap_err();
    assert_eq!(e, BodyError::Invalid { field: "n", expected: "a whole number from 1 to 1000000000" });
}

#[test]
fn chat_reads_the_prompt_size_the_maximum_and_the_stream() {
    let body = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"Say \"hi\""}],"max_completion_tokens":100,"n":2,"stream":true,"stream_options":{"include_usage":true}}"#;
    let d = read(Api::OpenaiChat, body).unwrap();
    let messages = r#"[{"role":"user","content":"Say \"hi\""}]"#;
    assert_eq!(d.input_tokens, messages.len().div_ceil(4) as u64);
    assert_eq!(d.max_output_tokens, Some(200), "per choice");
    assert!(d.stream && d.include_usage);
    assert_eq!(d.model.as_deref(), Some("gpt-4o"));
    let legacy = read(Api::OpenaiChat, br#"{"model":"m","messages":[],"max_tokens":7}"#).unwrap();
    assert_eq!((legacy.max_output_tokens, legacy.stream), (Some(7), false));
    assert_eq!(read(Api::OpenaiChat, br#"{"messages":[]}"#).unwrap().max_output_tokens, None);
}

#[test]
fn responses_embeddings_and_anthropic() {
    let r = read(Api::OpenaiResponses, br#"{"model":"m","input":"hello world!","max_output_tokens":50}"#).unwrap();
    assert_eq!((r.input_tokens, r.max_output_tokens), (4, Some(50)), "\"hello world!\" is 14 bytes");
    let e = read(Api::OpenaiEmbeddings, br#"{"model":"m","input":["abcd","efgh"]}"#).unwrap();
    assert_eq!((e.input_tokens, e.max_output_tokens), (4, Some(0)));
    let a = read(
        Api::AnthropicMessages,
        br#"{"model":"c","max_tokens":1024,"system":"be brief","messages":[],"stream":true}"#,
    )
    .unwrap();
    assert_eq!((a.max_output_tokens, a.stream, a.input_tokens), (Some(1024), true, 3));
}

#[test]
fn bad_bodies_say_what_is_wrong() {
    let e = read(Api::OpenaiImages, b"{\"n\": 3").unwrap_err();
    assert!(matches!(e, BodyError::Malformed(_)), "{e:?}");
    let e = read(Api::OpenaiImages, br#"{"n":"3"}"#).unwrap_err();
    assert!(e.to_string().contains("at `n`"), "{e}");
    let e = read(Api::OpenaiChat, br#"{"stream_options":{"include_usage":"yes"}}"#).unwrap_err();
    assert!(e.to_string().contains("stream_options.include_usage"), "{e}");
    assert!(matches!(read(Api::OpenaiChat, b"[]"), Err(BodyError::Malformed(_))));
    assert!(matches!(read(Api::OpenaiChat, b"{} trailing"), Err(BodyError::Malformed(_))));
    assert!(matches!(read(Api::OpenaiChat, br#"{"max_tokens":-1}"#), Err(BodyError::Malformed(_))));
}

#[cfg(not(target_arch = "wasm32"))]
mod properties {
    use proptest::prelude::*;

    use super::*;

    const APIS: [Api; 5] =
        [Api::OpenaiImages, Api::OpenaiChat, Api::OpenaiResponses, Api::OpenaiEmbeddings, Api::AnthropicMessages];

    fn json_like() -> impl Strategy<Value = Vec<u8>> {
        let pieces = prop::sample::select(vec![
            "{",
            "}",
            "[",
            "]",
            ",",
            ":",
            "\"n\"",
            "\"max_tokens\"",
            "\"messages\"",
            "\"stream\"",
            "true",
            "0",
            "3",
            "-1",
            "1e3",
            "99999999999999999999",
            "\"x\\\"y\"",
            "null",
            "\"stream_options\"",
            " ",
        ]);
        prop::collection::vec(pieces, 0..40).prop_map(|p| p.concat().into_bytes())
    }

    proptest! {
        #[test]
        fn no_body_panics(body in prop::collection::vec(any::<u8>(), 0..300), api in 0usize..5) {
            let _ = read(APIS[api], &body);
        }

        #[test]
        fn no_json_like_body_panics(body in json_like(), api in 0usize..5) {
            let _ = read(APIS[api], &body);
        }
    }
}
