#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
//! The official OpenAI Python SDK against tollgate in Envoy, as users call it: a chat
//! completion plain and streamed, image generations, and the message the SDK shows on a
//! 429. `make test` installs the SDK (`scripts/openai-sdk.sh`) and sets `TOLLGATE_PYTHON`.

use std::process::Command;

use serde_json::{json, Value};
use tollgate_testkit::envoy::{sha256_hex, Envoy, EnvoyOptions};
use tollgate_testkit::workspace_root;

const TOKEN: &str = "tg_sdk_0123456789";

fn python() -> String {
    std::env::var("TOLLGATE_PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| workspace_root().join(".venv/bin/python").display().to_string())
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
    assert_eq!(limited["code"], "rate_limit_exceeded");
    let message = limited["message"].as_str().unwrap();
    assert!(message.starts_with("Error code: 429"), "{message}");
    assert!(message.contains("allows 5 images per 1d; this request would use 3 images; 2 are left"), "{message}");
}
