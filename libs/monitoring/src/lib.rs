//! What operators watch Sluice with, written once as code: the Grafana dashboards
//! ([`dashboards`]) and the Prometheus alert rules ([`alerts`]), rendered into the files under
//! `deploy/grafana/` and `deploy/prometheus/` by `sluice monitoring render`. A test renders
//! them again and compares, so the files never drift from this crate, and the live test in
//! `tests/tests/monitoring.rs` runs every query here against a real Prometheus.
//!
//! Both assume what the scrape configuration adds to every target (the chart's, or
//! `sluice dev cluster up --prometheus`'s): `service` (frontend, metadata, backend, manager,
//! standalone, etcd), `node`, `cluster` on backend nodes, and `namespace` in Kubernetes.

pub mod alerts;
pub mod catalog;
pub mod dashboards;
pub mod scrape;
mod yaml;

use std::path::{Path, PathBuf};

/// Where each rendered file goes under the repository's `deploy/` directory, with its text.
pub fn render(thresholds: &alerts::Thresholds) -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    for dashboard in dashboards::all() {
        files.push((
            Path::new("grafana").join(format!("{}.json", dashboard.uid)),
            dashboard.to_json_string(),
        ));
    }
    let rules = alerts::all(thresholds);
    files.push((
        Path::new("prometheus").join("sluice-alerts.yaml"),
        alerts::rules_file(&rules),
    ));
    files.push((
        Path::new("prometheus").join("sluice-prometheusrule.yaml"),
        alerts::prometheus_rule(&rules),
    ));
    files.push((
        Path::new("prometheus").join("sluice-alerts.test.yaml"),
        alerts::promtool_tests(&rules),
    ));
    files
}
