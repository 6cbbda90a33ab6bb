//! Metric values as a scraper reads them: from the text exposition.

use prometheus::Registry;

/// Sum of a metric's samples over all label sets, read from the text exposition as a
/// scraper would. For histograms pass the `_count` series.
pub fn metric(registry: &Registry, name: &str) -> f64 {
    metric_with(registry, name, &[])
}

/// Like [`metric`], counting only samples whose labels contain every `labels` entry
/// (written as in the exposition, e.g. `outcome="delivered"`).
pub fn metric_with(registry: &Registry, name: &str, labels: &[&str]) -> f64 {
    sum_metric_with(&exposition(registry), name, labels)
}

/// The registry's samples whose labels contain `label` (e.g. `sink="receiver"`), histogram
/// buckets left out: what a failing test prints about one component.
pub fn samples_with(registry: &Registry, label: &str) -> String {
    exposition(registry)
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains(label) && !l.contains("_bucket{"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The registry in Prometheus' text exposition, as `/metrics` serves it.
fn exposition(registry: &Registry) -> String {
    let mut text = Vec::new();
    prometheus::Encoder::encode(
        &prometheus::TextEncoder::new(),
        &registry.gather(),
        &mut text,
    )
    .unwrap();
    String::from_utf8(text).unwrap()
}

/// Sums the samples of `name` (any labels) in a Prometheus text exposition.
pub fn sum_metric(exposition: &str, name: &str) -> f64 {
    sum_metric_with(exposition, name, &[])
}

pub fn sum_metric_with(exposition: &str, name: &str, labels: &[&str]) -> f64 {
    exposition
        .lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
                && labels.iter().all(|l| line.contains(l))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A metric's value summed over label sets, scraped from a process's /metrics;
/// `None` if it does not answer.
pub async fn scrape(port: u16, name: &str) -> Option<f64> {
    relaycord_bus::install_crypto_provider();
    let body = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    Some(sum_metric(&body, name))
}
