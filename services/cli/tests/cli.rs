//! The `sluice` binary's own behaviour without a server: help, bad configuration, and a clear
//! error when nothing listens at the endpoint.

use std::process::Command;

fn sluice(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .env_remove("SLUICE_ENDPOINT")
        .output()
        .expect("sluice runs")
}

#[test]
fn help_lists_the_commands() {
    let out = sluice(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for command in ["standalone", "queue", "send", "receive", "delete"] {
        assert!(help.contains(command), "help lacks {command}: {help}");
    }
}

#[test]
fn missing_config_file_is_named() {
    let out = sluice(&["standalone", "--config", "/nonexistent/sluice.toml"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/sluice.toml"), "{stderr}");
}

#[test]
fn unreachable_endpoint_says_so() {
    // Bind and drop a listener to get a port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let out = sluice(&["--endpoint", &endpoint, "queue", "list"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot reach Sluice at"), "{stderr}");
}
