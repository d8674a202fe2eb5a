//! A few seconds of `sluice-bench run` against a real standalone process: the bench must move
//! messages end to end and report what it measured.

use std::process::Command;

use sluice_tests::StandaloneProcess;

/// Runs `sluice-bench SUBCOMMAND --endpoint SERVER ARGS --json` and returns its report.
fn bench(server: &StandaloneProcess, subcommand: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice-bench"))
        .args([subcommand, "--endpoint", &server.endpoint(), "--json"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    println!("{report}");
    report
}

#[test]
fn bench_runs_against_standalone() {
    let dir = tempfile::tempdir().unwrap();
    let server = StandaloneProcess::start(dir.path()).unwrap();
    let report = bench(
        &server,
        "run",
        &[
            "--producers",
            "2",
            "--consumers",
            "2",
            "--batch",
            "10",
            "--size",
            "1024",
            "--duration",
            "2",
        ],
    );
    assert!(report["sent"].as_u64().unwrap() > 0, "{report}");
    assert!(report["received"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["send_errors"], 0, "{report}");
    assert!(report["send_latency_ms"]["p99"].as_f64().unwrap() > 0.0);
}

#[test]
fn drain_compares_a_small_and_a_large_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let server = StandaloneProcess::start(dir.path()).unwrap();
    let report = bench(&server, "drain", &["--measure", "200", "--backlog", "1000"]);
    for field in [
        "fill_per_second",
        "drain_small_backlog_per_second",
        "drain_large_backlog_per_second",
    ] {
        assert!(report[field].as_f64().unwrap() > 0.0, "{report}");
    }
    // The bench leaves the queue empty.
    let listed = server.cli(&["--json", "queue", "get", "bench-drain"]);
    let queue: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(queue["counts"]["visible"], 0, "{queue}");
}
