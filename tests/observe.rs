#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
//! Observability end to end: a real Envoy with `envoy.yaml` (its stats_tags included) and the
//! real quota service get traffic; then every metric that a query of the Grafana dashboard
//! (`deploy/grafana/tollgate.json`) selects, with the label values it filters on and the
//! labels it groups by, must be in Envoy's `/stats/prometheus` or the service's `/metrics`.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tollgate_testkit::envoy::{Envoy, EnvoyOptions};
use tollgate_testkit::quota_service::QuotaService;
use tollgate_testkit::wait::Wait;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const DASHBOARD: &str = "deploy/grafana/tollgate.json";

/// One sample line of a Prometheus text exposition.
#[derive(Debug)]
struct Series {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The samples of a Prometheus (or OpenMetrics) text exposition.
fn parse_exposition(text: &str) -> Vec<Series> {
    let mut series = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = line[..name_end].to_owned();
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(inner) = rest.strip_prefix('{') {
            let mut chars = inner.char_indices();
            let mut key = String::new();
            loop {
                let Some((i, c)) = chars.next() else { panic!("unterminated labels: {line}") };
                match c {
                    '}' => {
                        rest = &inner[i + 1..];
                        break;
                    }
                    ',' | ' ' => {}
                    '=' => {
                        assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "label value not quoted: {line}");
                        let mut value = String::new();
                        while let Some((_, c)) = chars.next() {
                            match c {
                                '\\' => value.push(chars.next().map_or('\\', |(_, c)| c)),
                                '"' => break,
                                c => value.push(c),
                            }
                        }
                        labels.insert(std::mem::take(&mut key), value);
                    }
                    c => key.push(c),
                }
            }
        }
        let value = rest.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
        series.push(Series { name, labels, value });
    }
    series
}

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Eq,
    Ne,
    Re,
    NotRe,
}

/// A label matcher of a PromQL selector, such as `outcome!="unlimited"`.
#[derive(Debug, Clone, PartialEq)]
struct Matcher {
    label: String,
    op: Op,
    value: String,
}

impl Matcher {
    /// PromQL regexes are fully anchored; the dashboard only uses alternations of plain
    /// words (`allowed|limited`), which is all this supports.
    fn alternatives(&self) -> Vec<&str> {
        assert!(
            !self.value.contains(['.', '*', '+', '?', '(', ')', '[', ']', '{', '}', '^', '$', '\\']),
            "regex matcher {:?} is more than an alternation of words: extend this checker",
            self.value
        );
        self.value.split('|').collect()
    }

    fn accepts(&self, labels: &BTreeMap<String, String>) -> bool {
        let actual = labels.get(&self.label).map_or("", String::as_str);
        match self.op {
            Op::Eq => actual == self.value,
            Op::Ne => actual != self.value,
            Op::Re => self.alternatives().contains(&actual),
            Op::NotRe => !self.alternatives().contains(&actual),
        }
    }
}

/// A metric a query reads: `name{matchers}`.
#[derive(Debug, Clone, PartialEq)]
struct Selector {
    metric: String,
    matchers: Vec<Matcher>,
}

impl Selector {
    fn matches(&self, series: &Series) -> bool {
        series.name == self.metric && self.matchers.iter().all(|m| m.accepts(&series.labels))
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ops = |op: &Op| match op {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Re => "=~",
            Op::NotRe => "!~",
        };
        let matchers: Vec<String> =
            self.matchers.iter().map(|m| format!("{}{}{:?}", m.label, ops(&m.op), m.value)).collect();
        write!(f, "{}{{{}}}", self.metric, matchers.join(","))
    }
}

/// Words of PromQL that are not metric names when not followed by `(`.
const KEYWORDS: [&str; 7] = ["and", "or", "unless", "bool", "offset", "inf", "nan"];
/// Aggregation operators, which may take `by (...)` before their parenthesis.
const AGGREGATIONS: [&str; 12] =
    ["sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk", "quantile"];
/// Modifiers followed by a parenthesised list of label names.
const LABEL_LISTS: [&str; 6] = ["by", "without", "on", "ignoring", "group_left", "group_right"];

/// The selectors of a PromQL query and the labels it groups by (`by (...)`). Enough PromQL
/// for dashboards: functions, aggregations, binary operators, ranges, strings, numbers.
fn parse_query(query: &str) -> (Vec<Selector>, Vec<String>) {
    let chars: Vec<char> = query.chars().collect();
    let (mut selectors, mut grouping) = (Vec::new(), Vec::new());
    let mut i = 0;
    let skip_space = |mut i: usize| {
        while chars.get(i).is_some_and(|c| c.is_whitespace()) {
            i += 1;
        }
        i
    };
    let until = |i: usize, end: char| (i..chars.len()).find(|&j| chars[j] == end).unwrap_or(chars.len());
    while i < chars.len() {
        let c = chars[i];
        if c == '[' {
            i = until(i, ']') + 1; // a range such as [$__rate_interval]
        } else if c == '"' || c == '\'' {
            i = until(i + 1, c) + 1;
        } else if c.is_ascii_digit() {
            while chars.get(i).is_some_and(|c| c.is_ascii_alphanumeric() || *c == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while chars.get(i).is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = skip_space(i);
            if LABEL_LISTS.contains(&word.as_str()) && chars.get(next) == Some(&'(') {
                let close = until(next, ')');
                let list: String = chars[next + 1..close].iter().collect();
                if word == "by" {
                    grouping.extend(list.split(',').map(|l| l.trim().to_owned()).filter(|l| !l.is_empty()));
                }
                i = close + 1;
            } else if chars.get(next) == Some(&'(')
                || KEYWORDS.contains(&word.to_ascii_lowercase().as_str())
                || AGGREGATIONS.contains(&word.as_str())
            {
                // A function or an aggregation; its arguments are scanned next.
            } else {
                let mut selector = Selector { metric: word, matchers: Vec::new() };
                if chars.get(next) == Some(&'{') {
                    let close = until(next, '}');
                    let body: String = chars[next + 1..close].iter().collect();
                    selector.matchers = parse_matchers(&body, query);
                    i = close + 1;
                }
                selectors.push(selector);
            }
        } else {
            i += 1;
        }
    }
    (selectors, grouping)
}

fn parse_matchers(body: &str, query: &str) -> Vec<Matcher> {
    let mut matchers = Vec::new();
    let mut rest = body.trim();
    while !rest.is_empty() {
        let op_at = rest.find(['=', '!']).unwrap_or_else(|| panic!("bad matcher in {query}"));
        let label = rest[..op_at].trim().to_owned();
        let (op, len) = match &rest[op_at..] {
            r if r.starts_with("=~") => (Op::Re, 2),
            r if r.starts_with("!~") => (Op::NotRe, 2),
            r if r.starts_with("!=") => (Op::Ne, 2),
            _ => (Op::Eq, 1),
        };
        let value_part = rest[op_at + len..].trim_start();
        assert!(value_part.starts_with('"'), "matcher value not quoted in {query}");
        let end = value_part[1..].find('"').unwrap_or_else(|| panic!("unterminated string in {query}")) + 1;
        matchers.push(Matcher { label, op, value: value_part[1..end].to_owned() });
        rest = value_part[end + 1..].trim_start().trim_start_matches(',').trim_start();
    }
    matchers
}

/// Every query of a Grafana dashboard, with the title of its panel.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for panel in panels.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("?").to_owned();
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push((title.clone(), expr.to_owned()));
                }
            }
            walk(&panel["panels"], out);
        }
    }
    let mut queries = Vec::new();
    walk(&dashboard["panels"], &mut queries);
    queries
}

/// What the dashboard asks for that the scrapes do not have, one line per problem.
fn missing_in(dashboard: &Value, series: &[Series]) -> Vec<String> {
    let mut problems = Vec::new();
    for (panel, query) in dashboard_queries(dashboard) {
        let (selectors, grouping) = parse_query(&query);
        if selectors.is_empty() {
            problems.push(format!("panel {panel:?}: `{query}` selects no metric"));
        }
        for selector in &selectors {
            if !series.iter().any(|s| selector.matches(s)) {
                problems.push(format!("panel {panel:?}: `{query}`: no series {selector} in the scrapes"));
            }
        }
        for label in &grouping {
            let found =
                selectors.iter().any(|sel| series.iter().any(|s| sel.matches(s) && s.labels.contains_key(label)));
            if !found {
                problems.push(format!("panel {panel:?}: `{query}`: groups by {label:?}, which no selected series has"));
            }
        }
    }
    problems
}

fn load_dashboard(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{DASHBOARD} is not JSON: {e}"))
}

fn value_of(series: &[Series], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    series
        .iter()
        .find(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .map(|s| s.value)
}

#[test]
fn every_dashboard_query_finds_its_series_in_real_scrapes() {
    let mut quota = QuotaService::start("memory");
    let envoy = Envoy::start(EnvoyOptions { quota_port: Some(quota.port), ..EnvoyOptions::default() });
    let images = "/v1/images/generations";

    // Anonymous callers: the free tier's global 5 per day, counted by the quota service.
    for _ in 0..6 {
        envoy.request("POST", images, &[]);
    }
    // A demo key of envoy.yaml (premium), a key issued by the quota service (basic), an
    // unknown key (401) and malformed credentials (400).
    assert_eq!(envoy.request("POST", images, &[("authorization", "Bearer tg_demo_premium_0123456789")]).status, 200);
    let (_, token) = quota.create_key("basic", "acme");
    let bearer = format!("Bearer {token}");
    assert_eq!(envoy.request("POST", images, &[("authorization", bearer.as_str())]).status, 200);
    let unknown = envoy.request("POST", images, &[("authorization", "Bearer tg_unknown_0123456789abcdef")]);
    assert_eq!(unknown.status, 401, "{}", unknown.body);
    assert_eq!(envoy.request("POST", images, &[("authorization", "Basic Zm9vOmJhcg==")]).status, 400);
    // A metered chat request: its tokens are reserved, then settled to the stand-in
    // upstream's usage (10 in, 40 out).
    let body = r#"{"model":"m","messages":[],"max_tokens":20}"#;
    let chat = envoy.request_with_body("POST", "/v1/chat/completions", &[], body);
    assert_eq!(chat.status, 200, "{}", chat.body);
    Wait::new("the chat request to be settled").until(|| envoy.counter("tollgate.settle.settled") == Some(1));

    let envoy_text = envoy.stats_prometheus();
    let quota_text = quota.metrics();
    let envoy_series = parse_exposition(&envoy_text);
    let quota_series = parse_exposition(&quota_text);

    // The stats_tags of envoy.yaml at work: labels, not one metric name per tier and outcome.
    let free = |outcome| value_of(&envoy_series, "tollgate_requests", &[("tier", "free"), ("outcome", outcome)]);
    assert_eq!(free("allowed"), Some(6.0), "5 images and the chat request: {envoy_text}");
    assert_eq!(free("limited"), Some(1.0), "{envoy_text}");
    let none = |outcome| value_of(&envoy_series, "tollgate_requests", &[("tier", "none"), ("outcome", outcome)]);
    assert_eq!(none("unauthenticated"), Some(1.0), "{envoy_text}");
    assert_eq!(none("malformed"), Some(1.0), "{envoy_text}");
    assert!(
        !envoy_text.contains("tollgate_requests_free_allowed"),
        "tier and outcome still in the name:\n{envoy_text}"
    );
    let tokens = |kind| value_of(&envoy_series, kind, &[("tier", "free"), ("unit", "tokens")]);
    assert_eq!(tokens("tollgate_units_charged"), Some(50.0), "{envoy_text}");
    assert_eq!(tokens("tollgate_units_reserved"), Some(21.0), "1 token of prompt and 20 out: {envoy_text}");
    assert_eq!(
        value_of(&quota_series, "tollgate_quota_decisions_total", &[("tier", "free"), ("outcome", "limited")]),
        Some(1.0),
        "{quota_text}"
    );
    // Envoy moves histogram samples to /stats/prometheus at its stats flush (every 5 s).
    Wait::new("a callout latency in /stats/prometheus (tollgate_quota_latency_ms_count >= 1)")
        .at_most(Duration::from_secs(30))
        .every(Duration::from_millis(200))
        .until_ok(|| {
            let text = envoy.stats_prometheus();
            match value_of(&parse_exposition(&text), "tollgate_quota_latency_ms_count", &[]) {
                Some(n) if n >= 1.0 => Ok(()),
                _ => Err(format!("no callout latency recorded:\n{text}")),
            }
        });
    // One line per refusal, naming tier, limit and a hash of the caller's network.
    let log = envoy.log();
    assert!(log.contains("decision=limited tier=free limit=images-per-day caller=ip#"), "{log}");

    // The quota service goes away: the breaker opens and degraded decisions are counted.
    quota.kill();
    for _ in 0..7 {
        envoy.request("POST", images, &[("authorization", "Bearer tg_demo_premium_0123456789")]);
    }
    let after = parse_exposition(&envoy.stats_prometheus());
    assert!(value_of(&after, "tollgate_quota_failures", &[]).is_some_and(|n| n >= 1.0));
    assert!(value_of(&after, "tollgate_quota_failure_mode", &[("mode", "open")]).is_some_and(|n| n >= 1.0));

    let mut series = after;
    series.extend(quota_series);
    let dashboard_text = fs::read_to_string(Path::new(ROOT).join(DASHBOARD)).expect("read the dashboard");
    let dashboard = load_dashboard(&dashboard_text);
    assert!(dashboard_queries(&dashboard).len() >= 10, "the dashboard has hardly any queries");
    let missing = missing_in(&dashboard, &series);
    assert!(missing.is_empty(), "{DASHBOARD} asks for series the scrapes lack:\n{}", missing.join("\n"));

    // The check catches a made-up metric and a label value that never occurs.
    for (from, to, expected) in [
        ("tollgate_quota_timeouts[", "tollgate_quota_timeoutz[", "no series tollgate_quota_timeoutz{}"),
        ("outcome=\\\"limited\\\"", "outcome=\\\"limitted\\\"", "no series tollgate_requests{outcome=\"limitted\"}"),
        ("sum by (op) (", "sum by (operation) (", "groups by \"operation\""),
    ] {
        assert!(dashboard_text.contains(from), "{DASHBOARD} no longer contains {from}: update this test");
        let broken = load_dashboard(&dashboard_text.replacen(from, to, 1));
        let missing = missing_in(&broken, &series);
        assert!(missing.iter().any(|m| m.contains(expected)), "{expected} not reported; got:\n{}", missing.join("\n"));
    }
}

#[test]
fn queries_are_read_into_selectors_and_grouping_labels() {
    let (selectors, grouping) = parse_query(
        r#"sum by (tier) (rate(tollgate_requests{outcome="limited"}[$__rate_interval])) / sum by (tier) (rate(tollgate_requests{outcome=~"allowed|limited", tier!="none"}[5m]))"#,
    );
    let matcher = |label: &str, op, value: &str| Matcher { label: label.to_owned(), op, value: value.to_owned() };
    assert_eq!(
        selectors,
        [
            Selector { metric: "tollgate_requests".into(), matchers: vec![matcher("outcome", Op::Eq, "limited")] },
            Selector {
                metric: "tollgate_requests".into(),
                matchers: vec![matcher("outcome", Op::Re, "allowed|limited"), matcher("tier", Op::Ne, "none")]
            },
        ]
    );
    assert_eq!(grouping, ["tier", "tier"]);
    let (selectors, grouping) = parse_query("histogram_quantile(0.99, sum by (le, op) (rate(x_bucket[1m]))) > 0.5");
    assert_eq!(selectors, [Selector { metric: "x_bucket".into(), matchers: vec![] }]);
    assert_eq!(grouping, ["le", "op"]);

    let series = parse_exposition(
        "# TYPE a counter\na{tier=\"free\",outcome=\"allowed\"} 5\nb_total{op=\"check\",note=\"x\\\"y\"} 1\nc 2\n",
    );
    assert_eq!(series.len(), 3);
    assert_eq!(series[0].labels["outcome"], "allowed");
    assert_eq!(series[1].labels["note"], "x\"y");
    assert_eq!(series[2].value, 2.0);
}
