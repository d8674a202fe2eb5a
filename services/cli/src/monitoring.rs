//! `sluice monitoring render`: writes the dashboards and alert rules of `sluice-monitoring`
//! into a deployment directory, as the repository's `deploy/` holds them, and the Helm chart's
//! copies (a chart reads only files inside it).

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum MonitoringCommand {
    /// Write the Grafana dashboards to DIR/grafana and the alert rules (a rules file, a
    /// PrometheusRule and their promtool tests) to DIR/prometheus.
    Render {
        #[arg(long, default_value = "deploy")]
        dir: PathBuf,
        /// Where docs/runbooks.md is served; each alert links to its entry.
        #[arg(long)]
        runbook_base: Option<String>,
        /// The Helm chart whose files/ gets copies of the dashboards and the rules file.
        #[arg(long, default_value = "k8s/charts/sluice")]
        chart: PathBuf,
    },
}

pub fn run(command: MonitoringCommand) -> anyhow::Result<()> {
    match command {
        MonitoringCommand::Render {
            dir,
            runbook_base,
            chart,
        } => {
            let mut thresholds = sluice_monitoring::alerts::Thresholds::default();
            if let Some(base) = runbook_base {
                thresholds.runbook_base = base;
            }
            for (path, text) in sluice_monitoring::render(&thresholds) {
                // The chart templates a PrometheusRule from the rules file itself.
                let in_chart = path.starts_with("grafana")
                    || path == std::path::Path::new("prometheus/sluice-alerts.yaml");
                if in_chart {
                    write(&chart.join("files").join(&path), &text)?;
                }
                write(&dir.join(path), &text)?;
            }
            Ok(())
        }
    }
}

fn write(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}
