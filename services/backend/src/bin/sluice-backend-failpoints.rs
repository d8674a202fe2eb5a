//! `sluice-backend` with fail points, for tests only: it obeys `FAILPOINTS` (`name=action;...`),
//! so a test can crash a node between two steps. Built only with the `failpoints` feature
//! (`cargo build -p sluice-backend --features failpoints --bin sluice-backend-failpoints`), so
//! no plain build of the workspace ships it.

use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let _fail_points = fail::FailScenario::setup();
    sluice_backend::cli::main()
}
