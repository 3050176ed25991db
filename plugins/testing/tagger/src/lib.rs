//! Fixture: allows every request and labels it `tagged-by = tagger`, plus the
//! request's `x-team` header as `team` when present. Built against `wit/`, a
//! frozen copy of `sluice:policy@1.0.0`, it shows that components built for 1.0
//! keep loading on later 1.x hosts.
wit_bindgen::generate!({ world: "auth-policy", path: "wit" });

use exports::sluice::policy::auth::{Decision, Guest as Auth};
use exports::sluice::policy::lifecycle::Guest as Lifecycle;
use sluice::policy::types::{KeyInfo, Label, RequestInfo};

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
export!(Tagger);
