//! The binary's command line. Besides checking `--help`, this test makes
//! `cargo test` build the `sluice` binary that the end-to-end suite runs.
#![allow(clippy::unwrap_used, missing_docs)]

use std::process::Command;

#[test]
fn every_command_has_help() {
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["keys", "create", "--help"],
        &["usage", "--help"],
        &["plugin", "check", "--help"],
        &["config", "check", "--help"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage:"),
            "{args:?}"
        );
    }
}

#[test]
fn unknown_commands_fail() {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("frobnicate")
        .output()
        .unwrap();
    assert!(!out.status.success());
}
