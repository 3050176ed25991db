//! Fixture: allows every request and labels it `tagged-by = tagger`, plus the
//! request's `x-team` header as `team` when present.
use sluice_policy_sdk::auth::exports::sluice::policy::auth::{Decision, Guest as Auth};
use sluice_policy_sdk::auth::exports::sluice::policy::lifecycle::Guest as Lifecycle;
use sluice_policy_sdk::auth::sluice::policy::types::{KeyInfo, Label, RequestInfo};

struct Tagger;
impl Lifecycle for Tagger {
    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }
}
impl Auth for Tagger {
    fn authorize(req: RequestInfo, _key: Option<KeyInfo>) -> Decision {
        let mut labels = vec![Label {
            name: "tagged-by".into(),
            value: "tagger".into(),
        }];
        labels.extend(
            req.headers
                .into_iter()
                .filter(|h| h.name == "x-team")
                .map(|h| Label {
                    name: "team".into(),
                    value: h.value,
                }),
        );
        Decision::Allow(labels)
    }
}
sluice_policy_sdk::auth::export_auth!(Tagger);
