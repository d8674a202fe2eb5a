//! `sluice-backend` with fail points, for tests only: it obeys `FAILPOINTS` (`name=action;...`),
//! so a test can crash a node between two steps. Built only with the `failpoints` feature
//! (`cargo build -p sluice-backend --features failpoints --bin sluice-backend-failpoints`), so
//! no plain build of the workspace ships it.
//!
//! Signals turn fail points on while it runs: SIGUSR1 cuts the node's Raft traffic both ways
//! (`backend::raft_cut`), a partition from its peers that its clients still reach; SIGUSR2
//! joins it again.

use std::process::ExitCode;

use nix::sys::signal::{SigSet, Signal};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let _fail_points = fail::FailScenario::setup();
    // Blocked here, before any other thread starts, so that every thread inherits the mask and
    // only the waiter below takes them.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGUSR1);
    signals.add(Signal::SIGUSR2);
    signals.thread_block().expect("signals can be blocked");
    std::thread::spawn(move || loop {
        match signals.wait() {
            Ok(Signal::SIGUSR1) => {
                fail::cfg("backend::raft_cut", "return").expect("a valid action");
                eprintln!("fail point backend::raft_cut on: Raft traffic cut");
            }
            Ok(Signal::SIGUSR2) => {
                fail::remove("backend::raft_cut");
                eprintln!("fail point backend::raft_cut off: Raft traffic flows");
            }
            _ => {}
        }
    });
    sluice_backend::cli::main()
}
