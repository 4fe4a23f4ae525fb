use super::*;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

const TIERS: &str = include_str!("../../fixtures/good/tiers.json");
const MINIMAL: &str = include_str!("../../fixtures/good/minimal.json");

/// Each bad fixture, the path the error must name, and a piece of what it must say.
const BAD: &[(&str, &str, &str, &str)] = &[
    (
        "window_unit",
        include_str!("../../fixtures/bad/window_unit.json"),
        "tiers.free.limits[1].window",
        "expected a duration like 10s, 1m, 1h, 1d",
    ),
    (
        "window_zero",
        include_str!("../../fixtures/bad/window_zero.json"),
        "tiers.free.limits[0].window",
        "expected a duration",
    ),
    (
        "window_too_long",
        include_str!("../../fixtures/bad/window_too_long.json"),
        "tiers.free.limits[0].window",
        "at most 366d",
    ),
    (
        "unknown_field",
        include_str!("../../fixtures/bad/unknown_field.json"),
        "tiers.free.limits[0].brust",
        "unknown field `brust`, expected one of `name`, `limit`, `window`, `algorithm`, `burst`",
    ),
    (
        "unknown_top_level_field",
        include_str!("../../fixtures/bad/unknown_top_level_field.json"),
        "tier",
        "unknown field `tier`",
    ),
    (
        "negative_limit",
        include_str!("../../fixtures/bad/negative_limit.json"),
        "tiers.free.limits[0].limit",
        "invalid value: integer `-5`",
    ),
    ("zero_limit", include_str!("../../fixtures/bad/zero_limit.json"), "tiers.free.limits[0].limit", "from 1 to"),
    ("zero_burst", include_str!("../../fixtures/bad/zero_burst.json"), "tiers.free.limits[0].burst", "from 1 to"),
    (
        "lease_block_too_big",
        include_str!("../../fixtures/bad/lease_block_too_big.json"),
        "tiers.free.limits[0].lease_block",
        "half the limit's capacity (50)",
    ),
    (
        "short_service_token",
        include_str!("../../fixtures/bad/short_service_token.json"),
        "quota_service.token",
        "16 to 1024 visible ASCII characters",
    ),
    (
        "service_token_with_space",
        include_str!("../../fixtures/bad/service_token_with_space.json"),
        "quota_service.token",
        "(no spaces)",
    ),
    (
        "burst_on_fixed_window",
        include_str!("../../fixtures/bad/burst_on_fixed_window.json"),
        "tiers.free.limits[0].burst",
        "only to the token_bucket",
    ),
    (
        "unknown_algorithm",
        include_str!("../../fixtures/bad/unknown_algorithm.json"),
        "tiers.free.limits[0].algorithm",
        "expected `token_bucket` or `fixed_window`",
    ),
    (
        "duplicate_limit_name",
        include_str!("../../fixtures/bad/duplicate_limit_name.json"),
        "tiers.free.limits[1].name",
        "duplicate limit name \"rpm\"",
    ),
    ("bad_limit_name", include_str!("../../fixtures/bad/bad_limit_name.json"), "tiers.free.limits[0].name", "a-z, 0-9"),
    ("no_limits", include_str!("../../fixtures/bad/no_limits.json"), "tiers.free.limits", "1 to 16 limits"),
    ("no_tiers", include_str!("../../fixtures/bad/no_tiers.json"), "tiers", "at least one tier"),
    ("missing_tiers", include_str!("../../fixtures/bad/missing_tiers.json"), "", "missing field `tiers`"),
    ("bad_tier_name", include_str!("../../fixtures/bad/bad_tier_name.json"), "tiers.Free Tier", "a-z, 0-9"),
    ("reserved_tier_name", include_str!("../../fixtures/bad/reserved_tier_name.json"), "tiers.none", "reserved"),
    (
        "unknown_anonymous_tier",
        include_str!("../../fixtures/bad/unknown_anonymous_tier.json"),
        "identity.anonymous.tier",
        "unknown tier \"gratis\"; defined tiers: free",
    ),
    (
        "bad_api_key_header",
        include_str!("../../fixtures/bad/bad_api_key_header.json"),
        "identity.api_key_header",
        "lower-case header name",
    ),
    (
        "api_key_header_authorization",
        include_str!("../../fixtures/bad/api_key_header_authorization.json"),
        "identity.api_key_header",
        "other than authorization",
    ),
    (
        "ipv6_prefix_too_long",
        include_str!("../../fixtures/bad/ipv6_prefix_too_long.json"),
        "identity.ipv6_prefix",
        "0 to 128",
    ),
    (
        "ipv4_prefix_too_long",
        include_str!("../../fixtures/bad/ipv4_prefix_too_long.json"),
        "identity.ipv4_prefix",
        "0 to 32",
    ),
    ("bad_sha256", include_str!("../../fixtures/bad/bad_sha256.json"), "keys[0].sha256", "64 hex digits"),
    (
        "duplicate_key_id",
        include_str!("../../fixtures/bad/duplicate_key_id.json"),
        "keys[1].id",
        "duplicate key id \"a\"",
    ),
    ("duplicate_key_hash", include_str!("../../fixtures/bad/duplicate_key_hash.json"), "keys[1].sha256", "same hash"),
    (
        "unknown_key_tier",
        include_str!("../../fixtures/bad/unknown_key_tier.json"),
        "keys[0].tier",
        "unknown tier \"gold\"",
    ),
    ("no_routes", include_str!("../../fixtures/bad/no_routes.json"), "routes", "at least one route"),
    (
        "route_without_path",
        include_str!("../../fixtures/bad/route_without_path.json"),
        "routes[0]",
        "exactly one of path_prefix or path",
    ),
    (
        "route_with_both_paths",
        include_str!("../../fixtures/bad/route_with_both_paths.json"),
        "routes[0]",
        "exactly one of path_prefix or path",
    ),
    (
        "relative_path",
        include_str!("../../fixtures/bad/relative_path.json"),
        "routes[0].path_prefix",
        "starting with '/'",
    ),
    (
        "lower_case_method",
        include_str!("../../fixtures/bad/lower_case_method.json"),
        "routes[0].methods[0]",
        "upper-case method",
    ),
    (
        "unknown_route_limit",
        include_str!("../../fixtures/bad/unknown_route_limit.json"),
        "routes[0].limits[0]",
        "no tier defines a limit named \"rph\"",
    ),
    (
        "cost_exceeds_burst",
        include_str!("../../fixtures/bad/cost_exceeds_burst.json"),
        "routes[0].cost",
        "could never be admitted",
    ),
    ("bad_mode", include_str!("../../fixtures/bad/bad_mode.json"), "mode", "expected `enforce` or `shadow`"),
    (
        "bad_contention_policy",
        include_str!("../../fixtures/bad/bad_contention_policy.json"),
        "store.on_contention",
        "expected `allow` or `deny`",
    ),
    (
        "zero_tracked_keys",
        include_str!("../../fixtures/bad/zero_tracked_keys.json"),
        "store.max_tracked_keys",
        "from 1 to",
    ),
    (
        "retry_wait_too_long",
        include_str!("../../fixtures/bad/retry_wait_too_long.json"),
        "headers.max_retry_wait_ms",
        "expected milliseconds from 0 to 3600000",
    ),
    (
        "wrong_type",
        include_str!("../../fixtures/bad/wrong_type.json"),
        "tiers.free.limits[0].limit",
        "invalid type: string \"five\"",
    ),
    ("trailing_garbage", include_str!("../../fixtures/bad/trailing_garbage.json"), "", "trailing characters"),
    ("not_json", include_str!("../../fixtures/bad/not_json.json"), "", "expected ident"),
];

#[test]
fn every_bad_fixture_names_its_field() {
    let mut wrong = Vec::new();
    for (name, json, path, message) in BAD {
        match Config::from_json(json.as_bytes()) {
            Ok(_) => wrong.push(format!("{name}: accepted")),
            Err(e) => {
                let actual = if e.path == "." { "" } else { e.path.as_str() };
                if actual != *path || !e.message.contains(message) {
                    wrong.push(format!("{name}: got {e:?}, want path {path:?} and {message:?}"));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[cfg(not(target_arch = "wasm32"))]
#[test]
fn every_bad_fixture_file_is_in_the_table() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/bad");
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().trim_end_matches(".json").to_owned())
        .collect();
    files.sort();
    let mut listed: Vec<String> = BAD.iter().map(|(n, ..)| (*n).to_owned()).collect();
    listed.sort();
    assert_eq!(files, listed);
}

#[test]
fn the_error_reads_path_colon_message() {
    let e = Config::from_json(BAD[0].1.as_bytes()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "tiers.free.limits[1].window: expected a duration like 10s, 1m, 1h, 1d (at most 366d), got \"10x\""
    );
}

#[test]
fn the_full_example_is_valid() {
    let c = Config::from_json(TIERS.as_bytes()).unwrap();
    let names: Vec<&str> = c.tiers.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["basic", "enterprise", "free", "premium", "pro"]);
    assert_eq!(c.identity.anonymous_tier.map(|t| c.tiers[t].name.as_str()), Some("free"));
    assert_eq!(c.keys.len(), 2);
    assert_eq!(c.routes.len(), 3);
}

#[test]
fn defaults_fill_what_is_left_out() {
    let c = Config::from_json(MINIMAL.as_bytes()).unwrap();
    assert_eq!(c.mode, Mode::Enforce);
    assert_eq!(c.identity.api_key_header.as_deref(), Some("x-api-key"));
    assert_eq!(c.identity.anonymous_tier, None);
    assert_eq!((c.identity.ipv4_prefix, c.identity.ipv6_prefix), (32, 64));
    assert!(c.headers.ietf && c.headers.x_ratelimit && !c.headers.problem_json);
    assert_eq!(c.headers.max_retry_wait_ms, 60_000);
    assert_eq!(c.store.slots, 100_000);
    let failed = c.identity.failed_credentials.as_ref().unwrap();
    assert_eq!((failed.quota, failed.window.secs, failed.burst()), (20, 60, None));
    assert_eq!(c.logs.max_refusal_lines_per_second, 10);
    assert!(c.logs.caller_name_key.is_none());
    assert_eq!(c.store.on_contention, ContentionPolicy::Allow);
    assert_eq!(c.routes[0].cost, 1);
    let rpm = &c.tiers[0].limits[0];
    assert_eq!(rpm.kind, LimitKind::TokenBucket { capacity: 60, interval_ns: 1_000_000_000, depth_ns: 60_000_000_000 });
}

#[test]
fn token_bucket_interval_rounds_up() {
    // 100 per minute: 600 ms a token. 3 per 10 s: 3.333… s, rounded up so a window never refills more than 3.
    let c = Config::from_json(TIERS.as_bytes()).unwrap();
    let basic = &c.tiers[0].limits[0];
    assert_eq!(basic.kind, LimitKind::TokenBucket { capacity: 20, interval_ns: 600_000_000, depth_ns: 12_000_000_000 });
    assert_eq!(basic.burst(), Some(20));
    let json = MINIMAL.replace("\"limit\": 60, \"window\": \"1m\"", "\"limit\": 3, \"window\": \"10s\"");
    let c = Config::from_json(json.as_bytes()).unwrap();
    let LimitKind::TokenBucket { interval_ns, .. } = c.tiers[0].limits[0].kind else { panic!() };
    assert_eq!(interval_ns, 3_333_333_334);
}

#[test]
fn windows_parse_in_four_units() {
    assert_eq!(parse_window("10s"), Some(10));
    assert_eq!(parse_window("1m"), Some(60));
    assert_eq!(parse_window("2h"), Some(7200));
    assert_eq!(parse_window("1d"), Some(86_400));
    assert_eq!(parse_window("366d"), Some(366 * 86_400));
    for bad in ["", "s", "1", "1w", "1.5m", "-1m", "0s", "367d", "1 m", " 1m", "99999999999d", "1é"] {
        assert_eq!(parse_window(bad), None, "{bad:?}");
    }
}

#[test]
fn routes_match_first_by_prefix_method_and_exact_path() {
    let c = Config::from_json(TIERS.as_bytes()).unwrap();
    assert_eq!(c.route("POST", "/v1/images/generations?n=2").map(|r| r.cost), Some(1));
    assert!(c.route("GET", "/v1/images/generations").is_none(), "method not listed");
    assert_eq!(c.route("GET", "/healthz").map(|r| r.cost), Some(0));
    assert!(c.route("GET", "/other").is_none());
    let exact = MINIMAL.replace("\"path_prefix\": \"/\"", "\"path\": \"/exact\"");
    let c = Config::from_json(exact.as_bytes()).unwrap();
    assert!(c.route("GET", "/exact").is_some());
    assert!(c.route("GET", "/exact?x=1").is_some());
    assert!(c.route("GET", "/exactly").is_none());
}

#[test]
fn route_limits_select_by_name_per_tier() {
    let c = Config::from_json(TIERS.as_bytes()).unwrap();
    let chat = &c.routes[1];
    let free = c.tiers.iter().position(|t| t.name == "free").unwrap();
    let premium = c.tiers.iter().position(|t| t.name == "premium").unwrap();
    let basic = c.tiers.iter().position(|t| t.name == "basic").unwrap();
    assert_eq!(chat.applies[free], 0b10, "only the free tier's burst limit");
    assert_eq!(chat.applies[premium], 0, "premium has neither rpm nor burst");
    assert_eq!(chat.applies[basic], 0b1);
    assert_eq!(c.routes[0].applies[free], 0b11, "no names: every limit");
}

#[test]
fn key_hashes_are_found_whatever_the_hex_case() {
    let json = MINIMAL.replace(
        "\"tiers\"",
        "\"keys\": [ { \"id\": \"k\", \"sha256\": \"ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789\", \"tier\": \"free\" } ], \"tiers\"",
    );
    let c = Config::from_json(json.as_bytes()).unwrap();
    let mut hash = [0u8; 32];
    for (i, b) in hash.iter_mut().enumerate() {
        *b = [0xab, 0xcd, 0xef, 0x01, 0x23, 0x45, 0x67, 0x89][i % 8];
    }
    assert_eq!(c.key_by_hash(&hash).map(|k| k.id.as_str()), Some("k"));
    assert!(c.key_by_hash(&[0; 32]).is_none());
}

#[test]
fn a_changed_definition_changes_the_fingerprint() {
    let a = Config::from_json(MINIMAL.as_bytes()).unwrap();
    let b = Config::from_json(MINIMAL.replace("60", "61").as_bytes()).unwrap();
    let a2 = Config::from_json(MINIMAL.as_bytes()).unwrap();
    assert_ne!(a.tiers[0].limits[0].fingerprint, b.tiers[0].limits[0].fingerprint);
    assert_eq!(a.tiers[0].limits[0].fingerprint, a2.tiers[0].limits[0].fingerprint);
}

#[test]
fn fields_read_as_serde_would() {
    let with = |field: &str| MINIMAL.replacen('{', &format!("{{ {field},"), 1);
    let c = Config::from_json(with("\"identity\": { \"api_key_header\": null }").as_bytes()).unwrap();
    assert_eq!(c.identity.api_key_header, None, "null turns API keys off; absent is x-api-key");
    let e = Config::from_json(with("\"mode\": \"shadow\", \"mode\": \"enforce\"").as_bytes()).unwrap_err();
    assert_eq!((e.path.as_str(), e.message.as_str()), ("", "duplicate field `mode`"));
    let e = Config::from_json(with("\"store\": { \"cas_retries\": 1e3 }").as_bytes()).unwrap_err();
    assert_eq!(
        (e.path.as_str(), e.message.as_str()),
        ("store.cas_retries", "invalid type: floating point `1000.0`, expected u32")
    );
    let e = Config::from_json(with("\"identity\": { \"ipv4_prefix\": 300 }").as_bytes()).unwrap_err();
    assert_eq!(e.message, "invalid value: integer `300`, expected u8");
    let e = Config::from_json(with("\"headers\": null").as_bytes()).unwrap_err();
    assert_eq!((e.path.as_str(), e.message.as_str()), ("headers", "invalid type: null, expected an object"));
    let e = Config::from_json(with("\"keys\": [ { \"id\": \"a\", \"tier\": \"free\" } ]").as_bytes()).unwrap_err();
    assert_eq!((e.path.as_str(), e.message.as_str()), ("keys[0]", "missing field `sha256`"));
}

#[test]
fn a_syntax_error_names_where_it_is() {
    let json = MINIMAL.replacen("\"1m\"", "1m", 1);
    let e = Config::from_json(json.as_bytes()).unwrap_err();
    assert_eq!(e.path, "tiers.free.limits[0].window", "{e}");
    assert!(e.message.contains("line"), "serde_json's position is kept: {e}");
}

#[test]
fn the_service_token_becomes_a_bearer_header_that_debug_does_not_show() {
    let token = "s3cret-service-token-0123456789";
    let json = format!(
        r#"{{ "tiers": {{ "free": {{ "limits": [ {{ "name": "day", "limit": 100, "window": "1d", "scope": "global" }} ] }} }},
             "routes": [ {{ "path_prefix": "/" }} ], "quota_service": {{ "cluster": "q", "token": "{token}" }} }}"#
    );
    let config = Config::from_json(json.as_bytes()).unwrap();
    let quota = config.quota.as_ref().unwrap();
    assert_eq!(quota.authorization.as_ref().map(|a| a.value()), Some(format!("Bearer {token}").as_str()));
    assert!(!format!("{config:?}").contains(token));
    let tree: super::json::Json = serde_json::from_str(&json).unwrap();
    let raw = super::raw::RawConfig::from_json(&tree, super::json::Path::Root).unwrap();
    assert!(format!("{raw:?}").contains("<redacted>") && !format!("{raw:?}").contains(token));
    let bad = json.replace(token, "short-but-secret");
    let bad = bad.replace("short-but-secret", "sh0rt secret");
    let e = Config::from_json(bad.as_bytes()).unwrap_err().to_string();
    assert!(e.starts_with("quota_service.token: ") && !e.contains("sh0rt"), "{e}");
    let without = json.replace(&format!(r#", "token": "{token}""#), "");
    assert!(Config::from_json(without.as_bytes()).unwrap().quota.unwrap().authorization.is_none());
}

#[test]
fn the_fields_of_failing_credentials_and_logs_read_as_serde_would() {
    let with = |field: &str| MINIMAL.replacen('{', &format!("{{ {field},"), 1);
    let c = Config::from_json(with(r#""identity": { "failed_credentials": null }"#).as_bytes()).unwrap();
    assert!(c.identity.failed_credentials.is_none(), "null turns the limit off; absent is 20 a minute");
    let c =
        Config::from_json(with(r#""identity": { "failed_credentials": { "limit": 5, "window": "10s" } }"#).as_bytes())
            .unwrap();
    let failed = c.identity.failed_credentials.as_ref().unwrap();
    assert_eq!((failed.quota, failed.window.secs, failed.window.text.as_str()), (5, 10, "10s"));
    let e = Config::from_json(with(r#""identity": { "failed_credentials": { "limit": 5 } }"#).as_bytes()).unwrap_err();
    assert_eq!((e.path.as_str(), e.message.as_str()), ("identity.failed_credentials", "missing field `window`"));
    let e =
        Config::from_json(with(r#""identity": { "failed_credentials": { "limit": 5, "window": "1x" } }"#).as_bytes())
            .unwrap_err();
    assert_eq!(e.path, "identity.failed_credentials.window");
    let e = Config::from_json(with(r#""logs": { "max_lines": 1 }"#).as_bytes()).unwrap_err();
    assert_eq!(
        (e.path.as_str(), e.message.as_str()),
        ("logs.max_lines", "unknown field `max_lines`, expected `max_refusal_lines_per_second` or `caller_name_key`")
    );
    let e = Config::from_json(with(r#""logs": { "max_refusal_lines_per_second": -1 }"#).as_bytes()).unwrap_err();
    assert_eq!(
        (e.path.as_str(), e.message.as_str()),
        ("logs.max_refusal_lines_per_second", "invalid value: integer `-1`, expected u32")
    );
    let key = "caller-name-key-0123456789abcdef";
    let json = with(&format!(r#""logs": {{ "max_refusal_lines_per_second": 0, "caller_name_key": "{key}" }}"#));
    let c = Config::from_json(json.as_bytes()).unwrap();
    assert_eq!(c.logs.max_refusal_lines_per_second, 0);
    assert_eq!(c.logs.caller_name_key.as_ref().map(|k| k.expose()), Some(key.as_bytes()));
    let tree: super::json::Json = serde_json::from_str(&json).unwrap();
    let raw = super::raw::RawConfig::from_json(&tree, super::json::Path::Root).unwrap();
    assert!(!format!("{c:?}").contains(key) && !format!("{raw:?}").contains(key));
    let e = Config::from_json(with(r#""headers": { "max_retry_wait_ms": "1s" }"#).as_bytes()).unwrap_err();
    assert_eq!(
        (e.path.as_str(), e.message.as_str()),
        ("headers.max_retry_wait_ms", r#"invalid type: string "1s", expected u64"#)
    );
    let quota = r#""quota_service": { "cluster": "q", "max_pending_callouts": 50 }"#;
    let c = Config::from_json(with(quota).as_bytes()).unwrap();
    assert_eq!(c.quota.as_ref().map(|q| q.max_pending_verifications), Some(50), "100, or fewer if callouts are");
    let quota = r#""quota_service": { "cluster": "q", "max_pending_verifications": null }"#;
    let c = Config::from_json(with(quota).as_bytes()).unwrap();
    assert_eq!(c.quota.as_ref().map(|q| q.max_pending_verifications), Some(100));
    let quota = r#""quota_service": { "cluster": "q", "max_pending_verifications": 7 }"#;
    let c = Config::from_json(with(quota).as_bytes()).unwrap();
    assert_eq!(c.quota.as_ref().map(|q| q.max_pending_verifications), Some(7));
    let quota = r#""quota_service": { "cluster": "q", "max_pending_verifications": 2000 }"#;
    let e = Config::from_json(with(quota).as_bytes()).unwrap_err();
    assert_eq!(e.path, "quota_service.max_pending_verifications");
}
