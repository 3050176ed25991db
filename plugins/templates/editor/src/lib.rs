//! Example log editor (the editor template): drops the prompt and completion
//! text from every usage record unless its `keep-content` label says `yes`,
//! and masks the values of chosen labels (an end user's e-mail, say).
//! Accounting fields (tokens, cost, status) cannot be edited.
//!
//! Config (`content-guard.toml`, handed to `init` as JSON):
//! ```toml
//! mask_labels = ["user-email"]  # labels whose values are replaced by `[masked]`
//! ```

use std::cell::RefCell;

use sluice_policy_sdk::api::{Editor, Label, Usage};

#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    mask_labels: Vec<String>,
}

thread_local! {
    static CONFIG: RefCell<Config> = RefCell::new(Config::default());
}

struct ContentGuard;

impl Editor for ContentGuard {
    fn init(config: &str) -> Result<(), String> {
        let config: Config =
            serde_json::from_str(config).map_err(|e| format!("content-guard config: {e}"))?;
        CONFIG.with(|c| *c.borrow_mut() = config);
        Ok(())
    }

    fn edit(rec: &dyn Usage) -> bool {
        CONFIG.with(|c| {
            let config = c.borrow();
            let labels = rec.labels();
            let keep = labels
                .iter()
                .any(|l| l.name == "keep-content" && l.value == "yes");
            if !keep {
                rec.set_prompt(None);
                rec.set_completion(None);
            }
            if labels.iter().any(|l| config.mask_labels.contains(&l.name)) {
                let masked: Vec<Label> = labels
                    .into_iter()
                    .map(|l| {
                        if config.mask_labels.contains(&l.name) {
                            Label::new(l.name, "[masked]")
                        } else {
                            l
                        }
                    })
                    .collect();
                rec.set_labels(&masked);
            }
            true
        })
    }
}

sluice_policy_sdk::export_policy!(editor: ContentGuard);

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_policy_sdk::testing::TestUsage;

    #[test]
    fn content_is_dropped_and_chosen_labels_masked() {
        assert_eq!(
            ContentGuard::init(r#"{"mask_labels": ["user-email"]}"#),
            Ok(())
        );
        let rec = TestUsage::new()
            .with_content("the prompt", "the completion")
            .with_labels(&[("user-email", "ana@example.com"), ("team", "blue")]);
        assert!(ContentGuard::edit(&rec));
        assert_eq!((rec.prompt(), rec.completion()), (None, None));
        assert_eq!(
            rec.labels(),
            [
                Label::new("user-email", "[masked]"),
                Label::new("team", "blue")
            ]
        );
    }

    #[test]
    fn a_record_labelled_keep_content_keeps_it() {
        assert_eq!(ContentGuard::init("{}"), Ok(()));
        let rec = TestUsage::new()
            .with_content("the prompt", "the completion")
            .with_labels(&[("keep-content", "yes")]);
        assert!(ContentGuard::edit(&rec));
        assert_eq!(rec.prompt().as_deref(), Some("the prompt"));
    }
}
