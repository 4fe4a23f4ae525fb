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
        "keys",
    ] {
        assert!(help.contains(expected), "{expected} missing from --help:\n{help}");
    }
    assert!(!help.contains("very-secret-admin-token") && !help.contains("hunter2"), "{help}");
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
        env: vec![("TOLLGATE_QUOTA_ADMIN_TOKEN".to_owned(), "very-secret-admin-token".to_owned())],
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
    assert!(!log.contains("very-secret-admin-token"), "{log}");
}
