//! The HTTP API in process (`tower::ServiceExt::oneshot`): statuses, JSON bodies, auth,
//! metrics, readiness.

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use tollgate_quota::app::{router, ServiceAccess, Settings};
use tollgate_quota::keys::KnownTiers;
use tollgate_quota::store::{MemoryStore, RedisStore};
use tollgate_testkit::redis::Redis;

const ADMIN: &str = "admin-secret-for-tests";
const SERVICE: &str = "service-secret-for-tests";

fn settings(admin: Option<&str>) -> Settings {
    Settings {
        admin_token: admin.map(str::to_owned),
        service_access: ServiceAccess::Token(SERVICE.to_owned()),
        tiers: KnownTiers::Any,
    }
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text))
    }

    /// Asserts a JSON error body and returns (code, message).
    fn error(&self) -> (String, String) {
        assert_eq!(
            self.headers.get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap()),
            Some("application/json"),
            "{}",
            self.text
        );
        let body = self.json();
        (body["error"]["code"].as_str().unwrap().to_owned(), body["error"]["message"].as_str().unwrap().to_owned())
    }
}

async fn send(app: &Router, method: &str, uri: &str, auth: Option<&str>, body: impl Into<Body>) -> Reply {
    let mut request = Request::builder().method(method).uri(uri).header(header::CONTENT_TYPE, "application/json");
    if let Some(token) = auth {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let response = app.clone().oneshot(request.body(body.into()).unwrap()).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Reply { status, headers, text: String::from_utf8(bytes.to_vec()).unwrap() }
}

/// POST with the service token, as the filter does.
async fn post(app: &Router, uri: &str, body: Value) -> Reply {
    send(app, "POST", uri, Some(SERVICE), body.to_string()).await
}

fn memory_app() -> Router {
    router(MemoryStore::new(), settings(Some(ADMIN)))
}

/// A fixed window of 366 days: epoch-aligned, it does not roll over during a test.
fn day(limit: u64) -> Value {
    json!({ "name": "images-per-day", "algorithm": "fixed_window", "limit": limit, "window_secs": 31_622_400 })
}

#[tokio::test]
async fn a_check_answers_every_limit_in_request_order() {
    let app = memory_app();
    let body = json!({ "key": "free/ip:203.0.113.7/32", "cost": 1,
                       "limits": [day(2), { "name": "burst", "limit": 2, "window_secs": 10 }] });
    for remaining in [1, 0] {
        let r = post(&app, "/v1/check", body.clone()).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let v = r.json();
        assert_eq!(v["admitted"], true);
        assert_eq!(v["limits"][0]["name"], "images-per-day");
        assert_eq!(v["limits"][0]["remaining"], remaining);
        assert_eq!(v["limits"][1]["name"], "burst");
    }
    let r = post(&app, "/v1/check", body).await;
    assert_eq!(r.status, StatusCode::OK, "a refusal is an answer, not an HTTP error");
    let v = r.json();
    assert_eq!(v["admitted"], false);
    assert!(v["limits"][0]["retry_after_ms"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn invalid_requests_are_json_400s_that_name_the_field() {
    let app = memory_app();
    let cases = [
        (
            json!({ "key": "free/ip:1", "cost": 1, "limits": [day(5), { "name": "b", "limit": 5, "window_secs": 0 }] }),
            "limits[1].window: ",
        ),
        (
            json!({ "key": "free/ip:1", "cost": 1, "limits": [{ "name": "b", "limit": "5", "window_secs": 1 }] }),
            "limits[0].limit: invalid type",
        ),
        (
            json!({ "key": "free/ip:1", "cost": 1, "limits": [{ "name": "b", "limit": 5, "window_secs": 1, "x": 1 }] }),
            "limits[0]",
        ),
        (
            json!({ "key": "free/ip:1", "cost": 1, "limits": [{ "name": "B", "limit": 5, "window_secs": 1 }] }),
            "limits[0].name: ",
        ),
        (json!({ "key": "free/ip:1", "cost": 1, "limits": [day(5), day(5)] }), "limits[1].name: duplicate"),
        (json!({ "key": "", "cost": 1, "limits": [day(5)] }), "key: "),
        (json!({ "key": "free/ip:1", "cost": 2_000_000_000u64, "limits": [day(5)] }), "cost: "),
        (json!({ "key": "free/ip:1", "cost": -1, "limits": [day(5)] }), "cost: "),
        (json!({ "key": "free/ip:1", "cost": 1, "limits": [] }), "limits: "),
        (json!({ "key": "free/ip:1", "cost": 1 }), "body: missing field `limits`"),
        (json!("text"), "body: invalid type"),
    ];
    for (body, expected) in cases {
        let r = post(&app, "/v1/check", body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text);
        let (code, message) = r.error();
        assert_eq!(code, "invalid_request");
        assert!(message.starts_with(expected), "{body}: {message:?} should start with {expected:?}");
    }
}

#[tokio::test]
async fn a_return_gives_back_units_a_check_took() {
    let app = memory_app();
    let bucket = json!({ "name": "burst", "limit": 10, "window_secs": 3600 });
    let check = json!({ "key": "free/ip:203.0.113.7/32", "cost": 3, "limits": [day(5), bucket] });
    let taken = post(&app, "/v1/check", check.clone()).await.json();
    assert_eq!(taken["admitted"], true);
    assert_eq!(taken["limits"][0]["remaining"], 2);
    let window = taken["limits"][0]["window"].as_u64().expect("a fixed window answers its window");
    assert!(taken["limits"][1].get("window").is_none(), "a token bucket has none: {taken}");

    let body = json!({ "key": "free/ip:203.0.113.7/32", "units": 2, "limits": [day(5), bucket],
                       "windows": [window, null] });
    let r = post(&app, "/v1/return", body.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json(), json!({ "returned": [2, 2] }));
    let read_only = json!({ "key": "free/ip:203.0.113.7/32", "cost": 0, "limits": [day(5), bucket] });
    let read = post(&app, "/v1/check", read_only).await.json();
    assert_eq!(read["limits"][0]["remaining"], 4);

    let stale = json!({ "key": "free/ip:203.0.113.7/32", "units": 1, "limits": [day(5), bucket],
                        "windows": [window - 1, null] });
    assert_eq!(post(&app, "/v1/return", stale).await.json(), json!({ "returned": [0, 1] }));

    for (body, expected) in [
        (json!({ "key": "free/ip:1", "units": 1, "limits": [day(5)], "windows": [] }), "windows: "),
        (json!({ "key": "free/ip:1", "units": 1, "limits": [day(5)], "windows": [null] }), "windows[0]: "),
        (json!({ "key": "free/ip:1", "units": 1, "limits": [day(5)] }), "body: missing field `windows`"),
        (json!({ "key": "free/ip:1", "units": -1, "limits": [day(5)], "windows": [1] }), "units: "),
    ] {
        let r = post(&app, "/v1/return", body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text);
        let (code, message) = r.error();
        assert_eq!(code, "invalid_request");
        assert!(message.starts_with(expected), "{body}: {message:?} should start with {expected:?}");
    }
    let metrics = send(&app, "GET", "/metrics", None, "").await.text;
    for expected in [
        r#"tollgate_quota_returns_total{tier="free"} 2"#,
        r#"tollgate_quota_returned_units_total{tier="free"} 5"#,
        r#"tollgate_quota_store_latency_seconds_count{op="return"} 2"#,
        r#"tollgate_quota_requests_total{endpoint="/v1/return",status="200"} 2"#,
        r#"tollgate_quota_requests_total{endpoint="/v1/return",status="400"} 4"#,
    ] {
        assert!(metrics.contains(expected), "{expected} missing from\n{metrics}");
    }
    let r = send(&app, "GET", "/v1/return", None, "").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn a_settlement_charges_what_was_used_once() {
    let app = memory_app();
    let key = "pro/key:acme";
    let tokens = json!({ "name": "tokens", "algorithm": "fixed_window", "limit": 1000, "window_secs": 31_622_400 });
    let limits = json!([day(5), tokens]);
    let check = json!({ "key": key, "cost": 1, "limits": limits, "costs": [1, 400] });
    let taken = post(&app, "/v1/check", check).await.json();
    assert_eq!(taken["admitted"], true, "{taken}");
    assert_eq!(taken["limits"][1]["remaining"], 600, "the tokens limit is charged its own cost");
    let windows = json!([taken["limits"][0]["window"], taken["limits"][1]["window"]]);

    let body = json!({ "key": key, "id": "r-0123456789abcdef", "limits": limits, "windows": windows,
                       "reserved": [1, 400], "used": [1, 150] });
    let r = post(&app, "/v1/settle", body.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json(), json!({ "applied": true }));
    let again = post(&app, "/v1/settle", body).await;
    assert_eq!((again.status, again.json()), (StatusCode::OK, json!({ "applied": false })));
    let read = json!({ "key": key, "cost": 0, "limits": limits });
    assert_eq!(post(&app, "/v1/check", read).await.json()["limits"][1]["remaining"], 850, "refunded once");

    for (body, expected) in [
        (
            json!({ "key": key, "id": "short", "limits": limits, "windows": windows, "reserved": [1, 1], "used": [1, 1] }),
            "id: expected 16 to 64 characters",
        ),
        (
            json!({ "key": key, "id": "r-0123456789abcdef", "limits": limits, "windows": windows,
                    "reserved": [1], "used": [1, 1] }),
            "reserved: expected one entry per limit (2), got 1",
        ),
        (
            json!({ "key": key, "id": "r-0123456789abcdef", "limits": limits, "windows": windows,
                    "reserved": [1, 1], "used": [1, -1] }),
            "used[1]: invalid value",
        ),
        (
            json!({ "key": key, "id": "r-0123456789abcdef", "limits": limits, "windows": [null, null],
                    "reserved": [1, 1], "used": [1, 1] }),
            "windows[0]: ",
        ),
        (
            json!({ "key": key, "id": "r-0123456789abcdef", "limits": limits, "windows": windows }),
            "body: missing field",
        ),
        (
            json!({ "key": key, "cost": 1, "limits": limits, "costs": [1, 2, 3] }),
            "costs: expected one entry per limit (2), got 3",
        ),
        (json!({ "key": key, "cost": 1, "limits": limits, "costs": [1, 1001] }), "costs[1]: 1001 exceeds"),
    ] {
        let uri = if body.get("id").is_some() { "/v1/settle" } else { "/v1/check" };
        let r = post(&app, uri, body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text);
        let (code, message) = r.error();
        assert_eq!(code, "invalid_request");
        assert!(message.starts_with(expected), "{body}: {message:?} should start with {expected:?}");
    }
    let metrics = send(&app, "GET", "/metrics", None, "").await.text;
    for expected in [
        r#"tollgate_quota_settlements_total{tier="pro",outcome="applied"} 1"#,
        r#"tollgate_quota_settlements_total{tier="pro",outcome="replayed"} 1"#,
        r#"tollgate_quota_store_latency_seconds_count{op="settle"} 2"#,
        r#"tollgate_quota_requests_total{endpoint="/v1/settle",status="200"} 2"#,
        r#"tollgate_quota_requests_total{endpoint="/v1/settle",status="400"} 5"#,
    ] {
        assert!(metrics.contains(expected), "{expected} missing from\n{metrics}");
    }
    assert_eq!(send(&app, "GET", "/v1/settle", None, "").await.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn malformed_json_is_a_json_400_and_a_huge_body_a_json_413() {
    let app = memory_app();
    for body in ["{\"key\": ", "not json", "", "nul", r#"{"key":"a/b","cost":1,"limits":[]} x"#] {
        let r = send(&app, "POST", "/v1/check", Some(SERVICE), body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body:?}");
        let (code, message) = r.error();
        assert_eq!(code, "invalid_json", "{body:?}: {message}");
    }
    let huge = format!(r#"{{"key":"{}"}}"#, "a".repeat(70 * 1024));
    let r = send(&app, "POST", "/v1/check", Some(SERVICE), huge).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.error().0, "body_too_large");
}

#[tokio::test]
async fn admin_endpoints_need_the_admin_token() {
    let app = memory_app();
    for (method, uri, body) in [
        ("GET", "/v1/keys", String::new()),
        ("POST", "/v1/keys", json!({ "tier": "premium", "name": "x" }).to_string()),
        ("DELETE", "/v1/keys/key_0", String::new()),
        ("GET", "/v1/usage/free%2Fip%3A1", String::new()),
    ] {
        for auth in [None, Some("wrong-token")] {
            let r = send(&app, method, uri, auth, body.clone()).await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{method} {uri} with {auth:?}");
            assert_eq!(r.error().0, "unauthorized");
            assert!(r.headers.get(header::WWW_AUTHENTICATE).is_some());
        }
    }
    let r = send(&app, "GET", "/v1/keys", Some(ADMIN), "").await;
    assert_eq!(r.status, StatusCode::OK);

    let without_admin = router(MemoryStore::new(), settings(None));
    let r = send(&without_admin, "GET", "/v1/keys", Some(ADMIN), "").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let (code, message) = r.error();
    assert_eq!(code, "admin_disabled");
    assert!(message.contains("no admin token is configured"), "{message}");
    let check = json!({ "key": "free/ip:1", "cost": 1, "limits": [day(5)] });
    assert_eq!(post(&without_admin, "/v1/check", check).await.status, StatusCode::OK, "checks need no admin");
}

#[tokio::test]
async fn the_filters_endpoints_need_the_service_token() {
    let app = memory_app();
    let check = json!({ "key": "free/ip:203.0.113.7/32", "cost": 1, "limits": [day(5)] });
    let first = post(&app, "/v1/check", check.clone()).await.json();
    let window = first["limits"][0]["window"].clone();
    let give_back = json!({ "key": "free/ip:203.0.113.7/32", "units": 1, "limits": [day(5)], "windows": [window] });
    let verify = json!({ "sha256": "a".repeat(64) });
    for (uri, body) in [("/v1/check", &check), ("/v1/return", &give_back), ("/v1/keys/verify", &verify)] {
        for auth in [None, Some("wrong-service-token"), Some(ADMIN)] {
            let r = send(&app, "POST", uri, auth, body.to_string()).await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{uri} with {auth:?}: {}", r.text);
            let (code, message) = r.error();
            assert_eq!(code, "unauthorized");
            assert!(message.contains("service token"), "{message}");
            assert!(r.headers.get(header::WWW_AUTHENTICATE).is_some());
        }
        assert_eq!(post(&app, uri, body.clone()).await.status, StatusCode::OK, "{uri} with the token");
    }
    // Refused returns gave nothing back: only the one admitted return did.
    let usage = send(&app, "GET", "/v1/usage/free%2Fip%3A203.0.113.7%2F32", Some(ADMIN), "").await.json();
    assert_eq!(usage["limits"][0]["used"], 1, "{usage}");
    let metrics = send(&app, "GET", "/metrics", None, "").await.text;
    assert!(metrics.contains(r#"tollgate_quota_requests_total{endpoint="/v1/return",status="401"} 3"#), "{metrics}");

    let open = router(
        MemoryStore::new(),
        Settings { admin_token: None, service_access: ServiceAccess::Open, tiers: KnownTiers::Any },
    );
    let r = send(&open, "POST", "/v1/check", None, check.to_string()).await;
    assert_eq!(r.status, StatusCode::OK, "--insecure-no-auth: {}", r.text);
}

#[tokio::test]
async fn keys_are_made_only_for_the_deployments_tiers() {
    let tiers = KnownTiers::parse_list("free,pro").unwrap();
    let app = router(MemoryStore::new(), Settings { tiers, ..settings(Some(ADMIN)) });
    let r = send(&app, "POST", "/v1/keys", Some(ADMIN), json!({ "tier": "gold", "name": "acme" }).to_string()).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    let (code, message) = r.error();
    assert_eq!(code, "invalid_request");
    assert_eq!(message, "tier: unknown tier \"gold\"; this deployment's tiers: free, pro");
    let r = send(&app, "POST", "/v1/keys", Some(ADMIN), json!({ "tier": "pro", "name": "acme" }).to_string()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let listed = send(&app, "GET", "/v1/keys", Some(ADMIN), "").await.json();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "the refused key was not stored: {listed}");
}

#[tokio::test]
async fn keys_are_created_verified_listed_and_revoked_over_http() {
    let app = memory_app();
    let r = send(&app, "POST", "/v1/keys", Some(ADMIN), json!({ "tier": "premium", "name": "acme" }).to_string()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let created = r.json();
    let (id, token) = (created["id"].as_str().unwrap(), created["token"].as_str().unwrap());
    assert!(token.starts_with("tg_"));
    let sha256 = tollgate_quota::keys::sha256_hex(token.as_bytes());

    let verified = post(&app, "/v1/keys/verify", json!({ "sha256": sha256 })).await.json();
    assert_eq!(verified, json!({ "known": true, "id": id, "tier": "premium" }));
    let upper = post(&app, "/v1/keys/verify", json!({ "sha256": sha256.to_uppercase() })).await.json();
    assert_eq!(upper["known"], true, "hex is case-insensitive");

    let listed = send(&app, "GET", "/v1/keys", Some(ADMIN), "").await;
    assert!(!listed.text.contains(token) && !listed.text.contains(&sha256), "no token, no hash in listings");
    assert_eq!(listed.json()[0]["id"], id);
    assert_eq!(listed.json()[0]["name"], "acme");

    assert_eq!(send(&app, "DELETE", &format!("/v1/keys/{id}"), Some(ADMIN), "").await.status, StatusCode::NO_CONTENT);
    assert_eq!(post(&app, "/v1/keys/verify", json!({ "sha256": sha256 })).await.json(), json!({ "known": false }));
    let again = send(&app, "DELETE", &format!("/v1/keys/{id}"), Some(ADMIN), "").await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    assert_eq!(again.error().0, "not_found");
}

#[tokio::test]
async fn bad_key_requests_name_the_field() {
    let app = memory_app();
    for (body, expected) in [
        (json!({ "tier": "Premium!", "name": "x" }), "tier: "),
        (json!({ "tier": "premium", "name": "" }), "name: "),
        (json!({ "tier": "premium", "name": "a\u{7}b" }), "name: "),
        (json!({ "tier": "premium", "name": "acme\u{202E}gpj.exe" }), "name: expected printable"),
        (json!({ "tier": "premium", "name": "a\u{200B}" }), "name: expected printable"),
        (json!({ "tier": "premium", "name": "x".repeat(129) }), "name: expected 1 to 128 characters"),
        (json!({ "tier": "premium" }), "body: missing field `name`"),
    ] {
        let r = send(&app, "POST", "/v1/keys", Some(ADMIN), body.to_string()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        assert!(r.error().1.starts_with(expected), "{body}: {}", r.text);
    }
    for sha in ["abc", &"g".repeat(64), &"a".repeat(65)] {
        let r = post(&app, "/v1/keys/verify", json!({ "sha256": sha })).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert!(r.error().1.starts_with("sha256: expected 64 hex digits"), "{}", r.text);
    }
}

#[tokio::test]
async fn usage_takes_the_key_url_encoded_or_as_path_segments() {
    let app = memory_app();
    let check = json!({ "key": "free/ip:203.0.113.7/32", "cost": 2, "limits": [day(5)] });
    assert_eq!(post(&app, "/v1/check", check).await.status, StatusCode::OK);
    for uri in ["/v1/usage/free%2Fip%3A203.0.113.7%2F32", "/v1/usage/free/ip:203.0.113.7/32"] {
        let r = send(&app, "GET", uri, Some(ADMIN), "").await;
        assert_eq!(r.status, StatusCode::OK, "{uri}: {}", r.text);
        let usage = r.json();
        assert_eq!(usage["key"], "free/ip:203.0.113.7/32");
        assert_eq!(usage["limits"][0]["used"], 2);
        assert_eq!(usage["limits"][0]["remaining"], 3);
        assert_eq!(usage["limits"][0]["algorithm"], "fixed_window");
    }
    let unknown = send(&app, "GET", "/v1/usage/free%2Fip%3A198.51.100.1", Some(ADMIN), "").await.json();
    assert_eq!(unknown["limits"], json!([]));
    let bad = send(&app, "GET", "/v1/usage/nokey", Some(ADMIN), "").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.error().1.starts_with("key: "));
}

#[tokio::test]
async fn unknown_paths_and_methods_are_json_errors() {
    let app = memory_app();
    let r = send(&app, "GET", "/v2/nothing", None, "").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.error().0, "not_found");
    let r = send(&app, "GET", "/v1/check", None, "").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.error().0, "method_not_allowed");
}

#[tokio::test]
async fn metrics_count_decisions_store_calls_and_requests() {
    let app = memory_app();
    let body = json!({ "key": "premium/key:acme", "cost": 1, "limits": [day(1)] });
    post(&app, "/v1/check", body.clone()).await;
    post(&app, "/v1/check", body).await;
    post(&app, "/v1/check", json!({ "key": "" })).await;
    assert_eq!(send(&app, "GET", "/healthz", None, "").await.status, StatusCode::OK);
    assert_eq!(send(&app, "GET", "/readyz", None, "").await.status, StatusCode::OK);
    let r = send(&app, "GET", "/metrics", None, "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("application/openmetrics-text"));
    for expected in [
        r#"tollgate_quota_decisions_total{tier="premium",outcome="admitted"} 1"#,
        r#"tollgate_quota_decisions_total{tier="premium",outcome="limited"} 1"#,
        r#"tollgate_quota_store_latency_seconds_bucket{"#,
        r#"tollgate_quota_store_latency_seconds_count{op="check"} 2"#,
        r#"tollgate_quota_store_errors_total"#,
        r#"tollgate_quota_requests_total{endpoint="/v1/check",status="200"} 2"#,
        r#"tollgate_quota_requests_total{endpoint="/v1/check",status="400"} 1"#,
        r#"tollgate_quota_requests_total{endpoint="/readyz",status="200"} 1"#,
    ] {
        assert!(r.text.contains(expected), "{expected} missing from\n{}", r.text);
    }
}

#[tokio::test]
async fn every_route_is_counted_under_its_own_endpoint_label() {
    let app = memory_app();
    let routes = [
        ("POST", "/v1/check", "/v1/check"),
        ("POST", "/v1/return", "/v1/return"),
        ("POST", "/v1/settle", "/v1/settle"),
        ("GET", "/v1/keys", "/v1/keys"),
        ("POST", "/v1/keys/verify", "/v1/keys/verify"),
        ("DELETE", "/v1/keys/k1", "/v1/keys/{id}"),
        ("GET", "/v1/usage/free/ip:198.51.100.1", "/v1/usage/{*key}"),
        ("GET", "/healthz", "/healthz"),
        ("GET", "/readyz", "/readyz"),
    ];
    for (method, uri, _) in routes {
        send(&app, method, uri, None, "").await;
    }
    let text = send(&app, "GET", "/metrics", None, "").await.text;
    for (_, _, endpoint) in routes {
        let label = format!(r#"tollgate_quota_requests_total{{endpoint="{endpoint}","#);
        assert!(text.contains(&label), "{label} missing from\n{text}");
    }
    assert!(!text.contains(r#"endpoint="other""#), "a route counted as other:\n{text}");
}

#[tokio::test]
async fn a_redis_that_is_down_makes_readyz_and_checks_503_with_retry_after() {
    let mut server = Redis::start();
    let app = router(RedisStore::open(&server.url().parse().unwrap()).unwrap(), settings(Some(ADMIN)));
    assert_eq!(send(&app, "GET", "/readyz", None, "").await.status, StatusCode::OK);
    server.kill();

    let ready = send(&app, "GET", "/readyz", None, "").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.headers[header::RETRY_AFTER], "1");
    assert_eq!(ready.error().0, "store_unavailable");
    let check = post(&app, "/v1/check", json!({ "key": "free/ip:1", "cost": 1, "limits": [day(5)] })).await;
    assert_eq!(check.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(check.headers[header::RETRY_AFTER], "1");
    assert_eq!(check.error().0, "store_unavailable");
    assert_eq!(send(&app, "GET", "/healthz", None, "").await.status, StatusCode::OK, "alive, only not ready");
    let metrics = send(&app, "GET", "/metrics", None, "").await.text;
    assert!(metrics.contains(r#"tollgate_quota_store_errors_total{op="check"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"tollgate_quota_store_errors_total{op="ping"} 1"#), "{metrics}");

    server.restart();
    assert_eq!(send(&app, "GET", "/readyz", None, "").await.status, StatusCode::OK);
}
