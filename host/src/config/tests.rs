//! Config tests: defaults, overrides, pricing, golden error files, shipped examples.

use super::*;

fn env() -> BTreeMap<String, String> {
    BTreeMap::from([("UP_KEY".to_string(), "sk-up".to_string())])
}

fn check(text: &str) -> Result<Config, ConfigError> {
    parse(text, Path::new("test.toml"), &env())
}

#[test]
fn minimal_config_gets_defaults() -> Result<(), ConfigError> {
    let config = check(
        "[[channels]]\nid = \"a\"\nbase_url = \"http://127.0.0.1:9/v1\"\napi_key = \"env::UP_KEY\"\nmodels = [\"m\"]\n",
    )?;
    assert_eq!(config.store.backend, Backend::Redb);
    assert_eq!(config.channels[0].api_key.as_deref(), Some("sk-up"));
    assert_eq!(config.plugins.memory_limit, 32 << 20);
    assert!(!format!("{:?}", config.channels[0]).contains("sk-up"));
    Ok(())
}

#[test]
fn overrides_come_from_the_env_map() -> Result<(), ConfigError> {
    let mut env = env();
    env.insert("SLUICE_LISTEN".into(), "127.0.0.1:0".into());
    let config = parse("", Path::new("x.toml"), &env)?;
    assert_eq!(config.server.listen.port(), 0);
    Ok(())
}

#[test]
fn prices_become_exact_rates() -> Result<(), ConfigError> {
    let text = r#"
[metering]
enforce_cap = false
default_max_tokens = 256
max_counted_kib = 8

[pricing]
default = { input = 0.7, output = 2.0 }
models."gpt-4o" = { input = 2.5, output = 10.0, cached_input = 1.25, max_tokens = 1000 }
models."house-model" = { input = 1, output = 1, encoding = "cl100k_base" }
"#;
    let config = parse(text, Path::new("x.toml"), &env())?;
    let m = &config.metering;
    assert!(!m.enforce_cap);
    assert_eq!(m.max_counted_bytes, 8192);
    let default = m.model("llama-3");
    assert_eq!(default.rates.input, 700_000);
    assert_eq!(default.rates.cache_write, 700_000);
    assert_eq!(default.rates.audio_output, 2_000_000);
    assert_eq!(default.max_tokens, 256);
    assert_eq!(default.encoding, sluice_meter::Encoding::O200kBase);
    // 10 tokens at 0.7 is exactly 7 credits (a float product would round up to 8).
    let tokens = crate::metering::Tokens {
        prompt: 10,
        ..Default::default()
    };
    assert_eq!(crate::metering::bill(&default.rates, &tokens).credits(), 7);
    let gpt4o = m.model("gpt-4o");
    assert_eq!(gpt4o.rates.cached_input, 1_250_000);
    assert_eq!(gpt4o.rates.cache_write, 2_500_000);
    assert_eq!(gpt4o.max_tokens, 1000);
    assert_eq!(
        m.model("gpt-3.5-turbo").encoding,
        sluice_meter::Encoding::Cl100kBase
    );
    assert_eq!(
        m.model("house-model").encoding,
        sluice_meter::Encoding::Cl100kBase
    );
    Ok(())
}

/// Each `tests/config-errors/NAME.toml` must fail with exactly `NAME.err`.
/// A missing `.err` is written from the current output, and the test fails so it gets reviewed.
#[test]
fn config_errors_match_their_golden_files() -> Result<(), Box<dyn std::error::Error>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/config-errors");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = std::fs::read_to_string(&path)?;
        let got = match parse(&text, Path::new(&name), &env()) {
            Ok(_) => format!("{name}: unexpectedly valid"),
            Err(e) => e.to_string(),
        };
        let golden = path.with_extension("err");
        match std::fs::read_to_string(&golden) {
            Ok(want) => assert_eq!(got, want.trim_end(), "{name}"),
            Err(_) => {
                std::fs::write(&golden, format!("{got}\n"))?;
                return Err(format!("wrote {}; review and commit it", golden.display()).into());
            }
        }
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} golden files");
    Ok(())
}

#[test]
fn shipped_examples_are_valid() -> Result<(), ConfigError> {
    let env = BTreeMap::from([
        ("OPENAI_API_KEY".to_string(), "sk-x".to_string()),
        (
            "SLUICE_ADMIN_TOKEN".to_string(),
            "an-admin-token-of-24-byte".to_string(),
        ),
        ("MOCK_UPSTREAM_KEY".to_string(), "m".to_string()),
        ("AZURE_OPENAI_KEY".to_string(), "a".to_string()),
        ("ANTHROPIC_API_KEY".to_string(), "sk-ant-x".to_string()),
    ]);
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    for name in ["sluice.toml", "quickstart.toml"] {
        let path = examples.join(name);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let config = parse(&text, &path, &env)?;
        assert!(!config.channels.is_empty(), "{name}");
    }
    Ok(())
}
