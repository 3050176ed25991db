//! Sluice's default log shaper: removes prompt and completion text unless
//! configured to keep it, and masks anything that looks like a credential in
//! labels and error kinds.
//!
//! Config (all optional): `{"keep_content": false, "mask_prefixes": ["sk-", "Bearer "]}`.

use std::cell::RefCell;

use sluice_policy_sdk::editor::exports::sluice::policy::editor::Guest as Editor;
use sluice_policy_sdk::editor::exports::sluice::policy::lifecycle::Guest as Lifecycle;
use sluice_policy_sdk::editor::sluice::policy::context::Usage;

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

impl Editor for Redactor {
    /// Reads only what it may change and writes only what changed.
    fn edit(rec: &Usage) -> bool {
        CONFIG.with(|c| {
            let config = c.borrow();
            if !config.keep_content && rec.has_content() {
                rec.set_prompt(None);
                rec.set_completion(None);
            }
            if !rec.mentions(&config.mask_prefixes) {
                return;
            }
            let mut labels = rec.labels();
            let mut masked = false;
            for label in &mut labels {
                if let Some(value) = mask(&label.value, &config.mask_prefixes) {
                    label.value = value;
                    masked = true;
                }
            }
            if masked {
                rec.set_labels(&labels);
            }
            if let Some(error) = rec.error_kind()
                && let Some(masked) = mask(&error, &config.mask_prefixes)
            {
                rec.set_error_kind(Some(&masked));
            }
        });
        true
    }
}

/// `text` with each secret-looking token (a prefix followed by non-space text)
/// replaced by [`MASK`]; `None` when there is nothing to mask.
fn mask(text: &str, prefixes: &[String]) -> Option<String> {
    if !prefixes.iter().any(|p| text.contains(p.as_str())) {
        return None;
    }
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
    Some(out)
}

sluice_policy_sdk::editor::export_editor!(Redactor);
