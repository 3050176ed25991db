//! Compiles guest components from the `plugins/` workspace for build scripts.
//!
//! Each plugin is built by its own `cargo build -p` so that the SDK's per-world
//! features never unify across plugins, into `plugins/target` (never the outer
//! build's target directory, so the nested cargo never waits on the outer lock).

// Cargo's build-script protocol is stdout: `cargo:` lines are the output.
#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The guest target triple.
pub const TARGET: &str = "wasm32-wasip2";

/// Environment that the outer cargo sets for build scripts and that must not leak
/// into the nested guest build (flags, wrappers, jobserver, target overrides).
const SCRUBBED_ENV: &[&str] = &[
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "RUSTFLAGS",
    "RUSTDOCFLAGS",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_MAKEFLAGS",
    "MAKEFLAGS",
    "MFLAGS",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_LLVM_COV",
    "LLVM_PROFILE_FILE",
];

/// The `plugins/` workspace, found from a crate's manifest directory one level down.
pub fn plugins_dir(manifest_dir: &Path) -> PathBuf {
    manifest_dir.join("..").join("plugins")
}

/// Builds each named package of the plugins workspace and copies its component to
/// `out_dir/<crate_name>.wasm`, returning `(package, path)` pairs.
///
/// # Errors
/// Returns a message naming the package when cargo cannot be run or fails.
pub fn build(
    manifest_dir: &Path,
    out_dir: &Path,
    packages: &[&str],
) -> Result<Vec<(String, PathBuf)>, String> {
    let plugins = plugins_dir(manifest_dir);
    let target_dir = plugins.join("target");
    for dir in ["sdk", "Cargo.toml", "Cargo.lock", "../wit"] {
        println!("cargo:rerun-if-changed={}", plugins.join(dir).display());
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut built = Vec::with_capacity(packages.len());
    for package in packages {
        let mut cmd = Command::new(&cargo);
        cmd.current_dir(&plugins)
            .args([
                "build",
                "--release",
                "--locked",
                "--target",
                TARGET,
                "-p",
                package,
                "--target-dir",
            ])
            .arg(&target_dir);
        for var in SCRUBBED_ENV {
            cmd.env_remove(var);
        }
        for (key, _) in std::env::vars() {
            if key.starts_with("CARGO_PROFILE_")
                || key.starts_with("CARGO_CFG_")
                || key.starts_with("CARGO_FEATURE_")
            {
                cmd.env_remove(key);
            }
        }
        let status = cmd
            .status()
            .map_err(|e| format!("cannot run {cargo} for plugin {package}: {e}"))?;
        if !status.success() {
            return Err(format!(
                "building plugin {package} failed ({status}); is the {TARGET} target installed? (rustup target add {TARGET})"
            ));
        }
        let file = format!("{}.wasm", package.replace('-', "_"));
        let artifact = target_dir.join(TARGET).join("release").join(&file);
        let dest = out_dir.join(&file);
        std::fs::copy(&artifact, &dest)
            .map_err(|e| format!("copying {}: {e}", artifact.display()))?;
        built.push(((*package).to_string(), dest));
    }
    Ok(built)
}

/// Re-runs the build script when any file of these plugin crates changes.
pub fn watch(manifest_dir: &Path, crate_dirs: &[&str]) {
    let plugins = plugins_dir(manifest_dir);
    for dir in crate_dirs {
        println!("cargo:rerun-if-changed={}", plugins.join(dir).display());
    }
}
