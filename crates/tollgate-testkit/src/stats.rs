//! Envoy's counters and gauges, read from the admin interface's `/stats`.

use std::time::Duration;

use crate::http;
use crate::wait::Wait;

/// The `name: value` lines of `/stats` with a whole-number value (counters and gauges;
/// histograms are left out).
pub fn parse(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(": ")?;
            Some((name.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

/// The value of `name` among `stats`; a wasm filter's own metric is also found under its
/// `wasmcustom.` prefix.
pub fn find(stats: &[(String, u64)], name: &str) -> Option<u64> {
    let custom = format!("wasmcustom.{name}");
    stats.iter().find(|(k, _)| *k == name || *k == custom).map(|(_, v)| *v)
}

/// Every counter and gauge of the admin interface on `admin_port`; `None` if it does not
/// answer.
pub fn try_counters(admin_port: u16) -> Option<Vec<(String, u64)>> {
    http::get(admin_port, "/stats").filter(|r| r.status == 200).map(|r| parse(&r.body))
}

/// Every counter and gauge of the admin interface on `admin_port`; panics if it does not
/// answer.
pub fn counters(admin_port: u16) -> Vec<(String, u64)> {
    try_counters(admin_port).unwrap_or_else(|| panic!("Envoy's admin interface on port {admin_port} did not answer"))
}

/// The value of the stat `name` (see [`find`]); `None` if Envoy has no such stat.
pub fn counter(admin_port: u16, name: &str) -> Option<u64> {
    find(&counters(admin_port), name)
}

/// `/stats/prometheus` of the admin interface on `admin_port`.
pub fn prometheus(admin_port: u16) -> String {
    http::get(admin_port, "/stats/prometheus")
        .unwrap_or_else(|| panic!("Envoy's admin interface on port {admin_port} did not answer"))
        .body
}

/// Waits until the stat `name` is at least `value`, and returns it; panics after
/// `deadline` with the value it had.
pub fn wait_for(admin_port: u16, name: &str, value: u64, deadline: Duration) -> u64 {
    Wait::new(format!("the stat {name} to reach {value}")).at_most(deadline).until_ok(|| {
        match counter(admin_port, name) {
            Some(now) if now >= value => Ok(now),
            now => Err(format!("it is {now:?}")),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_wasm_metrics_are_found_and_histograms_skipped() {
        let stats = parse(
            "http.ingress.downstream_rq_total: 3\n\
             wasmcustom.tollgate.quota.callouts: 12\n\
             http.ingress.downstream_rq_time: P0(nan,1) P25(nan,1)\n",
        );
        assert_eq!(find(&stats, "http.ingress.downstream_rq_total"), Some(3));
        assert_eq!(find(&stats, "tollgate.quota.callouts"), Some(12));
        assert_eq!(find(&stats, "http.ingress.downstream_rq_time"), None);
    }
}
