//! The `sluice` binary: parse the command line, run it, map failure to exit 1.

use clap::Parser;

/// mimalloc: the gateway allocates many short-lived buffers per request on
/// several threads; against glibc's allocator it measured 3–22 % less CPU per
/// request in three interleaved closed-loop pairs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = sluice::cli::Cli::parse();
    let outcome = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_keep_alive(sluice::server::workers::BLOCKING_KEEP_ALIVE)
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(sluice::cli::run(cli)));
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
