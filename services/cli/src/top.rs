//! `sluice top`: a live terminal view of a deployment for operators and developers without
//! Grafana: services up, each backend cluster's leader, term, lag and commit latency, message
//! rates and the biggest backlogs. It reads every process's `/metrics` directly, finding them in
//! a file-based service discovery file (what `sluice dev cluster up` writes, and what Prometheus
//! reads), and works out rates between two readings.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyModifiers};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph};
use sluice_monitoring::scrape::{self, Sample};

#[derive(clap::Args)]
pub struct TopArgs {
    /// The targets: a Prometheus file_sd JSON file of admin addresses labelled with `service`,
    /// `node` and, on backend nodes, `cluster`.
    #[arg(long, default_value = "./sluice-dev-cluster/prometheus/targets.json")]
    targets: PathBuf,
    /// Time between readings; rates are over it.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Print one view (two readings `--interval` apart) as text and exit, instead of the live
    /// view: for scripts, tests and terminals without a screen.
    #[arg(long)]
    once: bool,
}

/// One process to read.
#[derive(Debug, Clone)]
struct Target {
    addr: String,
    service: String,
    node: String,
    cluster: Option<String>,
}

/// One reading of every target: its samples, or `None` if it did not answer.
struct Reading {
    at: Instant,
    pages: Vec<Option<Vec<Sample>>>,
}

fn load_targets(path: &PathBuf) -> anyhow::Result<Vec<Target>> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read the targets file {} (sluice dev cluster up writes one in its directory)",
            path.display()
        )
    })?;
    let groups: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let mut targets = Vec::new();
    for group in groups
        .as_array()
        .context("the targets file holds no list")?
    {
        let label = |name: &str| group["labels"][name].as_str().map(str::to_owned);
        for addr in group["targets"].as_array().into_iter().flatten() {
            let addr = addr
                .as_str()
                .context("a target is not a string")?
                .to_owned();
            targets.push(Target {
                service: label("service").unwrap_or_else(|| "unknown".into()),
                node: label("node").unwrap_or_else(|| addr.clone()),
                cluster: label("cluster"),
                addr,
            });
        }
    }
    if targets.is_empty() {
        bail!("{} lists no targets", path.display());
    }
    Ok(targets)
}

/// GETs `/metrics` from `addr` over plain HTTP, as Prometheus does.
fn fetch(addr: &str) -> anyhow::Result<String> {
    let socket: SocketAddr = addr
        .to_socket_addrs()?
        .next()
        .with_context(|| format!("{addr} resolves to nothing"))?;
    let mut stream = TcpStream::connect_timeout(&socket, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!(
            "{addr} answered {}",
            head.lines().next().unwrap_or_default()
        );
    }
    Ok(body.to_owned())
}

fn read(targets: &[Target]) -> Reading {
    let pages = std::thread::scope(|scope| {
        let handles: Vec<_> = targets
            .iter()
            .map(|t| scope.spawn(|| fetch(&t.addr).ok().map(|page| scrape::parse(&page))))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().ok().flatten())
            .collect()
    });
    Reading {
        at: Instant::now(),
        pages,
    }
}

/// The sum of `name` samples matching `filter` on one page.
fn sum(page: &[Sample], name: &str, filter: impl Fn(&Sample) -> bool) -> f64 {
    page.iter()
        .filter(|s| s.name == name && filter(s))
        .map(|s| s.value)
        .sum()
}

fn value(page: &[Sample], name: &str) -> Option<f64> {
    page.iter().find(|s| s.name == name).map(|s| s.value)
}

/// The upper bound of the bucket holding quantile `q` of what histogram `name` (with samples
/// matching `filter`) observed between two pages; `None` if it observed nothing.
fn quantile_between(
    before: &[Sample],
    after: &[Sample],
    name: &str,
    q: f64,
    filter: impl Fn(&Sample) -> bool,
) -> Option<f64> {
    let bucket = format!("{name}_bucket");
    let buckets = |page: &[Sample]| -> BTreeMap<String, f64> {
        let mut by_le = BTreeMap::new();
        for s in page.iter().filter(|s| s.name == bucket && filter(s)) {
            *by_le
                .entry(s.label("le").unwrap_or("+Inf").to_owned())
                .or_insert(0.0) += s.value;
        }
        by_le
    };
    let (old, new) = (buckets(before), buckets(after));
    let mut deltas: Vec<(f64, f64)> = new
        .iter()
        .map(|(le, count)| {
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::INFINITY)
            };
            (bound, count - old.get(le).copied().unwrap_or(0.0))
        })
        .collect();
    deltas.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = deltas.last()?.1;
    if total <= 0.0 {
        return None;
    }
    deltas
        .iter()
        .find(|(_, cumulative)| *cumulative >= q * total)
        .map(|(bound, _)| *bound)
}

fn ms(seconds: Option<f64>) -> String {
    match seconds {
        Some(s) if s.is_finite() => format!("≤{:.1} ms", s * 1000.0),
        Some(_) => "> 20 s".into(),
        None => "-".into(),
    }
}

/// The view: sections of lines, each line of cells.
struct View {
    sections: Vec<(String, Vec<String>)>,
}

fn view(targets: &[Target], before: &Reading, after: &Reading) -> View {
    let seconds = after.at.duration_since(before.at).as_secs_f64().max(1e-3);
    let pair = |i: usize| match (&before.pages[i], &after.pages[i]) {
        (Some(b), Some(a)) => Some((b.as_slice(), a.as_slice())),
        _ => None,
    };
    let mut sections = Vec::new();

    // Services: how many of each answer.
    let mut services: BTreeMap<&str, (usize, usize, Vec<&str>)> = BTreeMap::new();
    for (i, target) in targets.iter().enumerate() {
        let entry = services.entry(&target.service).or_default();
        entry.1 += 1;
        if after.pages[i].is_some() {
            entry.0 += 1;
        } else {
            entry.2.push(&target.node);
        }
    }
    let line = services
        .iter()
        .map(|(service, (up, all, down))| {
            if down.is_empty() {
                format!("{service} {up}/{all}")
            } else {
                format!("{service} {up}/{all} (down: {})", down.join(", "))
            }
        })
        .collect::<Vec<_>>()
        .join("   ");
    sections.push(("Services up".to_owned(), vec![line]));

    // Traffic, from the frontends (or a standalone).
    let mut rates = BTreeMap::<&str, f64>::new();
    let (mut requests, mut failed) = (0.0, 0.0);
    for (i, target) in targets.iter().enumerate() {
        if !matches!(target.service.as_str(), "frontend" | "standalone") {
            continue;
        }
        let Some((b, a)) = pair(i) else { continue };
        for (label, metric) in [
            ("sent", "sluice_messages_sent_total"),
            ("received", "sluice_messages_received_total"),
            ("deleted", "sluice_messages_deleted_total"),
        ] {
            *rates.entry(label).or_default() +=
                (sum(a, metric, |_| true) - sum(b, metric, |_| true)).max(0.0) / seconds;
        }
        let all = |p: &[Sample]| sum(p, "sluice_rpc_requests_total", |_| true);
        let bad = |p: &[Sample]| {
            sum(p, "sluice_rpc_requests_total", |s| {
                s.label("code") != Some("OK")
            })
        };
        requests += (all(a) - all(b)).max(0.0);
        failed += (bad(a) - bad(b)).max(0.0);
    }
    let errors = if requests > 0.0 {
        failed / requests * 100.0
    } else {
        0.0
    };
    sections.push((
        "Messages per second".to_owned(),
        vec![format!(
            "sent {:.0}   received {:.0}   deleted {:.0}   requests {:.0}/s, {errors:.1}% failed",
            rates.get("sent").copied().unwrap_or(0.0),
            rates.get("received").copied().unwrap_or(0.0),
            rates.get("deleted").copied().unwrap_or(0.0),
            requests / seconds,
        )],
    ));

    // Backend clusters: leader, term, lag, commit and fsync latency, nodes.
    let clusters: BTreeSet<&str> = targets
        .iter()
        .filter_map(|t| t.cluster.as_deref())
        .collect();
    let mut lines = vec![format!(
        "{:<8} {:<8} {:>5} {:>12} {:>10} {:>12} {:>12} {:>11}  nodes (applied index)",
        "cluster", "leader", "term", "lag entries", "lag", "commit p99", "fsync p99", "commits/s"
    )];
    for cluster in clusters {
        let members: Vec<usize> = (0..targets.len())
            .filter(|&i| targets[i].cluster.as_deref() == Some(cluster))
            .collect();
        let leader = members.iter().copied().find(|&i| {
            after.pages[i]
                .as_deref()
                .and_then(|p| value(p, "sluice_backend_raft_leader"))
                == Some(1.0)
        });
        let term = members
            .iter()
            .filter_map(|&i| {
                after.pages[i]
                    .as_deref()
                    .and_then(|p| value(p, "sluice_backend_raft_term"))
            })
            .fold(0.0, f64::max);
        let nodes = members
            .iter()
            .map(|&i| match after.pages[i].as_deref() {
                Some(p) => format!(
                    "{} {:.0}",
                    targets[i].node,
                    value(p, "sluice_backend_raft_applied_index").unwrap_or(0.0)
                ),
                None => format!("{} DOWN", targets[i].node),
            })
            .collect::<Vec<_>>()
            .join(", ");
        let row = match leader.and_then(|i| pair(i).map(|p| (i, p))) {
            Some((i, (b, a))) => format!(
                "{:<8} {:<8} {:>5.0} {:>12.0} {:>9.2}s {:>12} {:>12} {:>11.0}",
                cluster,
                targets[i].node,
                term,
                value(a, "sluice_backend_replication_lag_entries").unwrap_or(0.0),
                value(a, "sluice_backend_replication_lag_seconds").unwrap_or(0.0),
                ms(quantile_between(
                    b,
                    a,
                    "sluice_storage_commit_duration_seconds",
                    0.99,
                    |_| true
                )),
                ms(quantile_between(
                    b,
                    a,
                    "sluice_storage_fsync_duration_seconds",
                    0.99,
                    |s| { s.label("db") == Some("raft") }
                )),
                (value(a, "sluice_backend_raft_proposals_total").unwrap_or(0.0)
                    - value(b, "sluice_backend_raft_proposals_total").unwrap_or(0.0))
                .max(0.0)
                    / seconds,
            ),
            None => format!("{cluster:<8} {:<8} {term:>5.0}", "NONE"),
        };
        lines.push(format!("{row}  {nodes}"));
    }
    sections.push(("Backend clusters".to_owned(), lines));

    // Backlog: totals and the biggest queues, from the leaders' engines (a standalone's too).
    let mut by_queue: BTreeMap<String, ([f64; 3], f64)> = BTreeMap::new();
    for page in after.pages.iter().flatten() {
        for s in page.iter().filter(|s| s.name == "sluice_queue_messages") {
            let slot = match s.label("state") {
                Some("visible") => 0,
                Some("in_flight") => 1,
                Some("delayed") => 2,
                _ => continue,
            };
            by_queue
                .entry(s.label("queue").unwrap_or_default().to_owned())
                .or_default()
                .0[slot] += s.value;
        }
        for s in page
            .iter()
            .filter(|s| s.name == "sluice_queue_oldest_message_age_seconds")
        {
            let entry = by_queue
                .entry(s.label("queue").unwrap_or_default().to_owned())
                .or_default();
            entry.1 = entry.1.max(s.value);
        }
    }
    let totals = by_queue.values().fold([0.0; 3], |acc, (c, _)| {
        [acc[0] + c[0], acc[1] + c[1], acc[2] + c[2]]
    });
    let mut queues: Vec<_> = by_queue.into_iter().collect();
    queues.sort_by(|a, b| {
        let size = |q: &([f64; 3], f64)| q.0.iter().sum::<f64>();
        size(&b.1).total_cmp(&size(&a.1)).then(a.0.cmp(&b.0))
    });
    let mut lines = vec![
        format!(
            "all queues: {:.0} visible, {:.0} in flight, {:.0} delayed",
            totals[0], totals[1], totals[2]
        ),
        format!(
            "{:<24} {:>10} {:>10} {:>10} {:>12}",
            "queue", "visible", "in flight", "delayed", "oldest"
        ),
    ];
    for (queue, (counts, oldest)) in queues.iter().take(10) {
        lines.push(format!(
            "{queue:<24} {:>10.0} {:>10.0} {:>10.0} {:>11.0}s",
            counts[0], counts[1], counts[2], oldest
        ));
    }
    sections.push(("Backlog (top 10)".to_owned(), lines));
    View { sections }
}

impl View {
    fn text(&self) -> String {
        let mut out = String::new();
        for (title, lines) in &self.sections {
            out.push_str(&format!("== {title}\n"));
            for line in lines {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

pub fn run(args: TopArgs) -> anyhow::Result<()> {
    let targets = load_targets(&args.targets)?;
    let mut before = read(&targets);
    if args.once {
        std::thread::sleep(args.interval);
        let after = read(&targets);
        print!("{}", view(&targets, &before, &after).text());
        return Ok(());
    }
    let mut terminal = ratatui::init();
    let result = (|| -> anyhow::Result<()> {
        let mut shown = None;
        loop {
            if let Some(view) = &shown {
                terminal.draw(|frame| draw(frame, view, &args))?;
            }
            // Keys are read while waiting for the next reading.
            let deadline = Instant::now() + args.interval;
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                if event::poll(left)? {
                    if let Event::Key(key) = event::read()? {
                        let ctrl_c = key.code == KeyCode::Char('c')
                            && key.modifiers.contains(KeyModifiers::CONTROL);
                        if ctrl_c || matches!(key.code, KeyCode::Char('q') | KeyCode::Esc) {
                            return Ok(());
                        }
                    }
                }
            }
            let after = read(&targets);
            shown = Some(view(&targets, &before, &after));
            before = after;
        }
    })();
    ratatui::restore();
    result
}

fn draw(frame: &mut ratatui::Frame, view: &View, args: &TopArgs) {
    let mut lines = Vec::new();
    for (title, section) in &view.sections {
        lines.push(Line::from(Span::styled(
            title.clone(),
            Style::default().add_modifier(Modifier::BOLD),
        )));
        lines.extend(section.iter().map(|l| Line::from(l.clone())));
        lines.push(Line::from(""));
    }
    let title = format!(
        " sluice top: {} every {:?}; q quits ",
        args.targets.display(),
        args.interval
    );
    frame.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(title)),
        frame.area(),
    );
}
