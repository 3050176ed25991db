//! Fixture: allocates 1 MiB blocks without bound in `authorize`.
use sluice_policy_sdk::auth::exports::sluice::policy::auth::{Decision, Guest as Auth};
use sluice_policy_sdk::auth::exports::sluice::policy::lifecycle::Guest as Lifecycle;
use sluice_policy_sdk::auth::sluice::policy::types::{KeyInfo, RequestInfo};

struct MemBomb;
impl Lifecycle for MemBomb {
    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }
}
impl Auth for MemBomb {
    fn authorize(_req: RequestInfo, _key: Option<KeyInfo>) -> Decision {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(std::hint::black_box(vec![1u8; 1 << 20]));
        }
    }
}
sluice_policy_sdk::auth::export_auth!(MemBomb);
