//! The plugin authors' kit as an author meets it: `sluice plugin new` in a
//! folder outside the repository, in each language and for each kind, built
//! and tested by the commands its README gives; the gateway loading one
//! plugin of each language at once; and the tutorial of `docs/plugins.md`
//! followed command by command.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;
use sluice_tests::*;

/// Runs `script` with `sh -e` in `dir`, with `sluice` on the PATH and `env`
/// set; its output, or a panic naming the command that failed.
fn shell(dir: &Path, script: &str, env: &[(&str, &str)]) -> String {
    let bin = sluice_bin();
    let path = format!(
        "{}:{}",
        bin.parent()
            .map(Path::display)
            .map(|d| d.to_string())
            .unwrap_or_default(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("sh")
        .args(["-e", "-x", "-c", script])
        .current_dir(dir)
        .env("PATH", path)
        // Components compiled by `plugin check` are reused by `plugin test`
        // and by the test gateways.
        .env("SLUICE_PLUGIN_CACHE", shared_plugin_cache())
        .envs(env.iter().copied())
        .output()
        .expect("sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "in {}:\n{text}", dir.display());
    text
}

/// The commands of a generated project's README (its `sh` block), but the
/// last, which copies the plugin into a gateway's folder.
fn readme_commands(project: &Path) -> String {
    let readme = std::fs::read_to_string(project.join("README.md")).expect("README.md");
    let block = readme
        .split("```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a sh block");
    let lines: Vec<&str> = block.lines().filter(|l| !l.starts_with("cp ")).collect();
    lines.join("\n")
}

const KINDS: [(&str, &str); 3] = [("auth", "5"), ("router", "3"), ("editor", "2")];

#[tokio::test]
async fn plugin_new_projects_build_and_pass_their_cases_and_the_gateway_loads_each_language() {
    let dir = tempfile::tempdir().unwrap();
    // The Rust projects share one target folder (through a link, so the paths
    // their READMEs name stay valid), as an author's machine shares a cache.
    let shared_target = dir.path().join("rust-target");
    std::fs::create_dir_all(&shared_target).unwrap();
    let mut built = std::collections::BTreeMap::new();
    for lang in ["rust", "python", "js"] {
        for (kind, cases) in KINDS {
            let name = format!("my-{kind}-{lang}");
            shell(
                dir.path(),
                &format!("sluice plugin new {name} --kind {kind} --lang {lang}"),
                &[],
            );
            let project = dir.path().join(&name);
            if lang == "rust" {
                std::os::unix::fs::symlink(&shared_target, project.join("target")).unwrap();
            }
            let out = shell(&project, &readme_commands(&project), &[]);
            assert!(
                out.contains(&format!("{cases} of {cases} cases passed")),
                "{name}: {out}"
            );
            if lang == "rust" {
                assert!(
                    out.contains("test result: ok."),
                    "{name}: native tests\n{out}"
                );
            }
            let wasm = match lang {
                "rust" => project.join(format!(
                    "target/wasm32-wasip2/release/{}.wasm",
                    name.replace('-', "_")
                )),
                _ => project.join(format!("{name}.wasm")),
            };
            built.insert((lang, kind), (wasm, project.join(format!("{name}.toml"))));
        }
    }
    // One gateway, one plugin per language: a Python auth policy, a
    // JavaScript router and a Rust log editor.
    let upstream = keyed_mock(MockConfig::default()).await;
    let plugin = |lang, kind, config: &str| {
        let (wasm, _) = &built[&(lang, kind)];
        (wasm.display().to_string(), config.to_string())
    };
    let (auth, auth_config) = plugin(
        "python",
        "auth",
        "header = \"x-team\"\nteams = [\"blue\"]\nrpm_per_team = 100\n",
    );
    let router_config = std::fs::read_to_string(&built[&("js", "router")].1).unwrap();
    let (router, router_config) = plugin("js", "router", &router_config);
    let (editor, editor_config) = plugin("rust", "editor", "mask_labels = [\"team\"]\n");
    let gw = Gateway::builder()
        .channel(ChannelSpec::mock("acme-1", &upstream, &[MODEL]).tags(&["acme"]))
        .channel(ChannelSpec::mock("pool", &upstream, &[MODEL]).tags(&["shared"]))
        .policy_headers(&["x-team", "x-tenant"])
        .content_logging()
        .plugin("team-auth", &auth, Some(&auth_config))
        .plugin("tenant-router", &router, Some(&router_config))
        .plugin("content-guard", &editor, Some(&editor_config))
        .ready_within(std::time::Duration::from_secs(300))
        .start()
        .await;
    for (team, tenant, status, channel) in [
        ("blue", "acme", 200, "acme-1"),
        ("blue", "globex", 200, "pool"),
        ("red", "acme", 403, ""),
    ] {
        let (key, key_id) = gw.create_key(json!({"name": tenant})).await;
        let reply = gw
            .chat_with_headers(&key, &[("x-team", team), ("x-tenant", tenant)])
            .await;
        assert_eq!(reply.status, status, "{team}/{tenant}: {}", reply.text());
        let record = gw.only_usage_record(&key_id).await.expect("a usage record");
        if status == 200 {
            assert_eq!(record["channel_id"], channel, "{record}");
            // The Python policy labelled it; the Rust editor masked the label
            // and dropped the content the gateway logged.
            assert_eq!(record["labels"]["team"], "[masked]", "{record}");
            assert_eq!(record["prompt"], serde_json::Value::Null, "{record}");
        } else {
            assert_eq!(reply.error_code(), "team_not_allowed");
        }
    }
}

/// The tutorial's commands: every line starting with `$ ` in its section of
/// `docs/plugins.md`, in order.
fn tutorial() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let doc = std::fs::read_to_string(root.join("docs/plugins.md")).expect("docs/plugins.md");
    let section = doc
        .split("\n## Tutorial")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("a Tutorial section");
    section
        .lines()
        .filter_map(|l| l.strip_prefix("$ "))
        .map(String::from)
        .collect()
}

#[tokio::test]
async fn the_tutorial_goes_from_nothing_to_a_loaded_plugin() {
    let upstream = keyed_mock(MockConfig::default()).await;
    let gw = Gateway::builder()
        .channel(ChannelSpec::mock("main", &upstream, &[MODEL]).tags(&["acme"]))
        .policy_headers(&["x-tenant"])
        .start()
        .await;
    let home = tempfile::tempdir().unwrap();
    let commands = tutorial();
    assert!(commands.len() >= 6, "{commands:?}");
    let plugins: PathBuf = gw.plugin_dir();
    let config = gw.config_path().display().to_string();
    let out = shell(
        home.path(),
        &commands.join("\n"),
        &[
            ("SLUICE_PLUGINS", plugins.to_str().unwrap()),
            ("SLUICE_CONFIG", &config),
            ("SLUICE_ADMIN_TOKEN", ADMIN_TOKEN),
        ],
    );
    assert!(out.contains("cases passed"), "{out}");
    // The plugin the tutorial wrote now routes: the tenant's channel serves,
    // a tenant without one is refused by it.
    let (key, _) = gw.create_key(json!({"name": "tutorial"})).await;
    let reply = gw.chat_with_headers(&key, &[("x-tenant", "acme")]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let reply = gw.chat_with_headers(&key, &[("x-tenant", "initech")]).await;
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert_eq!(reply.error_code(), "tenant_has_no_channel");
}
