#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
//! A flood of made-up bearer tokens from one network, end to end: real Envoy with the
//! built filter, the real `tollgate-quota` service verifying keys. The network gets the
//! limit of failed credentials' worth of key verifications, and then 429s without any;
//! a good key from another network goes on as before.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{json, Value};
use tollgate_testkit::envoy::{default_plugin_config, Envoy, EnvoyOptions};
use tollgate_testkit::quota_service::QuotaService;

const IMAGES: &str = "/v1/images/generations";
/// Made-up tokens sent: each one distinct.
const FLOOD: u64 = 50_000;
const CONNECTIONS: u64 = 8;
/// Failed credentials a network may send: 20 (refilled one per 3 min, none during the test).
const ALLOWED: u64 = 20;

/// Status codes of `count` POSTs with distinct made-up tokens over one keep-alive connection.
fn flood(port: u16, connection: u64, count: u64, statuses: &[AtomicU64; 3]) {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_nodelay(true).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    for i in 0..count {
        let request = format!(
            "POST {IMAGES} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tg_flood_{connection}_{i}_x7Qd\r\nContent-Length: 0\r\n\r\n"
        );
        writer.write_all(request.as_bytes()).unwrap();
        let (status, length) = read_head(&mut reader);
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let slot = match status {
            429 => 0,
            401 => 1,
            _ => 2,
        };
        statuses[slot].fetch_add(1, Ordering::Relaxed);
    }
}

/// A response's status and `content-length`.
fn read_head(reader: &mut impl BufRead) -> (u16, usize) {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status = line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut length = 0;
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            return (status, length);
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap();
            }
        }
    }
}

/// Key verifications the quota service answered, from its metrics.
fn verifications(service: &QuotaService) -> u64 {
    service
        .metrics()
        .lines()
        .filter(|l| l.starts_with("tollgate_quota_requests_total") && l.contains(r#"endpoint="/v1/keys/verify""#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn a_flood_of_made_up_tokens_from_one_network_makes_at_most_the_allowed_verifications() {
    let service = QuotaService::start("memory");
    let mut config = default_plugin_config();
    config["quota_service"] = json!({ "cluster": "tollgate_quota", "timeout_ms": 1000 });
    config["identity"]["failed_credentials"] = json!({ "limit": ALLOWED, "window": "1h" });
    let envoy = Envoy::start(EnvoyOptions {
        plugin_config: Some(config.to_string()),
        quota_port: Some(service.port),
        xff_trusted_hops: 1,
        ..EnvoyOptions::default()
    });
    let (_, token) = service.create_key("premium", "acme");
    let good = format!("Bearer {token}");

    // The flood comes from 127.0.0.1 (no X-Forwarded-For), over 8 connections.
    let statuses = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
    std::thread::scope(|s| {
        for connection in 0..CONNECTIONS {
            let statuses = &statuses;
            s.spawn(move || flood(envoy.port, connection, FLOOD / CONNECTIONS, statuses));
        }
    });
    let [limited, unauthenticated, other] = statuses.map(|s| s.into_inner());
    assert_eq!(other, 0, "only 429 and 401");
    assert_eq!(unauthenticated, ALLOWED, "the allowed failures were checked and answered 401");
    assert_eq!(limited, FLOOD - ALLOWED);
    assert_eq!(verifications(&service), ALLOWED, "one verification per allowed failure, none past it");
    assert_eq!(envoy.counter("tollgate.requests.none.credentials_limited"), Some(FLOOD - ALLOWED));
    assert_eq!(envoy.counter("tollgate.quota.verifications_full"), Some(0));

    // The limited network's next made-up token: a 429 that says what to do.
    let r = envoy.request("POST", IMAGES, &[("authorization", "Bearer tg_one_more_token")]);
    assert_eq!(r.status, 429);
    assert!(r.header("retry-after").is_some_and(|s| s.parse::<u64>().unwrap() > 0));
    let body: Value = r.json();
    assert_eq!(body["error"]["code"], "too_many_failed_credentials");

    // A good key from another network: verified and metered as usual.
    let from_elsewhere = [("authorization", good.as_str()), ("x-forwarded-for", "203.0.113.50")];
    let r = envoy.request("POST", IMAGES, &from_elsewhere);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-ratelimit-limit"), Some("100"));
    assert_eq!(verifications(&service), ALLOWED + 1);
    assert!(!envoy.log().contains(&token), "the token is never logged");
    // Refusal lines are limited per worker: far fewer than the refusals.
    let lines = envoy.log().matches("decision=credentials_limited").count() as u64;
    assert!(lines > 0 && lines * 10 < limited, "{lines} refusal lines for {limited} refusals");
    assert!(envoy.log().contains("refusal lines suppressed"));
}
