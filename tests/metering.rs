#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
//! Limits of images and tokens in a real Envoy: a metered route's body sets what a request
//! reserves, and the response (JSON or server-sent events from the stand-in upstream)
//! settles it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{json, Value};
use tollgate_testkit::envoy::{Envoy, EnvoyOptions};
use tollgate_testkit::http::Reply;
use tollgate_testkit::wait::Wait;

const IMAGES: &str = "/v1/images/generations";
const CHAT: &str = "/v1/chat/completions";

fn plugin_config() -> Value {
    json!({
        "identity": { "anonymous": { "tier": "free" } },
        "tiers": { "free": { "limits": [
            { "name": "images-per-day", "limit": 5, "window": "1d", "algorithm": "fixed_window", "unit": "images" },
            { "name": "tokens-per-day", "limit": 100000, "window": "1d", "algorithm": "fixed_window", "unit": "tokens" }
        ] } },
        "routes": [
            { "path": IMAGES, "meter": "openai_images", "max_body_bytes": 2048 },
            { "path": CHAT, "meter": "openai_chat", "max_body_bytes": 4096 },
            { "path_prefix": "/" }
        ]
    })
}

fn envoy() -> Envoy {
    // A metered route must have an upstream that waits for the body (a direct response
    // is sent before it is read).
    Envoy::start(EnvoyOptions {
        plugin_config: Some(plugin_config().to_string()),
        images_upstream: true,
        ..EnvoyOptions::default()
    })
}

fn post(envoy: &Envoy, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    envoy.request_with_body("POST", path, headers, body)
}

/// `r=` of a limit in the `RateLimit` header.
fn remaining(reply: &Reply, limit: &str) -> u64 {
    let header = reply.header("ratelimit").unwrap_or_else(|| panic!("no RateLimit header: {reply:?}"));
    let item = header.split(", ").find(|i| i.starts_with(&format!("\"{limit}\""))).unwrap();
    item.split(";r=").nth(1).unwrap().split(';').next().unwrap().parse().unwrap()
}

#[test]
fn five_images_a_day_are_counted_from_n() {
    let envoy = envoy();
    let first = post(&envoy, IMAGES, &[], r#"{"prompt":"a cat","n":3}"#);
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(remaining(&first, "images-per-day"), 2);
    assert!(first.json()["data"].is_array(), "the upstream's body passes through");

    let second = post(&envoy, IMAGES, &[], r#"{"prompt":"a cat","n":3}"#);
    assert_eq!(second.status, 429, "{}", second.body);
    let error = &second.json()["error"];
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("allows 5 images per 1d; this request would use 3 images; 2 are left"), "{message}");
    assert_eq!((error["unit"].as_str(), error["remaining"].as_u64()), (Some("images"), Some(2)));
    assert!(second.header("retry-after").is_some());

    let third = post(&envoy, IMAGES, &[], r#"{"prompt":"a cat","n":2}"#);
    assert_eq!(third.status, 200, "{}", third.body);
    assert_eq!(remaining(&third, "images-per-day"), 0);
    assert_eq!(envoy.counter("tollgate.requests.free.allowed"), Some(2));
    assert_eq!(envoy.counter("tollgate.requests.free.limited"), Some(1));
}

#[test]
fn bad_and_oversized_bodies_get_json_errors() {
    let envoy = envoy();
    let malformed = post(&envoy, IMAGES, &[], r#"{"prompt": "a cat", "n": "#);
    assert_eq!(malformed.status, 400, "{}", malformed.body);
    assert_eq!(malformed.json()["error"]["code"], "invalid_request_body");
    let wrong_type = post(&envoy, IMAGES, &[], r#"{"prompt":"a cat","n":"three"}"#);
    assert_eq!(wrong_type.status, 400);
    assert!(wrong_type.json()["error"]["message"].as_str().unwrap().contains("at `n`"), "{}", wrong_type.body);

    let huge = format!(r#"{{"prompt":"{}"}}"#, "x".repeat(5000));
    let too_large = post(&envoy, IMAGES, &[], &huge);
    assert_eq!(too_large.status, 413, "{}", too_large.body);
    assert_eq!(too_large.header("content-type"), Some("application/json"));
    assert_eq!(too_large.json()["error"]["code"], "request_body_too_large");

    let never = post(&envoy, IMAGES, &[], r#"{"prompt":"a cat","n":6}"#);
    assert_eq!(never.status, 400, "{}", never.body);
    assert_eq!(never.json()["error"]["code"], "exceeds_limit");
    assert_eq!(never.header("retry-after"), None);

    // Nothing above was charged; the Envoy is still serving.
    let ok = post(&envoy, IMAGES, &[], r#"{"prompt":"a cat","n":5}"#);
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(envoy.counter("tollgate.requests.none.bad_request"), Some(3));
}

/// Tokens reserved and charged so far, from the stats.
fn tokens(envoy: &Envoy) -> (u64, u64) {
    let reserved = envoy.counter("tollgate.units.free.tokens.reserved").unwrap_or(0);
    let charged = envoy.counter("tollgate.units.free.tokens.charged").unwrap_or(0);
    (reserved, charged)
}

/// Waits for one more settlement and returns (reserved, charged) of it.
fn next_settlement(envoy: &Envoy, before: (u64, u64), settlements_before: u64) -> (u64, u64) {
    Wait::new("the request to be settled").until(|| settlements(envoy) > settlements_before);
    let after = tokens(envoy);
    (after.0 - before.0, after.1 - before.1)
}

/// Settlements so far: a reservation is counted once settled, even of 0 tokens charged.
fn settlements(envoy: &Envoy) -> u64 {
    envoy.counter("tollgate.settle.settled").unwrap_or(0)
}

const PROMPT: &str = r#"[{"role":"user","content":"Say hi"}]"#;

fn chat(max_tokens: u64, stream: Option<bool>) -> String {
    let mut body =
        json!({ "model": "m", "messages": serde_json::from_str::<Value>(PROMPT).unwrap(), "max_tokens": max_tokens });
    if let Some(include_usage) = stream {
        body["stream"] = json!(true);
        if include_usage {
            body["stream_options"] = json!({ "include_usage": true });
        }
    }
    body.to_string()
}

#[test]
fn tokens_are_reserved_then_settled_to_the_reported_usage() {
    let envoy = envoy();
    let prompt_tokens = PROMPT.len().div_ceil(4) as u64;
    let reserved = prompt_tokens + 100;

    // A JSON response with usage: charged what it reports (10 in, 40 out by default).
    let (before, n) = (tokens(&envoy), settlements(&envoy));
    let reply = post(&envoy, CHAT, &[], &chat(100, None));
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["usage"]["completion_tokens"], 40, "the upstream's body passes through");
    assert_eq!(remaining(&reply, "tokens-per-day"), 100_000 - reserved, "the reservation");
    assert_eq!(next_settlement(&envoy, before, n), (reserved, 50));

    // A stream that asks for usage: its final event (split across two writes) settles it,
    // and the client gets the stream as the upstream sent it.
    let (before, n) = (tokens(&envoy), settlements(&envoy));
    let headers = [("x-standin-output-tokens", "70")];
    let stream = post(&envoy, CHAT, &headers, &chat(100, Some(true)));
    assert_eq!(stream.header("content-type"), Some("text/event-stream"));
    let events: Vec<&str> = stream.body.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), 8, "6 deltas, the usage event and [DONE]: {:?}", stream.body);
    assert_eq!(events.last(), Some(&"data: [DONE]"));
    assert_eq!(next_settlement(&envoy, before, n), (reserved, 80));

    // An overrun is charged too.
    let (before, n) = (tokens(&envoy), settlements(&envoy));
    let over = post(&envoy, CHAT, &[("x-standin-output-tokens", "250")], &chat(100, None));
    assert_eq!(over.status, 200);
    assert_eq!(next_settlement(&envoy, before, n), (reserved, 260));

    // What the next request sees: every settlement above, and its own reservation.
    let next = post(&envoy, CHAT, &[], &chat(100, None));
    assert_eq!(remaining(&next, "tokens-per-day"), 100_000 - 50 - 80 - 260 - reserved);
}

#[test]
fn missing_usage_failures_and_aborted_streams_settle_by_the_rules() {
    let envoy = envoy();
    let reserved = PROMPT.len().div_ceil(4) as u64 + 100;

    // A stream whose usage never comes (the upstream leaves it out) keeps the reservation.
    let (before, n) = (tokens(&envoy), settlements(&envoy));
    let stream = post(&envoy, CHAT, &[("x-standin-no-usage", "1")], &chat(100, Some(true)));
    assert!(stream.body.ends_with("data: [DONE]\n\n"), "{}", stream.body);
    assert_eq!(next_settlement(&envoy, before, n), (reserved, reserved));

    // The upstream fails: nothing was used, the reservation is refunded.
    let (before, n) = (tokens(&envoy), settlements(&envoy));
    let failed = post(&envoy, CHAT, &[("x-standin-status", "500")], &chat(100, None));
    assert_eq!(failed.status, 500);
    assert_eq!(next_settlement(&envoy, before, n), (reserved, 0));

    // The client leaves mid-stream: the stream never reported usage, the reservation stands.
    let (before, n) = (tokens(&envoy), settlements(&envoy));
    let body = chat(100, Some(true));
    let mut client = TcpStream::connect(("127.0.0.1", envoy.port)).unwrap();
    client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        client,
        "POST {CHAT} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nx-standin-stall-after: 2\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&received).contains(" is\"") {
        let n = client.read(&mut buf).unwrap();
        assert!(n > 0, "the stream ended early: {}", String::from_utf8_lossy(&received));
        received.extend_from_slice(&buf[..n]);
    }
    drop(client);
    assert_eq!(next_settlement(&envoy, before, n), (reserved, reserved));
}

#[test]
fn a_stream_without_usage_is_asked_for_it_and_the_client_gets_the_stream_it_asked_for() {
    let envoy = envoy();
    let reserved = PROMPT.len().div_ceil(4) as u64 + 100;
    let (before, n) = (tokens(&envoy), settlements(&envoy));
    // The client streams without stream_options: tollgate asks upstream for the usage...
    let stream = post(&envoy, CHAT, &[("x-standin-output-tokens", "30")], &chat(100, Some(false)));
    assert_eq!(stream.status, 200);
    // ...settles to it (10 in, 30 out) ...
    assert_eq!(next_settlement(&envoy, before, n), (reserved, 40));
    // ...and takes the usage event out: the 6 deltas and [DONE], as the client asked.
    let events: Vec<&str> = stream.body.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), 7, "{:?}", stream.body);
    assert!(!stream.body.contains("\"usage\":{"), "{}", stream.body);
    assert_eq!(events.last(), Some(&"data: [DONE]"));
}

#[test]
fn a_body_followed_by_trailers_is_metered_when_the_trailers_come() {
    let envoy = Envoy::start(EnvoyOptions {
        plugin_config: Some(plugin_config().to_string()),
        images_upstream: true,
        http1_trailers: true,
        ..EnvoyOptions::default()
    });
    let body = r#"{"prompt":"a cat","n":2}"#;
    let request = |body: &str| {
        format!(
            "POST {IMAGES} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\
             trailer: x-checksum\r\nconnection: close\r\n\r\n{:x}\r\n{body}\r\n0\r\nx-checksum: 1\r\n\r\n",
            body.len()
        )
    };
    // Without the trailers callback the body would wait for an end that never comes.
    let reply = envoy.raw_exact(request(body).as_bytes());
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(remaining(&reply, "images-per-day"), 3);
}
