//! Fixture: traps (Rust panic = wasm `unreachable`) in `authorize`.
use sluice_policy_sdk::auth::exports::sluice::policy::auth::{Decision, Guest as Auth};
use sluice_policy_sdk::auth::exports::sluice::policy::lifecycle::Guest as Lifecycle;
use sluice_policy_sdk::auth::sluice::policy::types::{KeyInfo, RequestInfo};

struct Trap;
impl Lifecycle for Trap {
    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }
}
impl Auth for Trap {
    fn authorize(_req: RequestInfo, _key: Option<KeyInfo>) -> Decision {
        unreachable!("fixture trap")
    }
}
sluice_policy_sdk::auth::export_auth!(Trap);
