//! Builds the default policy components from `plugins/` and embeds them.
// Cargo's build-script protocol is stdout: `cargo:` lines are the output.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default());
    sluice_build_support::watch(&manifest, &["key-auth", "router", "redactor"]);
    if let Err(message) = sluice_build_support::build(
        &manifest,
        &out,
        &["sluice-key-auth", "sluice-router", "sluice-redactor"],
    ) {
        println!("cargo:warning={message}");
        std::process::exit(1);
    }
}
