//! Fixture: never returns from `authorize` for model `spin`; allows anything else.
use sluice_policy_sdk::auth::exports::sluice::policy::auth::{Decision, Guest as Auth};
use sluice_policy_sdk::auth::exports::sluice::policy::lifecycle::Guest as Lifecycle;
use sluice_policy_sdk::auth::sluice::policy::types::{KeyInfo, RequestInfo};

struct Spin;
impl Lifecycle for Spin {
    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }
}
impl Auth for Spin {
    fn authorize(req: RequestInfo, _key: Option<KeyInfo>) -> Decision {
        if req.model != "spin" {
            return Decision::Allow(Vec::new());
        }
        let mut n: u64 = req.model.len() as u64;
        loop {
            n = std::hint::black_box(n.wrapping_mul(31).wrapping_add(7));
        }
    }
}
sluice_policy_sdk::auth::export_auth!(Spin);
