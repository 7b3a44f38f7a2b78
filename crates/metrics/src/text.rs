//! The Prometheus text format (0.0.4) from the OpenMetrics text `prometheus-client` writes.
//!
//! The two differ, for the families Meridian has (counters, gauges, histograms), in three
//! ways: OpenMetrics names a counter family without its `_total` suffix in `# HELP`/`# TYPE`,
//! has `# UNIT` lines, and ends with `# EOF`. Scrapers that ask for OpenMetrics get it as
//! written; everything else (`promtool check metrics`, curl, older scrapers) gets this.

/// Rewrites OpenMetrics text into the Prometheus text format.
pub fn openmetrics_to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut counters = std::collections::HashSet::new();
    for line in openmetrics.lines() {
        if let Some(name) = line.strip_prefix("# TYPE ").and_then(|rest| rest.strip_suffix(" counter")) {
            counters.insert(name);
        }
    }
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some((directive, rest)) = metadata_line(line) {
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            if counters.contains(name) {
                out.push_str(&format!("# {directive} {name}_total {tail}"));
                out.push('\n');
                continue;
            }
            if directive == "TYPE" && tail == "unknown" {
                out.push_str(&format!("# TYPE {name} untyped\n"));
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// `# HELP name ...` or `# TYPE name ...`: the directive and the rest.
fn metadata_line(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix("# ")?;
    let (directive, rest) = rest.split_once(' ')?;
    matches!(directive, "HELP" | "TYPE").then_some((directive, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_get_their_total_suffix_and_openmetrics_lines_go() {
        let om = "# HELP a_requests Requests.\n# TYPE a_requests counter\na_requests_total{x=\"1\"} 3\n\
                  # HELP a_lat_seconds Latency.\n# TYPE a_lat_seconds histogram\n# UNIT a_lat_seconds seconds\n\
                  a_lat_seconds_sum 1.5\na_lat_seconds_count 2\na_lat_seconds_bucket{le=\"+Inf\"} 2\n# EOF\n";
        let text = openmetrics_to_prometheus_text(om);
        assert_eq!(
            text,
            "# HELP a_requests_total Requests.\n# TYPE a_requests_total counter\na_requests_total{x=\"1\"} 3\n\
             # HELP a_lat_seconds Latency.\n# TYPE a_lat_seconds histogram\n\
             a_lat_seconds_sum 1.5\na_lat_seconds_count 2\na_lat_seconds_bucket{le=\"+Inf\"} 2\n"
        );
    }
}
