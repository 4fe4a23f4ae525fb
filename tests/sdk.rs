#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
//! The official OpenAI SDKs against tollgate in Envoy, as users call them: with Python, a
//! chat completion plain and streamed, image generations, and the message the SDK shows
//! on a 429; with Python and Node, how their default retries meet a short and a long 429.
//! `make test` installs the SDKs (`scripts/openai-sdk.sh`, `scripts/openai-sdk-node.sh`)
//! and sets `TOLLGATE_PYTHON` and `TOLLGATE_NODE_MODULES`.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Duration;

use serde_json::{json, Value};
use tollgate_testkit::envoy::{sha256_hex, Envoy, EnvoyOptions};
use tollgate_testkit::wait::Wait;
use tollgate_testkit::workspace_root;

const TOKEN: &str = "tg_sdk_0123456789";
/// Far more than the SDK scripts need (a few seconds), far less than the hours an SDK
/// would sleep on a daily quota's `Retry-After`.
const SDK_DEADLINE: Duration = Duration::from_secs(60);

fn python() -> String {
    std::env::var("TOLLGATE_PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| workspace_root().join(".venv/bin/python").display().to_string())
}

fn node_modules() -> String {
    std::env::var("TOLLGATE_NODE_MODULES")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| workspace_root().join(".node/node_modules").display().to_string())
}

/// A child process killed when dropped: a test that gives up on it leaves nothing asleep.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs an SDK script to its end, within [`SDK_DEADLINE`], and reads the JSON it prints.
fn run_sdk(mut command: Command, hint: &str) -> Value {
    let name = format!("{command:?}");
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{name}: {e} ({hint})"));
    let mut child = Killed(child);
    let pipes = [
        child.0.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>),
        child.0.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>),
    ];
    let readers = pipes.map(|pipe| {
        thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    });
    let status = Wait::new(format!("{name} to finish (an SDK asleep on a long Retry-After never does)"))
        .at_most(SDK_DEADLINE)
        .every(Duration::from_millis(20))
        .until_some(|| child.0.try_wait().unwrap());
    let [stdout, stderr] = readers.map(|r| r.join().unwrap());
    assert!(status.success(), "{name} failed: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{name} printed no JSON ({e}): {stdout}\n{stderr}"))
}

#[test]
fn the_openai_python_sdk_chats_streams_generates_and_reads_the_429() {
    let config = json!({
        "keys": [ { "id": "sdk", "sha256": sha256_hex(TOKEN), "tier": "free" } ],
        "tiers": { "free": { "limits": [
            { "name": "images-per-day", "limit": 5, "window": "1d", "algorithm": "fixed_window", "unit": "images" },
            { "name": "tokens-per-day", "limit": 10000, "window": "1d", "algorithm": "fixed_window", "unit": "tokens" }
        ] } },
        "routes": [
            { "path": "/v1/images/generations", "meter": "openai_images" },
            { "path": "/v1/chat/completions", "meter": "openai_chat" }
        ]
    });
    let envoy = Envoy::start(EnvoyOptions {
        plugin_config: Some(config.to_string()),
        images_upstream: true,
        ..EnvoyOptions::default()
    });
    let base_url = format!("http://127.0.0.1:{}/v1", envoy.port);
    let script = workspace_root().join("tests/sdk/openai_client.py");
    let output = Command::new(python())
        .arg(&script)
        .args([&base_url, TOKEN])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/openai-sdk.sh)", python()));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the SDK script failed: {stderr}\nEnvoy log:\n{}", envoy.log());
    let out: Value = serde_json::from_slice(&output.stdout).unwrap();

    let chat = &out["chat"];
    assert_eq!(chat["content"], "ok");
    assert_eq!(chat["usage"]["completion_tokens"], 40);
    assert_eq!(chat["limit_tokens"], "10000");
    // Reserved: the prompt's estimate and max_tokens 50.
    let prompt = r#"[{"role":"user","content":"Say hi"}]"#.len().div_ceil(4) as u64;
    assert_eq!(chat["remaining_tokens"], (10_000 - prompt - 50).to_string());

    assert_eq!(out["stream"]["content"], "It is a stand-in.");
    assert_eq!(out["stream"]["usage"]["total_tokens"], 50, "the usage event reaches the SDK");

    assert_eq!(out["images"], 3);
    let limited = &out["limited"];
    assert_eq!(limited["status"], 429);
    assert_eq!(limited["code"], "insufficient_quota", "a daily quota: retrying cannot help");
    let message = limited["message"].as_str().unwrap();
    assert!(message.starts_with("Error code: 429"), "{message}");
    assert!(message.contains("allows 5 images per 1d; this request would use 3 images; 2 are left"), "{message}");
}

const RETRIES_TOKEN: &str = "tg_sdk_retries_0123456789";

/// A burst of one request a second on chats, and five images a day. The images refill as
/// a token bucket (one every 4.8 hours) rather than at midnight, so that the wait stays
/// long whatever time of day the test runs.
fn retries_envoy() -> Envoy {
    let config = json!({
        "keys": [ { "id": "retries", "sha256": sha256_hex(RETRIES_TOKEN), "tier": "free" } ],
        "tiers": { "free": { "limits": [
            { "name": "burst", "limit": 60, "window": "1m", "burst": 1 },
            { "name": "images-per-day", "limit": 5, "window": "1d", "unit": "images" }
        ] } },
        "routes": [
            { "path": "/v1/images/generations", "meter": "openai_images", "limits": ["images-per-day"] },
            { "path": "/v1/chat/completions", "meter": "openai_chat", "limits": ["burst"] }
        ]
    });
    Envoy::start(EnvoyOptions {
        plugin_config: Some(config.to_string()),
        images_upstream: true,
        ..EnvoyOptions::default()
    })
}

/// What both SDKs must do with their default retries: retry the burst's short 429 once
/// and succeed; raise the daily quota's 429 at once, with tollgate's message, without
/// sleeping on its `Retry-After` of hours (the deadline of [`run_sdk`] fails that).
fn check_retries(out: &Value, envoy: &Envoy) {
    let burst = &out["burst"];
    assert_eq!(burst["statuses"], json!([429, 200]), "{out}");
    assert_eq!(burst["content"], "ok");
    let daily = &out["daily"];
    assert_eq!(daily["statuses"], json!([429]), "no retry: {out}");
    assert_eq!(daily["raised"], "RateLimitError", "{out}");
    assert_eq!((daily["status"].as_u64(), daily["code"].as_str()), (Some(429), Some("insufficient_quota")));
    assert_eq!(daily["type"], "insufficient_quota");
    let message = daily["message"].as_str().unwrap();
    assert!(
        message.starts_with("Rate limit reached for the free tier: limit \"images-per-day\" allows 5 images per 1d; this request would use 3 images; 2 are left. Try again in "),
        "{message}"
    );
    // What Envoy counted: the refused burst and the refused images, each once.
    assert_eq!(envoy.counter("tollgate.requests.free.limited"), Some(2));
    assert_eq!(envoy.counter("tollgate.requests.free.allowed"), Some(3));
}

#[test]
fn the_python_sdk_retries_a_burst_once_and_gives_up_on_a_daily_quota_at_once() {
    let envoy = retries_envoy();
    let mut command = Command::new(python());
    command.arg(workspace_root().join("tests/sdk/openai_retries.py"));
    command.args([&format!("http://127.0.0.1:{}/v1", envoy.port), RETRIES_TOKEN]);
    let out = run_sdk(command, "run scripts/openai-sdk.sh");
    assert_eq!(out["burst"]["retries_taken"], 1, "{out}");
    check_retries(&out, &envoy);
}

#[test]
fn the_node_sdk_retries_a_burst_once_and_gives_up_on_a_daily_quota_at_once() {
    let envoy = retries_envoy();
    let mut command = Command::new("node");
    command.arg(workspace_root().join("tests/sdk/openai_retries.cjs"));
    command.args([&format!("http://127.0.0.1:{}/v1", envoy.port), RETRIES_TOKEN]);
    command.env("NODE_PATH", node_modules());
    let out = run_sdk(command, "node is needed; run scripts/openai-sdk-node.sh");
    check_retries(&out, &envoy);
}
