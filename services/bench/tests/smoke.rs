//! A few seconds of `sluice-bench run` against a real standalone process: the bench must move
//! messages end to end and report what it measured.

use std::process::Command;

use sluice_tests::StandaloneProcess;

#[test]
fn bench_runs_against_standalone() {
    let dir = tempfile::tempdir().unwrap();
    let server = StandaloneProcess::start(dir.path()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice-bench"))
        .args(["run", "--endpoint", &server.endpoint()])
        .args(["--producers", "2", "--consumers", "2", "--batch", "10"])
        .args(["--size", "1024", "--duration", "2", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    println!("{report}");
    assert!(report["sent"].as_u64().unwrap() > 0, "{report}");
    assert!(report["received"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["send_errors"], 0, "{report}");
    assert!(report["send_latency_ms"]["p99"].as_f64().unwrap() > 0.0);
}
