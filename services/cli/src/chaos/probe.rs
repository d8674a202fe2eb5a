//! What a chaos run reads off the processes it started: which backend node and which manager
//! lead, and the largest replication lag any backend reports, from their admin ports' /metrics.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Keeps the largest `sluice_backend_replication_lag_entries` any backend reports.
pub(super) async fn sample_lag(
    admin_ports: Vec<String>,
    max: Arc<std::sync::atomic::AtomicU64>,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        let ports = admin_ports.clone();
        let seen = tokio::task::spawn_blocking(move || {
            ports
                .iter()
                .filter_map(|addr| {
                    metric_of(addr, "sluice_backend_replication_lag_entries").map(|v| v as u64)
                })
                .max()
                .unwrap_or(0)
        })
        .await
        .unwrap_or(0);
        max.fetch_max(seen, std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Which of the processes (by their admin addresses) reports 1 for the gauge `metric`.
fn leader_of(admin: &[String], metric: &str) -> Option<usize> {
    admin
        .iter()
        .position(|addr| metric_of(addr, metric) == Some(1.0))
}

/// A metric without labels from the admin address `addr`.
fn metric_of(addr: &str, name: &str) -> Option<f64> {
    let addr: std::net::SocketAddr = addr.parse().ok()?;
    // A node cut off the network does not answer: give up soon.
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse::<f64>().ok())
}

/// The node that leads now, by index, read off the admin ports `admin` (blocking I/O, on a
/// blocking thread).
pub(super) async fn current_leader(admin: &[String]) -> anyhow::Result<Option<usize>> {
    let admin = admin.to_vec();
    Ok(
        tokio::task::spawn_blocking(move || leader_of(&admin, "sluice_backend_raft_leader"))
            .await?,
    )
}

/// The manager that leads now, by index, read off the managers' admin ports `admin`.
pub(super) async fn leading_manager(admin: &[String]) -> anyhow::Result<Option<usize>> {
    let admin = admin.to_vec();
    Ok(tokio::task::spawn_blocking(move || leader_of(&admin, "sluice_manager_is_leader")).await?)
}
