//! `sluice-backend`: one node of a backend cluster. Built without fail points: a `FAILPOINTS`
//! variable does nothing here (`sluice-backend-failpoints` is the build that obeys it).

use std::process::ExitCode;

// The same allocator as `sluice standalone`: glibc's arenas cost a tenth of the CPU under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    sluice_backend::cli::main()
}
