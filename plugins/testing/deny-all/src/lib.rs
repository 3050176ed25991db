//! Fixture: denies every request with 403 `blocked_by_policy` and the configured message.
use sluice_policy_sdk::auth::exports::sluice::policy::auth::{Decision, Guest as Auth};
use sluice_policy_sdk::auth::exports::sluice::policy::lifecycle::Guest as Lifecycle;
use sluice_policy_sdk::auth::sluice::policy::types::Denial;
use sluice_policy_sdk::auth::sluice::policy::types::{KeyInfo, RequestInfo};
use std::cell::RefCell;

thread_local! { static MESSAGE: RefCell<String> = RefCell::new("blocked".into()); }

struct DenyAll;
impl Lifecycle for DenyAll {
    fn init(config: String) -> Result<(), String> {
        // The config is JSON; a tiny scan keeps the fixture free of a JSON dependency.
        if let Some(rest) = config.split("\"message\":\"").nth(1) {
            let msg = rest.split('"').next().unwrap_or_default().to_string();
            MESSAGE.with(|m| *m.borrow_mut() = msg);
        }
        Ok(())
    }
}
impl Auth for DenyAll {
    fn authorize(_req: RequestInfo, _key: Option<KeyInfo>) -> Decision {
        let message = MESSAGE.with(|m| m.borrow().clone());
        Decision::Deny(Denial {
            status: 403,
            code: "blocked_by_policy".into(),
            message,
            retry_after_s: None,
        })
    }
}
sluice_policy_sdk::auth::export_auth!(DenyAll);
