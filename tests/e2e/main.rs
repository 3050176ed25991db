//! The end-to-end suite: one test binary (every extra binary relinks wasmtime).
//! Every test starts the real `sluice` binary on port 0 against the fake upstream.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods,
    missing_docs
)]

mod authors;
mod billing;
mod operators;
mod plugins;
mod providers;
mod relay;
mod storage;
mod tls;
mod versions;
