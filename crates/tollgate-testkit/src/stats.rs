//! Envoy's counters and gauges, read from the admin interface's `/stats`.

use crate::http;

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
