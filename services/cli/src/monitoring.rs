//! `sluice monitoring render`: writes the dashboards and alert rules of `sluice-monitoring`
//! into a deployment directory, as the repository's `deploy/` holds them.

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
    },
}

pub fn run(command: MonitoringCommand) -> anyhow::Result<()> {
    match command {
        MonitoringCommand::Render { dir, runbook_base } => {
            let mut thresholds = sluice_monitoring::alerts::Thresholds::default();
            if let Some(base) = runbook_base {
                thresholds.runbook_base = base;
            }
            for (path, text) in sluice_monitoring::render(&thresholds) {
                let path = dir.join(path);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("cannot create {}", parent.display()))?;
                }
                std::fs::write(&path, text)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                println!("wrote {}", path.display());
            }
            Ok(())
        }
    }
}
