//! The RabbitMQ and NATS drivers against real brokers. They need servers that CI does not run,
//! so they are ignored by default; `deploy/bench/check-drivers.sh` starts the brokers on
//! loopback and runs them:
//!
//! ```sh
//! SLUICE_BENCH_RABBITMQ=amqp://guest:guest@127.0.0.1:25672/%2f \
//! SLUICE_BENCH_NATS=nats://127.0.0.1:24222 \
//!     cargo test -p sluice-bench --test peers -- --ignored
//! ```

use std::path::Path;
use std::process::Command;

/// Runs (a) for a few seconds and then (c) with a small backlog through `driver_args`,
/// asserting that messages moved without errors and that the drain took every message.
fn round_trip(driver_args: &[&str]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads");
    let runs = [
        vec!["--warmup", "1s", "--duration", "2s"],
        vec!["--backlog", "2000", "--name", "c-small"],
    ];
    for (file, args) in ["a-max-throughput.toml", "c-backlog-drain.toml"]
        .iter()
        .zip(runs)
    {
        let out = Command::new(env!("CARGO_BIN_EXE_sluice-bench"))
            .args(["run", "--json", "-w", &dir.join(file).display().to_string()])
            .args(driver_args)
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
        assert!(report["consumed"].as_u64().unwrap() > 0, "{report}");
        assert_eq!(report["publish_errors"], 0, "{report}");
        assert_eq!(report["consume_errors"], 0, "{report}");
        if report["fill"].is_object() {
            assert_eq!(report["backlog"], 0, "the drain left messages: {report}");
        }
    }
}

fn url(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| panic!("set {var} to the broker's address"))
}

#[test]
#[ignore = "needs a RabbitMQ broker: SLUICE_BENCH_RABBITMQ"]
fn rabbitmq_quorum_and_classic_queues() {
    let url = url("SLUICE_BENCH_RABBITMQ");
    for queue_type in ["quorum", "classic"] {
        round_trip(&[
            "--driver",
            "rabbitmq",
            "--url",
            &url,
            "--queue-type",
            queue_type,
        ]);
    }
}

#[test]
#[ignore = "needs a NATS server with JetStream: SLUICE_BENCH_NATS"]
fn nats_jetstream_stream() {
    round_trip(&["--driver", "nats", "--url", &url("SLUICE_BENCH_NATS")]);
}
