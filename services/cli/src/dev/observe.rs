//! What Prometheus scrapes in a dev cluster: every part's admin port as a file-based service
//! discovery target (`<dir>/prometheus/targets.json`), labelled as the dashboards and alert
//! rules expect (`service`, `node`, and `cluster` on backend nodes); and, with `--prometheus`,
//! Debian's Prometheus scraping them every second with Sluice's alert rules loaded.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use serde_json::json;

use super::{
    addr, backend_port, etcd_name, etcd_port, frontend_host, frontend_port, start_silent, EtcdPort,
    Netns, Parts, CLUSTER_NAMES, ETCD_MEMBERS, FRONTENDS,
};

/// The Prometheus web port: `base + 3` (etcd's first member takes the first three: client, peer, metrics).
pub(crate) fn prometheus_port(base: u16) -> u16 {
    base + 3
}

/// Every part's admin address with its labels.
fn targets(base: u16, clusters: u16, nodes: u16, netns: Option<&Netns>) -> serde_json::Value {
    let mut targets: Vec<serde_json::Value> = (0..ETCD_MEMBERS)
        .map(|m| {
            json!({
                "targets": [addr(etcd_port(base, m, EtcdPort::Metrics))],
                "labels": {"service": "etcd", "node": etcd_name(m)},
            })
        })
        .collect();
    let mut add = |service: &str, node: String, target: String| {
        targets.push(json!({
            "targets": [target],
            "labels": {"service": service, "node": node},
        }));
    };
    for i in 0..FRONTENDS {
        let admin = frontend_port(base, i) + 1;
        let target = format!("{}:{admin}", frontend_host(netns, i));
        add("frontend", format!("frontend-{}", i + 1), target);
    }
    for i in 0..2u16 {
        add(
            "manager",
            format!("manager-{}", i + 1),
            addr(base + 41 + 2 * i),
        );
    }
    for i in 0..3u16 {
        add("metadata", format!("m{}", i + 1), addr(base + 21 + 2 * i));
    }
    for (c, cluster) in CLUSTER_NAMES.iter().take(clusters.into()).enumerate() {
        for n in 0..nodes {
            let port = backend_port(base, nodes, c as u16, n) + 1;
            let host = match netns {
                Some(netns) => format!("{}:{port}", netns.node_ip(n.into())),
                None => addr(port),
            };
            targets.push(json!({
                "targets": [host],
                "labels": {"service": "backend", "cluster": cluster, "node": format!("{cluster}{}", n + 1)},
            }));
        }
    }
    serde_json::Value::Array(targets)
}

/// Writes `<dir>/prometheus/targets.json` and returns its path.
pub(crate) fn write_targets(
    dir: &Path,
    base: u16,
    clusters: u16,
    nodes: u16,
    netns: Option<&Netns>,
) -> anyhow::Result<PathBuf> {
    let prometheus = dir.join("prometheus");
    std::fs::create_dir_all(&prometheus)?;
    let path = prometheus.join("targets.json");
    let text = serde_json::to_string_pretty(&targets(base, clusters, nodes, netns))?;
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// Starts Prometheus on `prometheus_port(base)`, scraping the targets every second and
/// evaluating the alert rules in `<dir>/prometheus/sluice-alerts.yaml` (written with the default
/// thresholds unless a file is already there, so other thresholds can be tried).
pub(crate) fn start_prometheus(parts: &mut Parts, base: u16) -> anyhow::Result<()> {
    let dir = parts.dir.join("prometheus");
    let rules = dir.join("sluice-alerts.yaml");
    if !rules.exists() {
        let alerts = sluice_monitoring::alerts::all(&Default::default());
        std::fs::write(&rules, sluice_monitoring::alerts::rules_file(&alerts))?;
    }
    let config = dir.join("prometheus.yml");
    let text = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules:?}\nscrape_configs:\n  - job_name: sluice\n    file_sd_configs:\n      - files:\n          - {targets:?}\n        refresh_interval: 5s\n",
        rules = rules.display().to_string(),
        targets = dir.join("targets.json").display().to_string(),
    );
    std::fs::write(&config, text)?;
    let port = prometheus_port(base);
    let mut command = Command::new("prometheus");
    command
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={}", addr(port)))
        .arg("--storage.tsdb.retention.time=1d");
    start_silent(parts, "prometheus", command, port)
        .context("cannot start Prometheus (install Debian's prometheus)")
}
