//! Builds the test-fixture components (hostile and helper plugins) from `plugins/testing`,
//! plus the plugin template, and exposes their paths to the end-to-end suite as constants
//! (`fixtures::TRAP`, `fixtures::TEAM_HEADER`, ...).
// Cargo's build-script protocol is stdout: `cargo:` lines are the output.
#![allow(clippy::print_stdout)]

use std::fmt::Write as _;
use std::path::PathBuf;

const FIXTURES: &[&str] = &[
    "trap",
    "spin",
    "membomb",
    "init-fails",
    "deny-all",
    "tagger",
    "bad-router",
    "bad-shaper",
    "bad-editor",
    "wrong-world",
    "v2",
    "stamp",
    "tag-router",
];

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default());
    let mut dirs: Vec<String> = FIXTURES.iter().map(|f| format!("testing/{f}")).collect();
    dirs.push("templates/auth".into());
    let dirs: Vec<&str> = dirs.iter().map(String::as_str).collect();
    sluice_build_support::watch(&manifest, &dirs);
    let mut packages: Vec<String> = FIXTURES.iter().map(|f| format!("fixture-{f}")).collect();
    // The plugin template is built and tested like a fixture.
    packages.push("team-header".into());
    let packages: Vec<&str> = packages.iter().map(String::as_str).collect();
    let built = match sluice_build_support::build(&manifest, &out, &packages) {
        Ok(built) => built,
        Err(message) => {
            println!("cargo:warning={message}");
            std::process::exit(1);
        }
    };
    let mut consts = String::new();
    for (package, path) in built {
        let name = package
            .trim_start_matches("fixture-")
            .replace('-', "_")
            .to_uppercase();
        let _ = writeln!(
            consts,
            "/// Path of the `{package}` test component.\npub const {name}: &str = {:?};",
            path.display().to_string()
        );
    }
    if let Err(e) = std::fs::write(out.join("fixtures.rs"), consts) {
        println!("cargo:warning=writing fixtures.rs: {e}");
        std::process::exit(1);
    }
}
