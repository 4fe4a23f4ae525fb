//! What is measured: every configuration of Envoy, the requests sent to it, and the limits
//! (high enough never to refuse: the benchmark measures the admit path).

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tollgate_testkit::quota_service::DEV_SERVICE_TOKEN;

/// The route most Envoy runs are driven on (a `POST` route of `envoy.yaml`, answered by
/// `direct_response`, limited by tollgate with cost 1); the metering runs send it to the
/// stand-in AI upstream instead.
pub const PATH: &str = "/v1/images/generations";
/// The chat route of `envoy.yaml` (to the stand-in AI upstream), for the streamed runs.
pub const CHAT_PATH: &str = "/v1/chat/completions";
/// Size of the image request body of the metering runs, in bytes.
pub const IMAGE_BODY_BYTES: usize = 1024;
/// Delta events of the streamed chat of the metering runs (`x-standin-chunks`).
pub const STREAM_CHUNKS: usize = 200;
/// The quota service's decision endpoint.
pub const CHECK_PATH: &str = "/v1/check";
/// Callers of the "10k keys" configurations.
pub const MANY: usize = 10_000;
/// Limit and burst of the benchmark's limits: never reached in a run.
pub const HUGE: u64 = 1_000_000_000;

/// The Envoy configurations, in the order of the tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// No HTTP filter but the router: the ceiling.
    None,
    /// Envoy's `local_ratelimit` with one token bucket for everything.
    NativeOneBucket,
    /// Envoy's `local_ratelimit` with one bucket per `x-api-key` value (dynamic descriptors).
    NativePerKey,
    /// The no-op proxy-wasm filter of `bench/src/lib.rs`.
    WasmNoop,
    /// The filter of `bench/floor`: tollgate's host calls with fixed values, no decision.
    WasmHostCalls,
    /// tollgate with local limits only; `keys` static keys.
    TollgateLocal { keys: usize },
    /// tollgate's anonymous tier (client-IP keys from `X-Forwarded-For`).
    TollgateAnonymous,
    /// tollgate with global limits against the quota service.
    TollgateGlobal { store: QuotaStore, strict: bool },
    /// tollgate local, 1 key, with limits of `unit`; the route at `path` has `meter`
    /// (`None`: the route is not metered, its body never read).
    TollgateMetering { path: &'static str, meter: Option<&'static str>, unit: &'static str },
    /// tollgate local, 1 key, the filter built before metering (`BENCH_PREMETER_WASM`),
    /// with the routes' `meter` fields taken out (that filter does not know them).
    TollgatePremeter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaStore {
    Memory,
    Redis,
}

impl QuotaStore {
    pub fn name(self) -> &'static str {
        match self {
            QuotaStore::Memory => "memory",
            QuotaStore::Redis => "Redis",
        }
    }
}

/// Which requests wrk sends (`bench/lua/requests.lua`): the mode, how many variants and
/// the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    pub mode: &'static str,
    pub variants: usize,
    pub path: &'static str,
}

impl Load {
    pub fn args(self) -> Vec<String> {
        let mut args = vec![self.mode.to_owned(), self.variants.to_string(), self.path.to_owned()];
        args.extend(self.body());
        args.extend(self.header().map(|(name, value)| format!("{name}: {value}")));
        args
    }

    /// The JSON body of every request (mode `body`), by path: an image request of
    /// [`IMAGE_BODY_BYTES`], or a streamed chat that asks for its usage.
    pub fn body(self) -> Option<String> {
        if self.mode != "body" {
            return None;
        }
        if self.path == CHAT_PATH {
            return Some(
                json!({
                    "model": "gpt-4o-mini",
                    "messages": [ { "role": "user", "content": "Write two hundred words." } ],
                    "max_tokens": 400,
                    "stream": true,
                    "stream_options": { "include_usage": true },
                })
                .to_string(),
            );
        }
        let body = |prompt: &str| {
            json!({ "model": "dall-e-3", "prompt": prompt, "n": 1, "size": "1024x1024", "quality": "standard" })
                .to_string()
        };
        let words = "a lighthouse on a cliff at dawn, oil painting; ";
        let padding = IMAGE_BODY_BYTES.saturating_sub(body("").len());
        Some(body(words.repeat(padding / words.len() + 1).get(..padding).unwrap_or_default()))
    }

    /// A header every request carries besides the key (mode `body`): the stream's length.
    pub fn header(self) -> Option<(&'static str, String)> {
        (self.mode == "body" && self.path == CHAT_PATH).then(|| ("x-standin-chunks", STREAM_CHUNKS.to_string()))
    }
}

#[derive(Debug, Clone)]
pub struct Scenario {
    /// Short stable name: file names, `BENCH_ONLY`, results.json.
    pub id: &'static str,
    /// The numbering of configurations (1 = ceiling … 6 = global path).
    pub group: u8,
    pub title: &'static str,
    pub filter: Filter,
    pub load: Load,
    /// `xff_num_trusted_hops` of the HTTP connection manager.
    pub xff_hops: u32,
    /// A response header that proves the filter ran (checked on a probe request).
    pub proof_header: Option<&'static str>,
    /// The native configuration this one is compared with ("× native").
    pub native_peer: Option<&'static str>,
    /// The route goes to the stand-in AI upstream (`tollgate-standin`) instead of Envoy's
    /// `direct_response`.
    pub upstream: bool,
    /// The no-filter configuration this one takes turns with ([`baselines`]).
    pub base: &'static str,
}

const BEARER_1: Load = Load { mode: "bearer", variants: 1, path: PATH };
const IMAGE_1K: Load = Load { mode: "body", variants: 1, path: PATH };
const CHAT_STREAM: Load = Load { mode: "body", variants: 1, path: CHAT_PATH };

/// The ceiling every other configuration is interleaved with.
pub fn baseline() -> Scenario {
    Scenario {
        id: "no-filter",
        group: 1,
        title: "Envoy, no HTTP filter (ceiling)",
        filter: Filter::None,
        load: BEARER_1,
        xff_hops: 0,
        proof_header: None,
        native_peer: None,
        upstream: false,
        base: "no-filter",
    }
}

/// The no-filter Envoys: the ceiling, and the same Envoy without a filter sending the
/// metering runs' requests to the stand-in upstream.
pub fn baselines() -> Vec<Scenario> {
    let upstream = |id, title, load| Scenario { id, title, load, upstream: true, base: id, ..baseline() };
    vec![
        baseline(),
        upstream("no-filter-image-1k", "Envoy, no HTTP filter, 1 KB image requests to the stand-in", IMAGE_1K),
        upstream("no-filter-chat-stream", "Envoy, no HTTP filter, chat streamed by the stand-in", CHAT_STREAM),
    ]
}

/// Every configuration but the baseline, in table order.
pub fn scenarios() -> Vec<Scenario> {
    let native = |id, title, filter, load| Scenario {
        id,
        group: 2,
        title,
        filter,
        load,
        xff_hops: 0,
        proof_header: Some("x-ratelimit-limit"),
        native_peer: None,
        upstream: false,
        base: "no-filter",
    };
    let tollgate = |id, group, title, filter, load, native_peer| Scenario {
        id,
        group,
        title,
        filter,
        load,
        xff_hops: 0,
        proof_header: Some("ratelimit-policy"),
        native_peer: Some(native_peer),
        upstream: false,
        base: "no-filter",
    };
    let global = |id, title, store, strict| {
        tollgate(id, 6, title, Filter::TollgateGlobal { store, strict }, BEARER_1, "native-per-key-1")
    };
    vec![
        native("native-one-bucket", "native local_ratelimit, one bucket", Filter::NativeOneBucket, BEARER_1),
        native(
            "native-per-key-1",
            "native local_ratelimit, bucket per key, 1 key",
            Filter::NativePerKey,
            Load { mode: "apikey", variants: 1, path: PATH },
        ),
        native(
            "native-per-key-10k",
            "native local_ratelimit, bucket per key, 10k keys",
            Filter::NativePerKey,
            Load { mode: "apikey", variants: MANY, path: PATH },
        ),
        Scenario {
            id: "wasm-noop",
            group: 3,
            title: "proxy-wasm no-op filter (wasm floor)",
            filter: Filter::WasmNoop,
            load: BEARER_1,
            xff_hops: 0,
            proof_header: None,
            native_peer: Some("native-one-bucket"),
            upstream: false,
            base: "no-filter",
        },
        Scenario {
            id: "wasm-hostcalls",
            group: 3,
            title: "proxy-wasm filter making tollgate's host calls, no decision",
            filter: Filter::WasmHostCalls,
            load: BEARER_1,
            xff_hops: 0,
            proof_header: Some("ratelimit-policy"),
            native_peer: Some("native-per-key-1"),
            upstream: false,
            base: "no-filter",
        },
        tollgate(
            "tollgate-local-1",
            4,
            "tollgate local, 1 key",
            Filter::TollgateLocal { keys: 1 },
            BEARER_1,
            "native-per-key-1",
        ),
        tollgate(
            "tollgate-local-10k",
            4,
            "tollgate local, 10k keys",
            Filter::TollgateLocal { keys: MANY },
            Load { mode: "bearer", variants: MANY, path: PATH },
            "native-per-key-10k",
        ),
        Scenario {
            xff_hops: 1,
            ..tollgate(
                "tollgate-anonymous",
                5,
                "tollgate anonymous, 10k client IPs",
                Filter::TollgateAnonymous,
                Load { mode: "xff", variants: MANY, path: PATH },
                "native-per-key-10k",
            )
        },
        global("global-strict-memory", "tollgate global strict, memory store", QuotaStore::Memory, true),
        global("global-strict-redis", "tollgate global strict, Redis", QuotaStore::Redis, true),
        global("global-default-memory", "tollgate global default, memory store", QuotaStore::Memory, false),
        global("global-default-redis", "tollgate global default, Redis", QuotaStore::Redis, false),
        tollgate(
            "tollgate-local-1-premeter",
            4,
            "tollgate local, 1 key, the filter before metering",
            Filter::TollgatePremeter,
            BEARER_1,
            "native-per-key-1",
        ),
    ]
}

/// The metering runs, each against the no-filter Envoy of its route and body: a route
/// whose body is read (and a stream read for its usage) next to the same route unmetered.
pub fn metering_scenarios() -> Vec<Scenario> {
    let metering = |id, title, path, meter, unit, load, base| Scenario {
        id,
        group: 7,
        title,
        filter: Filter::TollgateMetering { path, meter, unit },
        load,
        xff_hops: 0,
        proof_header: Some("ratelimit-policy"),
        native_peer: None,
        upstream: true,
        base,
    };
    let image = "no-filter-image-1k";
    let chat = "no-filter-chat-stream";
    vec![
        metering(
            "image-1k-local",
            "image route, 1 KB body, not metered (limits of requests)",
            PATH,
            None,
            "requests",
            IMAGE_1K,
            image,
        ),
        metering(
            "image-1k-metered",
            "image route, 1 KB body, metered (`openai_images`, limits of images)",
            PATH,
            Some("openai_images"),
            "images",
            IMAGE_1K,
            image,
        ),
        metering(
            "chat-stream-unmetered",
            "chat streamed in 200 events, not metered (limits of requests)",
            CHAT_PATH,
            None,
            "requests",
            CHAT_STREAM,
            chat,
        ),
        metering(
            "chat-stream-metered",
            "chat streamed in 200 events, metered (`openai_chat`, limits of tokens)",
            CHAT_PATH,
            Some("openai_chat"),
            "tokens",
            CHAT_STREAM,
            chat,
        ),
    ]
}

/// The bearer token of caller `i` (the wrk script writes the same).
pub fn token(i: usize) -> String {
    format!("tg_bench_{i:05}")
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// The two limits of the benchmark tier, as the plugin config writes them: a token bucket
/// and a daily fixed window, both far above what a run sends.
fn plugin_limits(scope: &str) -> Value {
    json!([
        { "name": "rpm", "limit": HUGE, "window": "1m", "burst": HUGE, "scope": scope },
        { "name": "per-day", "limit": HUGE, "window": "1d", "algorithm": "fixed_window", "scope": scope },
    ])
}

/// The same two limits as the filter sends them to the quota service (`limits` of `/v1/check`).
pub fn check_limits() -> Value {
    json!([
        { "name": "rpm", "limit": HUGE, "window_secs": 60, "burst": HUGE },
        { "name": "per-day", "algorithm": "fixed_window", "limit": HUGE, "window_secs": 86_400 },
    ])
}

/// `check.lua`'s ARGV after the cost for the same two limits (see the script's header):
/// name, definition, x, y per limit; the token bucket's interval is rounded up to whole µs.
pub fn check_script_args() -> Vec<String> {
    let interval_us = (60 * 1_000_000u64).div_ceil(HUGE);
    vec![
        "rpm".into(),
        format!("t:{HUGE}:60:{HUGE}"),
        interval_us.to_string(),
        (interval_us * HUGE).to_string(),
        "per-day".into(),
        format!("f:{HUGE}:86400"),
        (86_400 * 1_000_000u64).to_string(),
        HUGE.to_string(),
    ]
}

/// The tollgate plugin JSON of a configuration, derived from `envoy.yaml`'s (its routes,
/// mode and header options) with the benchmark's tier, keys and limits.
pub fn plugin_config(base: &Value, filter: Filter) -> Option<Value> {
    let (keys, scope) = match filter {
        Filter::TollgateLocal { keys } => (keys, "local"),
        Filter::TollgateAnonymous | Filter::TollgateMetering { .. } | Filter::TollgatePremeter => (1, "local"),
        Filter::TollgateGlobal { .. } => (1, "global"),
        _ => return None,
    };
    let keys: Vec<Value> = (0..keys)
        .map(|i| json!({ "id": format!("bench-{i:05}"), "sha256": sha256_hex(&token(i)), "tier": "bench" }))
        .collect();
    let mut limits = plugin_limits(scope);
    if scope == "global" {
        // A failed callout must show as an error (503), never as a quietly admitted request.
        for limit in limits.as_array_mut().into_iter().flatten() {
            limit["failure_mode"] = json!("closed");
        }
    } else {
        for limit in limits.as_array_mut().into_iter().flatten() {
            if let Some(limit) = limit.as_object_mut() {
                limit.remove("scope");
                if let Filter::TollgateMetering { unit, .. } = filter {
                    if unit != "requests" {
                        limit.insert("unit".to_owned(), json!(unit));
                    }
                }
            }
        }
    }
    // The routes without the names of limits they apply: the benchmark tier has its own.
    let mut routes = base.get("routes").cloned().unwrap_or(json!([]));
    for route in routes.as_array_mut().into_iter().flatten() {
        if let Some(route) = route.as_object_mut() {
            route.remove("limits");
            match filter {
                Filter::TollgatePremeter => {
                    route.remove("meter");
                }
                Filter::TollgateMetering { path, meter, .. } if route.get("path_prefix") == Some(&json!(path)) => {
                    match meter {
                        Some(meter) => route.insert("meter".to_owned(), json!(meter)),
                        None => route.remove("meter"),
                    };
                }
                _ => {}
            }
        }
    }
    let mut config = json!({
        "mode": base.get("mode").cloned().unwrap_or(json!("enforce")),
        "identity": { "api_key_header": "x-api-key", "anonymous": { "tier": "bench" } },
        "keys": keys,
        "tiers": { "bench": { "limits": limits } },
        "routes": routes,
        "headers": { "ietf": true, "x_ratelimit": true },
    });
    if let Filter::TollgateGlobal { strict, .. } = filter {
        // "default" is the shipped configuration: limits this large lease their units in
        // blocks (1 % of the capacity, at most 1000) and decide locally. "strict" sets
        // `lease_block: 0`: a callout to the quota service on every request.
        if strict {
            for limit in config["tiers"]["bench"]["limits"].as_array_mut().into_iter().flatten() {
                limit["lease_block"] = json!(0);
            }
        }
        config["quota_service"] = json!({ "cluster": "tollgate_quota", "timeout_ms": 1000, "verify_keys": false,
                                          "token": DEV_SERVICE_TOKEN });
    }
    Some(config)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn limits(strict: bool) -> Vec<Value> {
        let filter = Filter::TollgateGlobal { store: QuotaStore::Memory, strict };
        let config = plugin_config(&json!({}), filter).unwrap();
        config["tiers"]["bench"]["limits"].as_array().unwrap().clone()
    }

    #[test]
    fn every_configuration_is_valid_for_the_filter_with_envoy_yaml_routes() {
        let base = tollgate_testkit::envoy::default_plugin_config();
        let filters = [
            Filter::TollgateLocal { keys: 1 },
            Filter::TollgateLocal { keys: 10_000 },
            Filter::TollgateAnonymous,
            Filter::TollgateGlobal { store: QuotaStore::Memory, strict: true },
            Filter::TollgateGlobal { store: QuotaStore::Memory, strict: false },
            Filter::TollgatePremeter,
        ];
        let metering = metering_scenarios().into_iter().map(|s| s.filter);
        for filter in filters.into_iter().chain(metering) {
            let config = plugin_config(&base, filter).unwrap();
            if let Err(e) = tollgate_core::Config::from_json(config.to_string().as_bytes()) {
                panic!("the benchmark's plugin config is refused: {e}");
            }
        }
    }

    #[test]
    fn strict_makes_every_limit_exact_and_default_is_the_shipped_lease() {
        for limit in limits(true) {
            assert_eq!(limit["lease_block"], json!(0));
        }
        for limit in limits(false) {
            // No lease_block: the filter's default, 1 % of the capacity capped at 1000,
            // which leases for limits this large (tollgate_core::config::default_lease_block).
            assert!(limit.get("lease_block").is_none());
            assert!(limit["limit"].as_u64().unwrap() / 100 >= 1000);
        }
    }
}

#[cfg(test)]
mod metering_tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn route<'a>(config: &'a Value, path: &str) -> &'a Value {
        config["routes"].as_array().unwrap().iter().find(|r| r["path_prefix"] == json!(path)).unwrap()
    }

    #[test]
    fn metered_and_unmetered_runs_differ_only_in_the_meter_and_the_unit() {
        let base = tollgate_testkit::envoy::default_plugin_config();
        let configs: Vec<Value> =
            metering_scenarios().iter().map(|s| plugin_config(&base, s.filter).unwrap()).collect();
        let [image, image_metered, chat, chat_metered] = &configs[..] else { panic!("four metering runs") };
        assert!(route(image, PATH).get("meter").is_none());
        assert_eq!(route(image_metered, PATH)["meter"], json!("openai_images"));
        assert!(route(chat, CHAT_PATH).get("meter").is_none());
        assert_eq!(route(chat_metered, CHAT_PATH)["meter"], json!("openai_chat"));
        for (config, unit) in
            [(image, None), (image_metered, Some("images")), (chat, None), (chat_metered, Some("tokens"))]
        {
            for limit in config["tiers"]["bench"]["limits"].as_array().unwrap() {
                assert_eq!(limit.get("unit").and_then(Value::as_str), unit);
            }
        }
    }

    #[test]
    fn the_filter_before_metering_gets_no_meter() {
        let base = tollgate_testkit::envoy::default_plugin_config();
        let config = plugin_config(&base, Filter::TollgatePremeter).unwrap();
        assert!(config["routes"].as_array().unwrap().iter().all(|r| r.get("meter").is_none()));
    }

    #[test]
    fn the_image_body_is_1_kb_and_the_stream_asks_for_its_usage() {
        let image = IMAGE_1K.body().unwrap();
        assert_eq!(image.len(), IMAGE_BODY_BYTES);
        assert_eq!(serde_json::from_str::<Value>(&image).unwrap()["n"], json!(1));
        let chat: Value = serde_json::from_str(&CHAT_STREAM.body().unwrap()).unwrap();
        assert_eq!(chat["stream_options"]["include_usage"], json!(true));
        assert_eq!(CHAT_STREAM.header(), Some(("x-standin-chunks", "200".to_owned())));
        assert_eq!(BEARER_1.body(), None);
    }
}
