//! Sluice's default log shaper: removes prompt and completion text unless
//! configured to keep it, and masks anything that looks like a credential in
//! labels and error kinds.
//!
//! Config (all optional): `{"keep_content": false, "mask_prefixes": ["sk-", "Bearer "]}`.

use std::cell::RefCell;

use sluice_policy_sdk::shaper::exports::sluice::policy::lifecycle::Guest as Lifecycle;
use sluice_policy_sdk::shaper::exports::sluice::policy::shaper::Guest as Shaper;
use sluice_policy_sdk::shaper::sluice::policy::types::UsageRecord;

/// What replaces a masked secret.
const MASK: &str = "[REDACTED]";

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    keep_content: bool,
    #[serde(default = "default_prefixes")]
    mask_prefixes: Vec<String>,
}

fn default_prefixes() -> Vec<String> {
    ["sk-", "Bearer ", "bearer ", "api_key=", "api-key: "]
        .iter()
        .map(|s| (*s).to_string())
        .collect()
}

thread_local! {
    static CONFIG: RefCell<Config> = RefCell::new(Config { keep_content: false, mask_prefixes: default_prefixes() });
}

struct Redactor;

impl Lifecycle for Redactor {
    fn init(config: String) -> Result<(), String> {
        let config: Config =
            serde_json::from_str(&config).map_err(|e| format!("invalid redactor config: {e}"))?;
        CONFIG.with(|c| *c.borrow_mut() = config);
        Ok(())
    }
}

impl Shaper for Redactor {
    fn shape(mut rec: UsageRecord) -> Option<UsageRecord> {
        CONFIG.with(|c| {
            let config = c.borrow();
            if !config.keep_content {
                rec.prompt = None;
                rec.completion = None;
            }
            for label in &mut rec.labels {
                label.value = mask(&label.value, &config.mask_prefixes);
            }
            rec.error_kind = rec
                .error_kind
                .take()
                .map(|e| mask(&e, &config.mask_prefixes));
        });
        Some(rec)
    }
}

/// Replaces each secret-looking token (a prefix followed by non-space text) with [`MASK`].
fn mask(text: &str, prefixes: &[String]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some((at, prefix)) = prefixes
        .iter()
        .filter_map(|p| rest.find(p.as_str()).map(|i| (i, p)))
        .min_by_key(|(i, _)| *i)
    {
        out.push_str(&rest[..at]);
        out.push_str(MASK);
        let secret = &rest[at + prefix.len()..];
        let end = secret.find(char::is_whitespace).unwrap_or(secret.len());
        rest = &secret[end..];
    }
    out.push_str(rest);
    out
}

sluice_policy_sdk::shaper::export_shaper!(Redactor);
