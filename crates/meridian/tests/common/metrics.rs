//! Reading a node's `/metrics` in tests.

use super::{ADMIN_TOKEN, Server, raw};

/// `GET /metrics` on a node's admin port with `token`.
pub fn scrape_with(server: &Server, token: Option<&str>) -> raw::Response {
    let headers: Vec<(&str, String)> = token.map(|t| ("authorization", format!("Bearer {t}"))).into_iter().collect();
    let addr = server.admin_url.split_once("://").map_or(server.admin_url.as_str(), |(_, rest)| rest);
    raw::send(addr, "GET", "/metrics", &headers, b"")
}

/// The node's metrics, read with the admin token.
pub fn scrape(server: &Server) -> String {
    let resp = scrape_with(server, Some(ADMIN_TOKEN));
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.text()
}

/// The value of the sample `name` whose labels include every pair of `labels` (0 when there is
/// none: a counter that never moved has no sample yet).
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').expect("a sample line ends with its value");
        let (metric, label_text) = match series.split_once('{') {
            Some((metric, rest)) => (metric, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let have: Vec<&str> = label_text.split(',').collect();
        if metric == name && wanted.iter().all(|w| have.contains(&w.as_str())) {
            assert!(found.is_none(), "more than one sample of {name} matches {labels:?}:\n{text}");
            found = Some(value.parse::<f64>().expect("a sample's value is a number"));
        }
    }
    found.unwrap_or(0.0)
}

/// S3 requests of operation `op` answered with status class `class` (e.g. `2xx`).
pub fn s3_ops(text: &str, op: &str, class: &str) -> f64 {
    let labels = [("listener", "s3"), ("operation", op), ("status_class", class)];
    sample(text, "meridian_http_requests_total", &labels)
}
