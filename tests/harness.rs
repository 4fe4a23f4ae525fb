#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
//! The test harness itself, against Envoy without the filter.

use tollgate_testkit::envoy::{sha256_hex, Envoy, EnvoyOptions};

fn plain_envoy() -> Envoy {
    Envoy::start(EnvoyOptions { with_filter: false, ..EnvoyOptions::default() })
}

#[test]
fn serves_the_stand_in_routes() {
    let envoy = plain_envoy();

    let health = envoy.request("GET", "/healthz", &[]);
    assert_eq!(health.status, 200);
    assert_eq!(health.body, "ok");

    let image = envoy.request("POST", "/v1/images/generations", &[("content-type", "application/json")]);
    assert_eq!(image.status, 200);
    assert_eq!(image.header("Content-Type"), Some("application/json"));
    assert!(image.json()["data"].is_array());

    let chat = envoy.request_with_body("POST", "/v1/chat/completions", &[], r#"{"model":"m"}"#);
    assert_eq!(chat.status, 200);
    assert_eq!(chat.json()["object"], "chat.completion");

    assert_eq!(envoy.request("GET", "/nope", &[]).status, 404);
}

#[test]
fn raw_requests_allow_duplicate_headers() {
    let envoy = plain_envoy();

    let reply = envoy.raw("GET /healthz HTTP/1.1\nHost: x\nX-Api-Key: a\nX-Api-Key: b");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "ok");

    let post = envoy.raw("POST /v1/chat/completions HTTP/1.1\nHost: x\nContent-Length: 2\n\n{}");
    assert_eq!(post.status, 200);
    assert_eq!(post.json()["object"], "chat.completion");

    // A header line without a colon is rejected by Envoy's codec.
    assert_eq!(envoy.raw("GET /healthz HTTP/1.1\nHost: x\nbroken header").status, 400);
}

#[test]
fn admin_stats_are_readable() {
    let envoy = plain_envoy();
    envoy.request("GET", "/healthz", &[]);
    assert!(envoy.counter("http.ingress.downstream_rq_total").is_some_and(|n| n >= 1));
    assert!(envoy.stats_prometheus().contains("envoy_http_downstream_rq_total"));
    assert!(envoy.log().contains("starting main dispatch loop"));
}

#[test]
fn sha256_hex_matches_the_demo_keys() {
    assert_eq!(
        sha256_hex("tg_demo_premium_0123456789"),
        "5e835bfb9cded82e934ed4218eb233151e8932ab8cd7c5d5835c7fe344c6c70e"
    );
}
