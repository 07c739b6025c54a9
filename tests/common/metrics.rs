//! Reading a daemon's `/metrics` page.

use super::http_get;

/// The whole `/metrics` page of the daemon at `addr`.
pub async fn metrics(addr: &str) -> String {
    http_get(&format!("http://{addr}/metrics")).await.1
}

/// The value of `series` (name and labels, as printed) on a metrics page, if present.
pub fn value(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
}

/// The value of one series on the daemon's `/metrics` page (0 when absent).
pub async fn metric(addr: &str, series: &str) -> f64 {
    value(&metrics(addr).await, series).unwrap_or(0.0)
}

/// The value of one series, or None when it is absent or the daemon does not answer (a
/// replica that was killed).
pub async fn gauge(addr: &str, series: &str) -> Option<f64> {
    let r = reqwest::get(format!("http://{addr}/metrics")).await.ok()?;
    value(&r.text().await.ok()?, series)
}
