//! Fixture: rejects every configuration.
use sluice_policy_sdk::auth::exports::sluice::policy::auth::{Decision, Guest as Auth};
use sluice_policy_sdk::auth::exports::sluice::policy::lifecycle::Guest as Lifecycle;
use sluice_policy_sdk::auth::sluice::policy::types::{KeyInfo, RequestInfo};

struct InitFails;
impl Lifecycle for InitFails {
    fn init(_config: String) -> Result<(), String> {
        Err("fixture refuses to start".into())
    }
}
impl Auth for InitFails {
    fn authorize(_req: RequestInfo, _key: Option<KeyInfo>) -> Decision {
        Decision::Allow(Vec::new())
    }
}
sluice_policy_sdk::auth::export_auth!(InitFails);
