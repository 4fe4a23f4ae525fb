#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
//! What ships to users' clusters: every manifest under `deploy/` parses and uses only real
//! fields of its kind (the field lists in `deploy/schema/`), every plugin configuration in
//! `deploy/` and in README.md passes the filter's own validation, the kustomizations render
//! (`kubectl kustomize`) into what they promise (the gateway patch keeps the gateway's own
//! proxy config, Redis keeps its counts, the policies let in whom they say), and `make oci`
//! (`scripts/oci.sh`) writes an OCI image layout in the form Istio pulls.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tollgate_core::Config;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn root(path: &str) -> PathBuf {
    Path::new(ROOT).join(path)
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Files under `dir` (recursively) whose name ends with one of `extensions`, sorted.
fn files_under(dir: &Path, extensions: &[&str]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("list {}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if extensions.iter().any(|ext| path.to_string_lossy().ends_with(ext)) {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// The documents of a YAML stream (separated by `---` lines), as JSON values; empty
/// documents are skipped.
fn yaml_documents(text: &str) -> Result<Vec<Value>, String> {
    let mut documents = Vec::new();
    let mut current = String::new();
    for line in text.lines().chain(std::iter::once("---")) {
        if line.trim_end() == "---" {
            let value: Value = serde_yaml::from_str(&current).map_err(|e| e.to_string())?;
            if !value.is_null() {
                documents.push(value);
            }
            current.clear();
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    Ok(documents)
}

/// One document of a manifest file under `deploy/`.
struct Manifest {
    file: String,
    index: usize,
    doc: Value,
}

impl Manifest {
    fn kind(&self) -> &str {
        self.doc["kind"].as_str().unwrap_or("?")
    }

    fn name(&self) -> String {
        format!("{} document {} ({} {})", self.file, self.index, self.kind(), self.doc["metadata"]["name"])
    }
}

fn manifests_in(file: &str, text: &str) -> Vec<Manifest> {
    let docs = yaml_documents(text).unwrap_or_else(|e| panic!("{file} is not valid YAML: {e}"));
    docs.into_iter().enumerate().map(|(index, doc)| Manifest { file: file.to_owned(), index, doc }).collect()
}

fn deploy_manifests() -> Vec<Manifest> {
    let files = files_under(&root("deploy"), &[".yaml", ".yml"]);
    assert!(!files.is_empty(), "no manifests under deploy/");
    files
        .iter()
        .flat_map(|path| {
            let file = path.strip_prefix(ROOT).unwrap().display().to_string();
            manifests_in(&file, &read(path))
        })
        .collect()
}

/// The field lists of `deploy/schema/*.json`: per kind its apiVersion and fields, and the
/// shared definitions they refer to.
struct Schema {
    kinds: BTreeMap<String, Kind>,
    definitions: Map<String, Value>,
}

struct Kind {
    api_version: String,
    fields: Value,
    source: String,
}

impl Schema {
    fn load() -> Schema {
        let mut schema = Schema { kinds: BTreeMap::new(), definitions: Map::new() };
        for path in files_under(&root("deploy/schema"), &[".json"]) {
            let source = path.strip_prefix(ROOT).unwrap().display().to_string();
            let file: Value = serde_json::from_str(&read(&path)).unwrap_or_else(|e| panic!("{source}: {e}"));
            for (name, kind) in file["kinds"].as_object().into_iter().flatten() {
                let api_version = kind["apiVersion"].as_str().expect("apiVersion of a schema kind").to_owned();
                let kind = Kind { api_version, fields: kind["fields"].clone(), source: source.clone() };
                assert!(schema.kinds.insert(name.clone(), kind).is_none(), "kind {name} is defined twice");
            }
            for (name, definition) in file["definitions"].as_object().into_iter().flatten() {
                schema.definitions.insert(name.clone(), definition.clone());
            }
        }
        schema
    }

    /// Every problem of one document: an unknown kind, a wrong apiVersion, a key that is not
    /// a field of the kind, a value of the wrong type, a missing required field.
    fn check(&self, doc: &Value) -> Vec<String> {
        let Some(kind_name) = doc["kind"].as_str() else {
            return vec!["no `kind`".to_owned()];
        };
        let Some(kind) = self.kinds.get(kind_name) else {
            return vec![format!("no field list for kind {kind_name} in deploy/schema/")];
        };
        let mut errors = Vec::new();
        if doc["apiVersion"].as_str() != Some(kind.api_version.as_str()) {
            errors.push(format!("apiVersion: {kind_name} is {}, got {}", kind.api_version, doc["apiVersion"]));
        }
        if kind_name != "Kustomization" && !doc["metadata"]["name"].is_string() {
            errors.push("metadata.name: missing".to_owned());
        }
        let mut walk = Walk { schema: self, kind: kind_name, source: &kind.source, errors: &mut errors };
        walk.value(&kind.fields, doc, "");
        errors
    }
}

struct Walk<'a> {
    schema: &'a Schema,
    kind: &'a str,
    source: &'a str,
    errors: &'a mut Vec<String>,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

impl Walk<'_> {
    fn error(&mut self, path: &str, message: String) {
        self.errors.push(format!("{path}: {message}"));
    }

    fn value(&mut self, schema: &Value, value: &Value, path: &str) {
        match schema {
            Value::String(leaf) => self.leaf(leaf, value, path),
            Value::Array(items) => match value {
                Value::Array(values) => {
                    for (i, v) in values.iter().enumerate() {
                        self.value(&items[0], v, &format!("{path}[{i}]"));
                    }
                }
                other => self.error(path, format!("expected a list, got {}", type_name(other))),
            },
            Value::Object(spec) if spec.contains_key("$ref") => {
                let name = spec["$ref"].as_str().unwrap();
                let definition =
                    self.schema.definitions.get(name).unwrap_or_else(|| panic!("deploy/schema: no definition {name}"));
                self.value(definition, value, path);
            }
            Value::Object(spec) if spec.contains_key("$enum") => {
                let allowed: Vec<&str> = spec["$enum"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
                if !value.as_str().is_some_and(|s| allowed.contains(&s)) {
                    self.error(path, format!("expected one of {allowed:?}, got {value}"));
                }
            }
            Value::Object(fields) => self.object(fields, value, path),
            other => panic!("deploy/schema: bad schema node {other}"),
        }
    }

    fn object(&mut self, fields: &Map<String, Value>, value: &Value, path: &str) {
        let Value::Object(map) = value else {
            self.error(path, format!("expected a map, got {}", type_name(value)));
            return;
        };
        for (key, v) in map {
            let field = fields.get(key.as_str()).filter(|_| !key.starts_with('$')).or_else(|| fields.get("*"));
            match field {
                Some(field) => self.value(field, v, &join(path, key)),
                None => self.error(
                    &join(path, key),
                    format!(
                        "not a field of {} (field list: {}; if the API reference has it, add it there)",
                        self.kind, self.source
                    ),
                ),
            }
        }
        for required in fields.get("$required").and_then(Value::as_array).into_iter().flatten() {
            let required = required.as_str().unwrap();
            if !map.contains_key(required) {
                self.error(&join(path, required), "missing (required)".to_owned());
            }
        }
    }

    fn leaf(&mut self, leaf: &str, value: &Value, path: &str) {
        let ok = match leaf {
            "any" => true,
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "boolean" => value.is_boolean(),
            "int-or-string" => value.is_string() || value.is_i64() || value.is_u64(),
            "sha256-hex" => value.as_str().is_some_and(|s| {
                s.is_empty() || (s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            }),
            other => panic!("deploy/schema: unknown leaf type {other:?}"),
        };
        if !ok {
            let expected = if leaf == "sha256-hex" { "64 lower-case hex digits" } else { leaf };
            self.error(path, format!("expected {expected}, got {}", type_name(value)));
        }
    }
}

/// The problems of every document in `manifests`, each line naming its document.
fn problems(schema: &Schema, manifests: &[Manifest]) -> Vec<String> {
    manifests.iter().flat_map(|m| schema.check(&m.doc).into_iter().map(move |e| format!("{}: {e}", m.name()))).collect()
}

/// The filter's validation of every WasmPlugin's `pluginConfig` (as Istio hands it over: JSON).
fn plugin_config_problems(manifests: &[Manifest]) -> Vec<String> {
    manifests
        .iter()
        .filter(|m| m.kind() == "WasmPlugin")
        .filter_map(|m| {
            let config = &m.doc["spec"]["pluginConfig"];
            if config.is_null() {
                return Some(format!("{}: no spec.pluginConfig", m.name()));
            }
            let json = serde_json::to_vec(config).unwrap();
            Config::from_json(&json)
                .err()
                .map(|e| format!("{}: spec.pluginConfig: invalid configuration: {e}", m.name()))
        })
        .collect()
}

fn deploy_file(path: &str) -> (String, String) {
    (path.to_owned(), read(&root(path)))
}

#[test]
fn every_manifest_parses_and_uses_only_real_fields() {
    let schema = Schema::load();
    let manifests = deploy_manifests();
    let kinds: Vec<&str> = manifests.iter().map(Manifest::kind).collect();
    let expected_kinds = [
        "Namespace",
        "ConfigMap",
        "Service",
        "ServiceAccount",
        "Deployment",
        "StatefulSet",
        "WasmPlugin",
        "AuthorizationPolicy",
        "NetworkPolicy",
        "Kustomization",
    ];
    for expected in expected_kinds {
        assert!(kinds.contains(&expected), "no {expected} under deploy/ (found {kinds:?})");
    }
    let problems = problems(&schema, &manifests);
    assert!(problems.is_empty(), "manifests under deploy/ have problems:\n{}", problems.join("\n"));
}

#[test]
fn every_plugin_config_in_deploy_passes_validation() {
    let manifests = deploy_manifests();
    assert!(manifests.iter().any(|m| m.kind() == "WasmPlugin"), "no WasmPlugin under deploy/");
    let problems = plugin_config_problems(&manifests);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn wasmplugin_reaches_the_quota_service_by_its_istio_cluster_name() {
    let manifests = deploy_manifests();
    let plugin = manifests.iter().find(|m| m.kind() == "WasmPlugin").expect("a WasmPlugin");
    let quota = &plugin.doc["spec"]["pluginConfig"]["quota_service"];
    assert_eq!(quota["cluster"], "outbound|8081||tollgate-quota.tollgate.svc.cluster.local");
    assert_eq!(quota["authority"], "tollgate-quota.tollgate.svc.cluster.local");
    // The Service that cluster name stands for exists, with that port.
    let service = manifests
        .iter()
        .find(|m| m.kind() == "Service" && m.doc["metadata"]["name"] == "tollgate-quota")
        .expect("Service tollgate-quota");
    assert_eq!(service.doc["metadata"]["namespace"], "tollgate");
    assert_eq!(service.doc["spec"]["ports"][0]["port"], 8081);
    let spec = &plugin.doc["spec"];
    assert_eq!(spec["phase"], "AUTHN");
    assert_eq!(spec["match"][0]["mode"], "CLIENT");
    assert!(spec["url"].as_str().is_some_and(|u| u.starts_with("oci://")), "url: {}", spec["url"]);
}

#[test]
fn the_quota_service_takes_the_service_token_the_wasmplugin_sends_and_its_tiers() {
    let manifests = deploy_manifests();
    let plugin = manifests.iter().find(|m| m.kind() == "WasmPlugin").expect("a WasmPlugin");
    let config = &plugin.doc["spec"]["pluginConfig"];
    assert!(config["quota_service"]["token"].as_str().is_some_and(|t| t.len() >= 16), "no quota_service.token");
    let deployment = manifests
        .iter()
        .find(|m| m.kind() == "Deployment" && m.doc["metadata"]["name"] == "tollgate-quota")
        .expect("Deployment tollgate-quota");
    let env = deployment.doc["spec"]["template"]["spec"]["containers"][0]["env"].as_array().expect("env");
    let token = env.iter().find(|e| e["name"] == "TOLLGATE_QUOTA_SERVICE_TOKEN").expect("TOLLGATE_QUOTA_SERVICE_TOKEN");
    assert_eq!(token["valueFrom"]["secretKeyRef"]["key"], "service-token");
    let settings = manifests
        .iter()
        .find(|m| m.kind() == "ConfigMap" && m.doc["metadata"]["name"] == "tollgate-quota")
        .expect("ConfigMap tollgate-quota");
    let mut listed: Vec<&str> =
        settings.doc["data"]["TOLLGATE_QUOTA_TIERS"].as_str().expect("TOLLGATE_QUOTA_TIERS").split(',').collect();
    let mut configured: Vec<&str> = config["tiers"].as_object().expect("tiers").keys().map(String::as_str).collect();
    listed.sort_unstable();
    configured.sort_unstable();
    assert_eq!(listed, configured, "TOLLGATE_QUOTA_TIERS must name the WasmPlugin's tiers");
}

/// The ```json blocks of README.md that are plugin configurations (they have "tiers").
fn readme_plugin_configs() -> Vec<(usize, String)> {
    let readme = read(&root("README.md"));
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (n, line) in readme.lines().enumerate() {
        match &mut current {
            None if line.trim() == "```json" => current = Some((n + 2, String::new())),
            Some(_) if line.trim() == "```" => {
                let (start, text) = current.take().unwrap();
                if text.contains("\"tiers\"") {
                    blocks.push((start, text));
                }
            }
            Some((_, text)) => {
                text.push_str(line);
                text.push('\n');
            }
            None => {}
        }
    }
    blocks
}

#[test]
fn every_plugin_config_in_the_readme_passes_validation() {
    let blocks = readme_plugin_configs();
    assert!(!blocks.is_empty(), "README.md has no ```json plugin configuration");
    let problems: Vec<String> = blocks
        .iter()
        .filter_map(|(line, text)| {
            Config::from_json(text.as_bytes())
                .err()
                .map(|e| format!("README.md, ```json block at line {line}: invalid configuration: {e}"))
        })
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// The kustomizations, rendered as `kubectl apply -k` would.

/// `kubectl kustomize <dir>`: the documents it renders.
fn kustomize(dir: &Path) -> Vec<Value> {
    let output = Command::new("kubectl").arg("kustomize").arg(dir).output().unwrap_or_else(|e| {
        panic!("cannot run kubectl ({e}): these tests render the kustomizations with `kubectl kustomize` (.ci/run installs kubectl)")
    });
    assert!(
        output.status.success(),
        "kubectl kustomize {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    yaml_documents(&String::from_utf8(output.stdout).unwrap()).unwrap()
}

fn rendered(dir: &str) -> Vec<Manifest> {
    let file = format!("kubectl kustomize {dir}");
    kustomize(&root(dir))
        .into_iter()
        .enumerate()
        .map(|(index, doc)| Manifest { file: file.clone(), index, doc })
        .collect()
}

fn find<'a>(manifests: &'a [Manifest], kind: &str, name: &str) -> &'a Value {
    &manifests
        .iter()
        .find(|m| m.kind() == kind && m.doc["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {}", manifests.first().map_or("", |m| m.file.as_str())))
        .doc
}

/// Whether a `matchLabels` selector selects an object with `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let wanted = selector["matchLabels"].as_object().expect("matchLabels");
    !wanted.is_empty() && wanted.iter().all(|(key, value)| &labels[key] == value)
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array().into_iter().flatten().filter_map(|item| item["name"].as_str()).collect()
}

#[test]
fn every_kustomization_renders_into_manifests_with_real_fields() {
    let schema = Schema::load();
    for dir in ["deploy/istio", "deploy/redis"] {
        let manifests = rendered(dir);
        assert!(!manifests.is_empty(), "{dir} renders nothing");
        let problems = problems(&schema, &manifests);
        assert!(problems.is_empty(), "{dir} renders manifests with problems:\n{}", problems.join("\n"));
    }
}

/// The gateway as Istio installs it, with an operator's proxy config, patched as README.md
/// says (`kubectl patch --patch-file`: the same strategic merge as a kustomize patch).
#[test]
fn gateway_patch_keeps_the_gateways_proxy_config_and_adds_the_bootstrap() {
    let overlay = root(&format!("target/it/gateway-overlay-{}", std::process::id()));
    fs::create_dir_all(&overlay).unwrap();
    let gateway_path = root("tests/fixtures/istio-ingressgateway.yaml");
    for (from, to) in [
        (gateway_path.clone(), "gateway.yaml"),
        (root("deploy/istio/observe/gateway-bootstrap.yaml"), "gateway-bootstrap.yaml"),
        (root("deploy/istio/observe/gateway-patch.yaml"), "gateway-patch.yaml"),
    ] {
        fs::copy(&from, overlay.join(to)).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    }
    fs::write(
        overlay.join("kustomization.yaml"),
        "resources: [gateway.yaml, gateway-bootstrap.yaml]\npatches:\n  - path: gateway-patch.yaml\n",
    )
    .unwrap();
    let docs = kustomize(&overlay);
    fs::remove_dir_all(&overlay).unwrap();
    let before = yaml_documents(&read(&gateway_path)).unwrap().remove(0);
    let gateway = docs.iter().find(|d| d["kind"] == "Deployment").expect("the gateway Deployment");
    let bootstrap_map = docs.iter().find(|d| d["kind"] == "ConfigMap").expect("the bootstrap ConfigMap");

    // The proxy config: the operator's, untouched (a patch would replace the whole string).
    let annotations = &gateway["spec"]["template"]["metadata"]["annotations"];
    let proxy_config: Value =
        serde_yaml::from_str(annotations["proxy.istio.io/config"].as_str().expect("proxy.istio.io/config")).unwrap();
    assert_eq!(proxy_config["gatewayTopology"]["numTrustedProxies"], 2, "proxy.istio.io/config: {proxy_config}");
    assert_eq!(annotations, &before["spec"]["template"]["metadata"]["annotations"], "the pod's annotations changed");

    // The container keeps its env and mounts and gains the override; the pod keeps its volumes.
    let container = &gateway["spec"]["template"]["spec"]["containers"][0];
    let before_container = &before["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["name"], "istio-proxy");
    for (field, added) in [("env", "ISTIO_BOOTSTRAP_OVERRIDE"), ("volumeMounts", "tollgate-bootstrap")] {
        let mut expected = names(&before_container[field]);
        expected.push(added);
        expected.sort_unstable();
        let mut got = names(&container[field]);
        got.sort_unstable();
        assert_eq!(got, expected, "istio-proxy {field}");
    }
    let mut volumes = names(&before["spec"]["template"]["spec"]["volumes"]);
    volumes.push("tollgate-bootstrap");
    volumes.sort_unstable();
    let mut got = names(&gateway["spec"]["template"]["spec"]["volumes"]);
    got.sort_unstable();
    assert_eq!(got, volumes, "the pod's volumes");

    // The override names the mounted file of the ConfigMap, and that file adds tollgate's
    // stats to the gateway's inclusion list (Envoy appends repeated fields of --config-yaml).
    let env = container["env"].as_array().unwrap().iter().find(|e| e["name"] == "ISTIO_BOOTSTRAP_OVERRIDE").unwrap();
    let mount =
        container["volumeMounts"].as_array().unwrap().iter().find(|m| m["name"] == "tollgate-bootstrap").unwrap();
    let volume = gateway["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "tollgate-bootstrap")
        .unwrap();
    assert_eq!(volume["configMap"]["name"], bootstrap_map["metadata"]["name"]);
    let file = env["value"].as_str().unwrap().strip_prefix(&format!("{}/", mount["mountPath"].as_str().unwrap()));
    let file = file.unwrap_or_else(|| {
        panic!("ISTIO_BOOTSTRAP_OVERRIDE {} is not under the mount {}", env["value"], mount["mountPath"])
    });
    let fragment: Value =
        serde_json::from_str(bootstrap_map["data"][file].as_str().expect("the bootstrap file")).unwrap();
    let patterns = &fragment["stats_config"]["stats_matcher"]["inclusion_list"]["patterns"];
    assert!(
        patterns.as_array().is_some_and(|p| p.contains(&serde_json::json!({ "prefix": "wasmcustom.tollgate" }))),
        "the bootstrap fragment does not include tollgate's stats: {fragment}"
    );
    assert!(fragment["stats_config"]["stats_tags"].as_array().is_some_and(|t| !t.is_empty()), "{fragment}");
}

/// `redis.conf` directives: the last value of each (as Redis reads them).
fn redis_directives(conf: &str) -> BTreeMap<String, String> {
    conf.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split_once(' '))
        .map(|(key, value)| (key.to_lowercase(), value.trim().to_owned()))
        .collect()
}

const REDIS_DURABILITY: [(&str, &str); 3] =
    [("appendonly", "yes"), ("appendfsync", "everysec"), ("maxmemory-policy", "noeviction")];

#[test]
fn redis_keeps_counts_through_a_crash_and_never_evicts_them() {
    let manifests = rendered("deploy/redis");
    let statefulset = find(&manifests, "StatefulSet", "tollgate-redis");
    let pod = &statefulset["spec"]["template"]["spec"];
    let container = &pod["containers"][0];

    // redis-server is started with the file the ConfigMap mounts.
    let config_volume =
        pod["volumes"].as_array().unwrap().iter().find(|v| v["configMap"].is_object()).expect("a ConfigMap volume");
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == config_volume["name"])
        .expect("the ConfigMap mounted");
    let conf_arg = container["args"][0].as_str().expect("redis-server's first argument: its config file");
    let key =
        conf_arg.strip_prefix(&format!("{}/", mount["mountPath"].as_str().unwrap())).expect("a file of the mount");
    assert_eq!(container["command"], serde_json::json!(["redis-server"]));
    let config_map = find(&manifests, "ConfigMap", config_volume["configMap"]["name"].as_str().unwrap());
    let conf = config_map["data"][key].as_str().unwrap_or_else(|| panic!("ConfigMap has no {key}"));
    let directives = redis_directives(conf);
    for (name, value) in REDIS_DURABILITY {
        assert_eq!(directives.get(name).map(String::as_str), Some(value), "{name} in redis.conf:\n{conf}");
    }
    assert!(directives.contains_key("maxmemory"), "noeviction needs a maxmemory below the memory limit:\n{conf}");
    // The append-only file lives on the claimed volume.
    let data =
        container["volumeMounts"].as_array().unwrap().iter().find(|m| m["mountPath"] == directives["dir"].as_str());
    let data = data.unwrap_or_else(|| panic!("dir {} is not a mounted volume", directives["dir"]));
    assert_eq!(statefulset["spec"]["volumeClaimTemplates"][0]["metadata"]["name"], data["name"]);

    // A real redis-server takes the file and runs with those settings (its files in a
    // scratch directory instead of the volume).
    let dir = tollgate_testkit::scratch::fresh_temp("redis-conf");
    let conf_path = dir.join("redis.conf");
    let dir_line = format!("dir {}", directives["dir"]);
    assert!(conf.contains(&dir_line));
    fs::write(&conf_path, conf.replace(&dir_line, &format!("dir {}", dir.display()))).unwrap();
    let (process, port) = (0..5)
        .find_map(|attempt| {
            let port = tollgate_testkit::ports::free_port();
            let mut command = Command::new("redis-server");
            command.arg(&conf_path).args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--daemonize", "no"]);
            let log = dir.join(format!("redis-{attempt}.log"));
            let process = tollgate_testkit::process::Process::start(
                "redis-server",
                command,
                &log,
                "apt-get install redis-server",
            );
            let started =
                process.wait_ready(tollgate_testkit::redis::START_DEADLINE, || tollgate_testkit::redis::ping(port));
            started.is_ok().then_some((process, port))
        })
        .unwrap_or_else(|| {
            panic!("redis-server did not start with the shipped redis.conf (logs in {})", dir.display())
        });
    for (name, value) in REDIS_DURABILITY {
        let answer = tollgate_testkit::redis::cli(port, &["CONFIG", "GET", name]).unwrap();
        assert_eq!(answer.lines().collect::<Vec<_>>(), [name, value], "CONFIG GET {name}");
    }
    let info = tollgate_testkit::redis::cli(port, &["INFO", "persistence"]).unwrap();
    assert!(info.contains("aof_enabled:1"), "{info}");
    drop(process);
    fs::remove_dir_all(&dir).unwrap();
}

/// Whether an AuthorizationPolicy path (exact, `prefix*`, `*suffix` or `*`) matches `path`.
fn istio_path_matches(pattern: &str, path: &str) -> bool {
    if pattern == "*" {
        true
    } else if let Some(prefix) = pattern.strip_suffix('*') {
        path.starts_with(prefix)
    } else if let Some(suffix) = pattern.strip_prefix('*') {
        path.ends_with(suffix)
    } else {
        pattern == path
    }
}

fn strings(value: &Value) -> Vec<&str> {
    value.as_array().into_iter().flatten().filter_map(Value::as_str).collect()
}

/// Who an ALLOW policy lets call `method path`: the principals of each rule that matches
/// it, `*` for a rule open to anyone.
fn allowed_callers(policy: &Value, method: &str, path: &str) -> Vec<String> {
    assert_eq!(policy["spec"]["action"], "ALLOW");
    let mut callers = Vec::new();
    for rule in policy["spec"]["rules"].as_array().unwrap() {
        let matches = rule["to"].as_array().unwrap().iter().any(|to| {
            let op = &to["operation"];
            let methods = strings(&op["methods"]);
            (methods.is_empty() || methods.contains(&method))
                && strings(&op["paths"]).iter().any(|p| istio_path_matches(p, path))
                && !strings(&op["notPaths"]).iter().any(|p| istio_path_matches(p, path))
        });
        if !matches {
            continue;
        }
        match rule["from"].as_array() {
            None => callers.push("*".to_owned()),
            Some(from) => {
                assert!(from.iter().all(|f| f["source"].as_object().unwrap().keys().eq(["principals"])), "{rule}");
                callers.extend(from.iter().flat_map(|f| strings(&f["source"]["principals"])).map(str::to_owned));
            }
        }
    }
    callers.sort();
    callers
}

/// The quota service's routes, from its router: (method, path with a sample segment for
/// each parameter).
fn quota_service_routes() -> Vec<(String, String)> {
    let app = read(&root("crates/tollgate-quota/src/app.rs"));
    let mut routes = Vec::new();
    for line in app.lines().map(str::trim).filter(|l| l.starts_with(".route(\"")) {
        let path = line[".route(\"".len()..].split('"').next().unwrap();
        let sample: Vec<String> = path
            .split('/')
            .map(|seg| if seg.starts_with('{') { "sample".to_owned() } else { seg.to_owned() })
            .collect();
        for method in ["get", "post", "delete", "put", "patch"] {
            if line.contains(&format!("{method}(")) {
                routes.push((method.to_uppercase(), sample.join("/")));
            }
        }
    }
    assert!(routes.len() >= 9, "found only {routes:?} in crates/tollgate-quota/src/app.rs: update this test");
    routes
}

#[test]
fn quota_service_answers_each_endpoint_only_to_its_callers() {
    let manifests = rendered("deploy/istio");
    let policy = find(&manifests, "AuthorizationPolicy", "tollgate-quota");
    let deployment = find(&manifests, "Deployment", "tollgate-quota");
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert!(selects(&policy["spec"]["selector"], pod_labels), "the policy does not select the quota service's pods");

    let gateway = "cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account";
    let admin = "cluster.local/ns/tollgate/sa/tollgate-admin";
    let expected = [
        ("POST", "/v1/check", gateway),
        ("POST", "/v1/return", gateway),
        ("POST", "/v1/settle", gateway),
        ("POST", "/v1/keys/verify", gateway),
        ("POST", "/v1/keys", admin),
        ("GET", "/v1/keys", admin),
        ("DELETE", "/v1/keys/key_0123456789abcdef", admin),
        ("GET", "/v1/usage/free%2Fip%3A127.0.0.1%2F32", admin),
        ("GET", "/healthz", "*"),
        ("GET", "/readyz", "*"),
        ("GET", "/metrics", "*"),
        // Nobody: other methods and paths.
        ("GET", "/v1/check", ""),
        ("PUT", "/v1/keys/verify", ""),
        ("POST", "/v1/other", ""),
    ];
    for (method, path, who) in expected {
        let want: Vec<String> = if who.is_empty() { vec![] } else { vec![who.to_owned()] };
        assert_eq!(allowed_callers(policy, method, path), want, "{method} {path}");
    }
    // The admin identity is a ServiceAccount the manifests create.
    let account = find(&manifests, "ServiceAccount", "tollgate-admin");
    assert_eq!(
        admin,
        format!("cluster.local/ns/{}/sa/tollgate-admin", account["metadata"]["namespace"].as_str().unwrap())
    );
    // Every route of the service is open to someone: a new endpoint needs its line in
    // deploy/istio/policies.yaml.
    for (method, path) in quota_service_routes() {
        assert!(!allowed_callers(policy, &method, &path).is_empty(), "{method} {path} is refused to everyone");
    }
}

#[test]
fn network_policies_let_in_only_the_gateway_prometheus_admins_and_the_quota_service() {
    let istio = rendered("deploy/istio");
    let redis = rendered("deploy/redis");
    let quota = find(&istio, "Deployment", "tollgate-quota");
    let quota_pod = &quota["spec"]["template"];
    let plugin = istio.iter().find(|m| m.kind() == "WasmPlugin").unwrap();

    let policy = find(&istio, "NetworkPolicy", "tollgate-quota");
    assert!(selects(&policy["spec"]["podSelector"], &quota_pod["metadata"]["labels"]));
    assert_eq!(policy["spec"]["policyTypes"], serde_json::json!(["Ingress"]));
    let ingress = policy["spec"]["ingress"].as_array().unwrap();
    assert_eq!(ingress.len(), 3, "gateway, admins, Prometheus: {ingress:?}");
    let service_port = quota_pod["spec"]["containers"][0]["ports"][0]["containerPort"].clone();
    for rule in ingress {
        assert!(rule["ports"].as_array().unwrap().iter().any(|p| p["port"] == service_port), "{rule}");
        assert_eq!(rule["from"].as_array().unwrap().len(), 1, "{rule}");
    }
    // The gateway: the pods the WasmPlugin runs on, in its namespace.
    let gateway = &ingress[0]["from"][0];
    assert_eq!(gateway["podSelector"], plugin.doc["spec"]["selector"]);
    assert_eq!(
        gateway["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        plugin.doc["metadata"]["namespace"]
    );
    // Admins: pods of the quota service's namespace labelled as admins.
    assert_eq!(ingress[1]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"], "tollgate-admin");
    assert!(ingress[1]["from"][0]["namespaceSelector"].is_null());
    // Prometheus, which may also scrape Istio's merged metrics.
    let prometheus = &ingress[2]["from"][0];
    assert_eq!(prometheus["podSelector"]["matchLabels"]["app.kubernetes.io/name"], "prometheus");
    assert!(ingress[2]["ports"].as_array().unwrap().iter().any(|p| p["port"] == 15020));

    // Redis: the quota service's pods only, on Redis's port; and in the mesh its identity.
    let statefulset = find(&redis, "StatefulSet", "tollgate-redis");
    let policy = find(&redis, "NetworkPolicy", "tollgate-redis");
    assert!(selects(&policy["spec"]["podSelector"], &statefulset["spec"]["template"]["metadata"]["labels"]));
    let ingress = policy["spec"]["ingress"].as_array().unwrap();
    assert_eq!(ingress.len(), 1);
    assert_eq!(ingress[0]["from"].as_array().unwrap().len(), 1);
    assert!(ingress[0]["from"][0]["namespaceSelector"].is_null(), "the quota service's own namespace");
    assert!(selects(&ingress[0]["from"][0]["podSelector"], &quota_pod["metadata"]["labels"]));
    assert_eq!(
        ingress[0]["ports"][0]["port"],
        statefulset["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
    );
    let authz = find(&redis, "AuthorizationPolicy", "tollgate-redis");
    assert!(selects(&authz["spec"]["selector"], &statefulset["spec"]["template"]["metadata"]["labels"]));
    let quota_identity = format!(
        "cluster.local/ns/{}/sa/{}",
        quota["metadata"]["namespace"].as_str().unwrap(),
        quota_pod["spec"]["serviceAccountName"].as_str().unwrap()
    );
    assert_eq!(
        authz["spec"]["rules"],
        serde_json::json!([{ "from": [{ "source": { "principals": [quota_identity] } }] }])
    );
    assert_eq!(statefulset["metadata"]["namespace"], quota["metadata"]["namespace"]);
}

// The checker itself: each kind of mistake is caught and named.

fn problems_after_edit(path: &str, from: &str, to: &str) -> Vec<String> {
    let (file, text) = deploy_file(path);
    assert!(text.contains(from), "{file} no longer contains {from:?}: update this test");
    let manifests = manifests_in(&file, &text.replacen(from, to, 1));
    let mut all = problems(&Schema::load(), &manifests);
    all.extend(plugin_config_problems(&manifests));
    all
}

fn assert_reported(problems: &[String], needle: &str) {
    assert!(
        problems.iter().any(|p| p.contains(needle)),
        "expected a problem mentioning {needle:?}, got:\n{}",
        problems.join("\n")
    );
}

#[test]
fn checker_reports_a_misspelled_field() {
    let problems = problems_after_edit("deploy/istio/wasmplugin.yaml", "failStrategy:", "failStratgy:");
    assert_reported(&problems, "spec.failStratgy: not a field of WasmPlugin");
}

#[test]
fn checker_reports_a_misspelled_field_deep_in_a_deployment() {
    let problems = problems_after_edit("deploy/istio/quota-service.yaml", "secretKeyRef:", "secretKeyRefs:");
    assert_reported(
        &problems,
        "spec.template.spec.containers[0].env[0].valueFrom.secretKeyRefs: not a field of Deployment",
    );
}

#[test]
fn checker_reports_a_value_of_the_wrong_type() {
    // Kubernetes annotations are strings: an unquoted port number is refused by the API server.
    let problems = problems_after_edit(
        "deploy/istio/quota-service.yaml",
        "prometheus.io/port: \"8081\"",
        "prometheus.io/port: 8081",
    );
    assert_reported(&problems, "spec.template.metadata.annotations.prometheus.io/port: expected string, got a number");
}

#[test]
fn checker_reports_a_value_outside_an_enum() {
    let problems =
        problems_after_edit("deploy/istio/wasmplugin.yaml", "failStrategy: FAIL_CLOSE", "failStrategy: FAIL_CLOSED");
    assert_reported(&problems, "spec.failStrategy: expected one of");
}

#[test]
fn checker_reports_a_bad_plugin_config() {
    let problems = problems_after_edit("deploy/istio/wasmplugin.yaml", "limit: 5, window: 1d", "limit: 5, window: 1x");
    assert_reported(&problems, "spec.pluginConfig: invalid configuration: tiers.free.limits[0].window");
    let problems = problems_after_edit("deploy/istio/wasmplugin.yaml", "verify_keys: true", "verify_key: true");
    assert_reported(&problems, "spec.pluginConfig: invalid configuration: quota_service");
    assert_reported(&problems, "verify_key");
}

// `make oci`.

struct Layout {
    dir: PathBuf,
}

impl Layout {
    fn json(&self, path: &str) -> Value {
        serde_json::from_str(&read(&self.dir.join(path))).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// The blob a descriptor points at, after checking its digest and size.
    fn blob(&self, descriptor: &Value) -> Vec<u8> {
        let digest = descriptor["digest"].as_str().expect("descriptor digest");
        let hex = digest.strip_prefix("sha256:").unwrap_or_else(|| panic!("not a sha256 digest: {digest}"));
        let bytes = fs::read(self.dir.join("blobs/sha256").join(hex)).unwrap_or_else(|e| panic!("blob {digest}: {e}"));
        assert_eq!(sha256_hex(&bytes), hex, "blob {digest} does not hash to its name");
        assert_eq!(descriptor["size"].as_u64(), Some(bytes.len() as u64), "size of blob {digest}");
        bytes
    }
}

fn run_oci(wasm: &Path, out: &Path, tag: &str) -> String {
    let output = Command::new("bash")
        .arg(root("scripts/oci.sh"))
        .arg(wasm)
        .arg(out)
        .env("TAG", tag)
        .current_dir(ROOT)
        .output()
        .expect("run scripts/oci.sh");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "scripts/oci.sh failed:\n{stdout}{}", String::from_utf8_lossy(&output.stderr));
    stdout
}

/// `tool args... < input`, its standard output.
fn pipe(tool: &str, args: &[&str], input: &Path) -> Vec<u8> {
    let output = Command::new(tool)
        .args(args)
        .stdin(fs::File::open(input).unwrap())
        .output()
        .unwrap_or_else(|e| panic!("run {tool}: {e}"));
    assert!(output.status.success(), "{tool} {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    output.stdout
}

#[test]
fn make_oci_writes_the_image_layout_istio_pulls() {
    let wasm = root("target/wasm32-wasip1/release/tollgate.wasm");
    assert!(wasm.exists(), "{} is missing: run `make wasm` first", wasm.display());
    let module = fs::read(&wasm).unwrap();
    let scratch = root(&format!("target/it/oci-{}", std::process::id()));
    let (first, second) = (scratch.join("a"), scratch.join("b"));
    let stdout = run_oci(&wasm, &first, "1.2.3");
    let layout = Layout { dir: first.clone() };

    assert_eq!(layout.json("oci-layout"), serde_json::json!({ "imageLayoutVersion": "1.0.0" }));

    let index = layout.json("index.json");
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["mediaType"], "application/vnd.oci.image.index.v1+json");
    let entries = index["manifests"].as_array().expect("index manifests");
    assert_eq!(entries.len(), 1, "one image in the layout");
    assert_eq!(entries[0]["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(entries[0]["annotations"]["org.opencontainers.image.ref.name"], "1.2.3", "the tag oras/skopeo resolve");

    let manifest: Value = serde_json::from_slice(&layout.blob(&entries[0])).expect("manifest JSON");
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(manifest["config"]["mediaType"], "application/vnd.oci.image.config.v1+json");
    let layers = manifest["layers"].as_array().expect("manifest layers");
    assert_eq!(layers.len(), 1, "Istio reads the compat variant's single layer");
    assert_eq!(layers[0]["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip");

    // The layer is a gzipped tar holding exactly plugin.wasm, byte for byte the module.
    layout.blob(&layers[0]);
    let layer_path = first.join("blobs/sha256").join(&layers[0]["digest"].as_str().unwrap()[7..]);
    let listing = String::from_utf8(pipe("tar", &["-tzf", "-"], &layer_path)).unwrap();
    assert_eq!(listing.lines().collect::<Vec<_>>(), ["plugin.wasm"]);
    let extracted = pipe("tar", &["-xzOf", "-", "plugin.wasm"], &layer_path);
    assert_eq!(sha256_hex(&extracted), sha256_hex(&module), "plugin.wasm in the layer is not tollgate.wasm");

    // The config describes that layer: its diff_id is the digest of the uncompressed tar.
    let config: Value = serde_json::from_slice(&layout.blob(&manifest["config"])).expect("config JSON");
    let tar = pipe("gzip", &["-dc"], &layer_path);
    assert_eq!(config["rootfs"]["type"], "layers");
    assert_eq!(config["rootfs"]["diff_ids"], serde_json::json!([format!("sha256:{}", sha256_hex(&tar))]));
    assert!(config["architecture"].is_string() && config["os"].is_string(), "config: {config}");

    // What the WasmPlugin needs is printed: Istio checks `sha256` against the manifest digest.
    let manifest_hex = &entries[0]["digest"].as_str().unwrap()[7..];
    assert!(stdout.contains(&format!("sha256: {manifest_hex}")), "stdout lacks the WasmPlugin sha256:\n{stdout}");
    assert!(stdout.contains(&sha256_hex(&module)), "stdout lacks the module's sha256:\n{stdout}");
    assert!(stdout.contains("oras cp --from-oci-layout") && stdout.contains("crane push"), "{stdout}");

    // Reproducible: the same module gives the same image digest.
    run_oci(&wasm, &second, "1.2.3");
    assert_eq!(read(&first.join("index.json")), read(&second.join("index.json")));
    fs::remove_dir_all(&scratch).unwrap();
}
