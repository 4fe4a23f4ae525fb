//! The `tollgate-quota` binary: help, the `keys` commands, serving.

use std::path::PathBuf;
use std::process::{Command, Output};

use tollgate_quota::keys::sha256_hex;
use tollgate_quota::store::{RedisStore, Store};
use tollgate_testkit::http;
use tollgate_testkit::quota_service::{QuotaOptions, QuotaService, ENV_VARS};
use tollgate_testkit::redis::Redis;

const BIN: &str = env!("CARGO_BIN_EXE_tollgate-quota");

fn bin() -> Command {
    let mut command = Command::new(BIN);
    for var in ENV_VARS {
        command.env_remove(var);
    }
    command
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn help_documents_every_flag_and_its_variable_without_showing_secrets() {
    let output = bin()
        .arg("--help")
        .env("TOLLGATE_QUOTA_ADMIN_TOKEN", "very-secret-admin-token")
        .env("TOLLGATE_QUOTA_SERVICE_TOKEN", "very-secret-service-token")
        .env("TOLLGATE_QUOTA_STORE", "redis://:hunter2@10.0.0.1:6380/0")
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = stdout(&output);
    for expected in [
        "--listen",
        "TOLLGATE_QUOTA_LISTEN",
        "127.0.0.1:8081",
        "--store",
        "TOLLGATE_QUOTA_STORE",
        "redis+cluster://",
        "--admin-token",
        "TOLLGATE_QUOTA_ADMIN_TOKEN",
        "--service-token",
        "TOLLGATE_QUOTA_SERVICE_TOKEN",
        "--service-token-file",
        "--insecure-no-auth",
        "--tiers",
        "--plugin-config",
        "keys",
    ] {
        assert!(help.contains(expected), "{expected} missing from --help:\n{help}");
    }
    assert!(!help.contains("very-secret-admin-token") && !help.contains("hunter2"), "{help}");
    assert!(!help.contains("very-secret-service-token"), "{help}");
    let keys_help = stdout(&run(&["keys", "--help"]));
    for expected in ["create", "list", "revoke"] {
        assert!(keys_help.contains(expected), "{keys_help}");
    }
}

#[tokio::test]
async fn keys_are_created_listed_and_revoked_from_the_command_line() {
    let server = Redis::start();
    let store_flag = format!("--store={}", server.url());

    let created = run(&["keys", "create", "--tier", "premium", "--name", "acme", &store_flag]);
    assert!(created.status.success(), "{}", stderr(&created));
    let text = stdout(&created);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("no {name}: in\n{text}"))
    };
    let (id, token) = (field("id"), field("token"));
    assert!(token.starts_with("tg_"));
    assert!(text.contains("shown only now"), "{text}");

    let store = RedisStore::open(&server.url().parse().unwrap()).unwrap();
    let found = store.find_key(&sha256_hex(token.as_bytes())).await.unwrap().unwrap();
    assert_eq!((found.id.as_str(), found.tier.as_str(), found.name.as_str()), (id.as_str(), "premium", "acme"));

    let listed = run(&["keys", "list", &store_flag]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    let list = stdout(&listed);
    let row = list.lines().find(|l| l.starts_with(&id)).unwrap_or_else(|| panic!("{id} not listed:\n{list}"));
    assert!(row.contains("premium") && row.ends_with("acme"), "{row}");
    assert!(!list.contains(&token));

    let revoked = run(&["keys", "revoke", &id, &store_flag]);
    assert!(revoked.status.success(), "{}", stderr(&revoked));
    assert!(store.find_key(&sha256_hex(token.as_bytes())).await.unwrap().is_none());
    let again = run(&["keys", "revoke", &id, &store_flag]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("no API key has the id"), "{}", stderr(&again));

    let bad = run(&["keys", "create", "--tier", "Premium", "--name", "acme", &store_flag]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("tier: "), "{}", stderr(&bad));
}

#[test]
fn keys_commands_explain_that_a_memory_store_cannot_hold_keys() {
    let output = run(&["keys", "list"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("--store redis://"), "{}", stderr(&output));
}

#[test]
fn a_bad_store_location_is_refused_at_once() {
    let output = run(&["--store", "postgres://db/1"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("expected `memory`, `redis://host:port/db`"), "{}", stderr(&output));
}

#[test]
fn the_binary_serves_and_logs_one_line_without_the_token() {
    let mut service = QuotaService::start_with(QuotaOptions {
        bin: PathBuf::from(BIN),
        store: "memory".to_owned(),
        admin_token: None,
        service_token: None,
        extra_args: Vec::new(),
        env: vec![
            ("TOLLGATE_QUOTA_ADMIN_TOKEN".to_owned(), "very-secret-admin-token".to_owned()),
            ("TOLLGATE_QUOTA_SERVICE_TOKEN".to_owned(), "very-secret-service-token".to_owned()),
        ],
        dir: None,
        cpu: None,
    });
    let health = http::get(service.port, "/healthz").expect("an answer to GET /healthz");
    assert_eq!(health.status, 200, "{health:?}");
    let ready = http::get(service.port, "/readyz").expect("an answer to GET /readyz");
    assert_eq!(ready.status, 200, "{ready:?}");
    service.kill();
    let log = service.log();
    assert!(log.contains("tollgate-quota serving"), "{log}");
    assert!(log.contains("admin=\"enabled\"") || log.contains("admin=enabled"), "{log}");
    assert!(log.contains("service_auth=\"token\"") || log.contains("service_auth=token"), "{log}");
    assert!(!log.contains("very-secret-admin-token") && !log.contains("very-secret-service-token"), "{log}");
}

#[test]
fn the_service_refuses_to_start_without_a_service_token_unless_told_to_serve_anyone() {
    let output = run(&["--listen", "127.0.0.1:0"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("no service token: give --service-token"), "{}", stderr(&output));
    let short = run(&["--listen", "127.0.0.1:0", "--service-token", "short"]);
    assert_eq!(short.status.code(), Some(2));
    assert!(stderr(&short).contains("16 to 1024 visible ASCII"), "{}", stderr(&short));
    assert!(!stderr(&short).contains("short\n"), "the token is not repeated");
    let missing = run(&["--listen", "127.0.0.1:0", "--service-token-file", "/nonexistent/token"]);
    assert_eq!(missing.status.code(), Some(2));
    let unknown = run(&["--listen", "127.0.0.1:0", "--insecure-no-auth", "--tiers", "free,Gold"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(stderr(&unknown).contains("--tiers: "), "{}", stderr(&unknown));

    let open = QuotaService::start_with(QuotaOptions {
        bin: PathBuf::from(BIN),
        service_token: None,
        extra_args: vec!["--insecure-no-auth".to_owned()],
        ..QuotaOptions::new("memory")
    });
    let body = r#"{"key":"free/ip:1","cost":1,"limits":[{"name":"a","limit":5,"window_secs":60}]}"#;
    let r = http::send(&http::client(http::IO_TIMEOUT), "POST", &open.url("/v1/check"), &[], body);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(open.log().contains("WARN") && open.log().contains("--insecure-no-auth"), "{}", open.log());
}

#[test]
fn the_service_token_file_and_the_plugin_configs_tiers_are_read() {
    let dir = tollgate_testkit::scratch::fresh_temp("quota-files");
    std::fs::write(dir.join("token"), "file-service-token-0123456789\n").unwrap();
    let plugin = r#"{ "tiers": { "free": { "limits": [ { "name": "rpm", "limit": 5, "window": "1m" } ] },
                                "pro": { "limits": [ { "name": "rpm", "limit": 50, "window": "1m" } ] } },
                     "routes": [ { "path_prefix": "/" } ] }"#;
    std::fs::write(dir.join("plugin.json"), plugin).unwrap();
    let service = QuotaService::start_with(QuotaOptions {
        bin: PathBuf::from(BIN),
        service_token: None,
        extra_args: vec![
            "--service-token-file".to_owned(),
            dir.join("token").display().to_string(),
            "--plugin-config".to_owned(),
            dir.join("plugin.json").display().to_string(),
        ],
        ..QuotaOptions::new("memory")
    });
    let agent = http::client(http::IO_TIMEOUT);
    let body = r#"{"sha256":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}"#;
    let url = service.url("/v1/keys/verify");
    assert_eq!(http::send(&agent, "POST", &url, &[], body).status, 401);
    let with = http::send(&agent, "POST", &url, &[("authorization", "Bearer file-service-token-0123456789")], body);
    assert_eq!(with.status, 200, "{with:?}");
    let admin = format!("Bearer {}", service.admin_token);
    let create = |tier: &str| {
        let body = format!(r#"{{"tier":"{tier}","name":"acme"}}"#);
        http::send(&agent, "POST", &service.url("/v1/keys"), &[("authorization", &admin)], &body)
    };
    let gold = create("gold");
    assert_eq!(gold.status, 400, "{gold:?}");
    assert_eq!(gold.json()["error"]["message"], "tier: unknown tier \"gold\"; this deployment's tiers: free, pro");
    assert_eq!(create("pro").status, 201);
    assert!(
        service.log().contains("tiers=free,pro") || service.log().contains("tiers=\"free,pro\""),
        "{}",
        service.log()
    );

    let keys_cli = run(&[
        "keys",
        "create",
        "--tier",
        "gold",
        "--name",
        "acme",
        "--tiers",
        "free,pro",
        "--store",
        "redis://127.0.0.1:1/0",
    ]);
    assert!(stderr(&keys_cli).contains("unknown tier \"gold\""), "{}", stderr(&keys_cli));
}

#[test]
fn hypers_own_answers_to_unparsable_requests_are_json_over_http() {
    let service = QuotaService::start("memory");
    let long_uri = format!("/v1/usage/{}", "a".repeat(70_000));
    let r = http::exchange(service.port, format!("GET {long_uri} HTTP/1.1\r\nhost: q\r\n\r\n").as_bytes());
    assert_eq!(r.status, 414, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"), "{r:?}");
    assert_eq!(r.json()["error"]["code"], "uri_too_long", "{r:?}");
    let r = http::exchange(service.port, b"GET /healthz HTTP/1.1\r\nbad header line\r\n\r\n");
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(r.json()["error"]["code"], "invalid_request", "{r:?}");
    // A long URI below hyper's limit reaches the routes, whose answers were JSON already.
    let r = http::exchange(
        service.port,
        format!("GET /v1/{} HTTP/1.1\r\nhost: q\r\nconnection: close\r\n\r\n", "a".repeat(20_000)).as_bytes(),
    );
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(r.json()["error"]["code"], "not_found");
}
