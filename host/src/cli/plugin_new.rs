//! `sluice plugin new NAME --kind auth|router|editor --lang rust|python|js`:
//! writes a plugin project that builds with one command anywhere. It carries
//! the WIT it targets and, for Rust, the SDK's source; everything else comes
//! from the registries (crates.io, PyPI, npm). The sources are the
//! repository's own templates and examples, embedded in the binary, so what
//! `plugin new` writes is what the test suite builds and runs.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// The WIT package the gateway speaks.
const WIT: &str = include_str!("../../../wit/policy.wit");

/// The SDK's manifest and sources (vendored into Rust projects).
const SDK_MANIFEST: &str = include_str!("../../../plugins/sdk/Cargo.toml");
const SDK_SOURCES: [(&str, &str); 5] = [
    ("lib.rs", include_str!("../../../plugins/sdk/src/lib.rs")),
    ("api.rs", include_str!("../../../plugins/sdk/src/api.rs")),
    ("glue.rs", include_str!("../../../plugins/sdk/src/glue.rs")),
    ("host.rs", include_str!("../../../plugins/sdk/src/host.rs")),
    (
        "testing.rs",
        include_str!("../../../plugins/sdk/src/testing.rs"),
    ),
];

/// The values the plugins workspace gives its members (`plugins/Cargo.toml`),
/// written into a standalone project's manifests instead (the version is
/// each manifest's own).
const WORKSPACE_VALUES: [(&str, &str); 7] = [
    ("rust-version.workspace = true", "rust-version = \"1.95\""),
    ("edition.workspace = true", "edition = \"2024\""),
    ("license.workspace = true", "license = \"Apache-2.0\""),
    (
        "wit-bindgen.workspace = true",
        "wit-bindgen = { version = \"0.61\", default-features = false, features = [\"macros\", \"realloc\", \"std\"] }",
    ),
    (
        "serde.workspace = true",
        "serde = { version = \"1\", features = [\"derive\"] }",
    ),
    ("serde_json.workspace = true", "serde_json = \"1\""),
    (
        "sluice-policy-sdk = { workspace = true,",
        "sluice-policy-sdk = { path = \"vendor/sluice-policy-sdk\",",
    ),
];

/// A standalone project's release profile (small, fast components).
const RELEASE_PROFILE: &str = "
[profile.release]
opt-level = 3
lto = true
codegen-units = 1
strip = true
panic = \"abort\"

# A project of its own, even inside another workspace.
[workspace]
";

/// The policy kinds a project can implement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum Kind {
    /// An auth policy (`authorizer-policy`).
    Auth,
    /// A router (`planner-policy`).
    Router,
    /// A log editor (`editor-policy`).
    Editor,
}

/// The languages a project can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum Lang {
    /// Rust, with the SDK's API and native tests.
    Rust,
    /// Python, built with componentize-py.
    Python,
    /// JavaScript, built with componentize-js.
    Js,
}

/// What a kind's template is made of.
struct Template {
    /// The template policy's name, replaced by the project's.
    name: &'static str,
    world: &'static str,
    config: &'static str,
    cases: &'static str,
    rust_manifest: &'static str,
    rust: &'static str,
    python: &'static str,
    js: &'static str,
}

fn template(kind: Kind) -> Template {
    macro_rules! template {
        ($dir:literal, $name:literal, $world:literal) => {
            Template {
                name: $name,
                world: $world,
                config: include_str!(concat!(
                    "../../../plugins/templates/",
                    $dir,
                    "/",
                    $name,
                    ".toml"
                )),
                cases: include_str!(concat!("../../../plugins/templates/", $dir, "/cases.toml")),
                rust_manifest: include_str!(concat!(
                    "../../../plugins/templates/",
                    $dir,
                    "/Cargo.toml"
                )),
                rust: include_str!(concat!("../../../plugins/templates/", $dir, "/src/lib.rs")),
                python: include_str!(concat!("../../../examples/plugins/python/", $dir, ".py")),
                js: include_str!(concat!("../../../examples/plugins/js/", $dir, ".js")),
            }
        };
    }
    match kind {
        Kind::Auth => template!("auth", "team-header", "authorizer-policy"),
        Kind::Router => template!("router", "tenant-router", "planner-policy"),
        Kind::Editor => template!("editor", "content-guard", "editor-policy"),
    }
}

/// The JavaScript examples' manifest (whose devDependencies a project gets)
/// and lockfile (the exact componentize-js tree).
const JS_MANIFEST: &str = include_str!("../../../examples/plugins/js/package.json");
const JS_LOCK: &str = include_str!("../../../examples/plugins/js/package-lock.json");

/// The command that builds a project, and the component it writes.
pub(super) fn build_command(name: &str, kind: Kind, lang: Lang) -> (String, String) {
    let world = template(kind).world;
    match lang {
        Lang::Rust => (
            "cargo build --release --target wasm32-wasip2".into(),
            format!(
                "target/wasm32-wasip2/release/{}.wasm",
                name.replace('-', "_")
            ),
        ),
        Lang::Python => (
            format!("componentize-py -d wit -w {world} componentize app -o {name}.wasm"),
            format!("{name}.wasm"),
        ),
        Lang::Js => (
            "npm install && npm run build".into(),
            format!("{name}.wasm"),
        ),
    }
}

/// Writes the project `name` into `parent/name`; the directory it wrote.
///
/// # Errors
/// A name that is not a lower-case word (dashes allowed), a directory that
/// exists and is not empty, or a write failure.
pub(super) fn create(parent: &Path, name: &str, kind: Kind, lang: Lang) -> anyhow::Result<PathBuf> {
    let valid = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    anyhow::ensure!(
        valid,
        "the plugin name {name:?} must be a lower-case word of letters, digits and dashes (at most 64)"
    );
    let root = parent.join(name);
    if root.exists() && std::fs::read_dir(&root)?.next().is_some() {
        anyhow::bail!("{} exists and is not empty", root.display());
    }
    let files = files(name, kind, lang)?;
    for (path, text) in &files {
        let path = root.join(path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(root)
}

/// The project's files, by path relative to its root.
fn files(name: &str, kind: Kind, lang: Lang) -> anyhow::Result<Vec<(String, String)>> {
    let t = template(kind);
    let own = |text: &str| text.replace(t.name, name);
    let mut files = vec![
        ("wit/policy.wit".to_string(), WIT.to_string()),
        (format!("{name}.toml"), own(t.config)),
        ("cases.toml".to_string(), own(t.cases)),
        ("README.md".to_string(), readme(name, kind, lang)),
    ];
    match lang {
        Lang::Rust => {
            let manifest = standalone(&own(t.rust_manifest), "0.1.0")?;
            files.push(("Cargo.toml".into(), format!("{manifest}{RELEASE_PROFILE}")));
            files.push(("src/lib.rs".into(), own(t.rust)));
            files.push((".gitignore".into(), "target/\n".into()));
            files.push((
                "vendor/sluice-policy-sdk/Cargo.toml".into(),
                standalone(SDK_MANIFEST, crate::plugins::engine::WIT_VERSION)?,
            ));
            for (file, text) in SDK_SOURCES {
                files.push((format!("vendor/sluice-policy-sdk/src/{file}"), text.into()));
            }
        }
        Lang::Python => {
            files.push(("app.py".into(), own(t.python)));
            files.push((".gitignore".into(), "*.wasm\n__pycache__/\n".into()));
        }
        Lang::Js => {
            files.push(("policy.js".into(), own(t.js)));
            files.push(("package.json".into(), package_json(name, t.world)?));
            files.push((
                "package-lock.json".into(),
                JS_LOCK.replace("\"sluice-js-plugins\"", &format!("{name:?}")),
            ));
            files.push((".gitignore".into(), "node_modules/\n*.wasm\n".into()));
        }
    }
    Ok(files)
}

/// A member's manifest with the workspace's values written in (and its
/// leading comment, which describes the template, left out).
fn standalone(manifest: &str, version: &str) -> anyhow::Result<String> {
    let body: String = manifest
        .lines()
        .skip_while(|line| line.starts_with('#'))
        .map(|line| format!("{line}\n"))
        .collect();
    let text = WORKSPACE_VALUES
        .iter()
        .fold(body, |text, (inherited, value)| {
            text.replace(inherited, value)
        })
        .replace(
            "version.workspace = true",
            &format!("version = {version:?}"),
        );
    anyhow::ensure!(
        !text.contains("workspace = true") && !text.contains(".workspace"),
        "a template manifest inherits a value `plugin new` cannot write:\n{text}"
    );
    Ok(text)
}

/// The JavaScript project's manifest: the examples' devDependencies (as
/// their lockfile pins them) and a build script for its one policy.
fn package_json(name: &str, world: &str) -> anyhow::Result<String> {
    let examples: serde_json::Value = serde_json::from_str(JS_MANIFEST)?;
    let manifest = serde_json::json!({
        "name": name,
        "version": "0.1.0",
        "private": true,
        "type": "module",
        "scripts": {
            "build": format!("componentize-js --wit wit --world-name {world} --disable http fetch-event --out {name}.wasm policy.js"),
        },
        "devDependencies": examples["devDependencies"],
    });
    Ok(format!("{}\n", serde_json::to_string_pretty(&manifest)?))
}

/// The project's README: what it is and the commands that build, test and
/// install it.
fn readme(name: &str, kind: Kind, lang: Lang) -> String {
    let t = template(kind);
    let (build, wasm) = build_command(name, kind, lang);
    let (source, tests, tools) = match lang {
        Lang::Rust => (
            "src/lib.rs",
            "cargo test                      # the policy's native tests (the SDK's `testing` feature)\n",
            "Rust with the `wasm32-wasip2` target (`rustup target add wasm32-wasip2`)",
        ),
        Lang::Python => (
            "app.py",
            "",
            "Python 3.11+ with `pip install componentize-py==0.25.1`",
        ),
        Lang::Js => (
            "policy.js",
            "",
            "Node.js 20+ and npm (componentize-js is installed by `npm install`)",
        ),
    };
    format!(
        "# {name}\n\nA Sluice policy plugin (world `{world}` of `sluice:policy@{version}`), made by\n`sluice plugin new`. The policy is in `{source}`, its configuration in `{name}.toml`,\nits cases in `cases.toml`; `wit/policy.wit` is the interface it is built against.\n\nNeeds {tools}.\n\n```sh\n{tests}{build}\nsluice plugin check {wasm} --config {name}.toml\nsluice plugin test {wasm} --config {name}.toml --cases cases.toml\ncp {wasm} {name}.toml /etc/sluice/plugins/   # the gateway's [plugins] dir\n```\n",
        world = t.world,
        version = crate::plugins::engine::WIT_VERSION,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_project_is_standalone_and_named_after_itself() -> anyhow::Result<()> {
        for kind in [Kind::Auth, Kind::Router, Kind::Editor] {
            for lang in [Lang::Rust, Lang::Python, Lang::Js] {
                let files = files("my-policy", kind, lang)?;
                let text: String = files.iter().map(|(_, t)| t.as_str()).collect();
                assert!(!text.contains(template(kind).name), "{kind:?} {lang:?}");
                assert!(files.iter().any(|(p, _)| p == "my-policy.toml"));
                if lang == Lang::Rust {
                    let manifest = &files
                        .iter()
                        .find(|(p, _)| p == "Cargo.toml")
                        .map(|(_, t)| t);
                    assert!(manifest.is_some_and(|m| m.contains("name = \"my-policy\"")));
                }
            }
        }
        Ok(())
    }

    #[test]
    fn names_must_be_lower_case_words() {
        let dir = std::env::temp_dir();
        for bad in ["", "My", "a b", "../x", "9lives"] {
            assert!(
                create(&dir, bad, Kind::Auth, Lang::Rust).is_err(),
                "{bad:?}"
            );
        }
    }
}
