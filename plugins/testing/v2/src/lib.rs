//! Fixture: an auth policy built against `sluice:policy@2.0.0`, a major version the host does not speak.
wit_bindgen::generate!({ world: "auth-policy", path: "wit" });

use exports::sluice::policy::auth::{Decision, Guest as Auth};
use exports::sluice::policy::lifecycle::Guest as Lifecycle;
use sluice::policy::types::{KeyInfo, RequestInfo};

struct V2;
impl Lifecycle for V2 {
    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }
}
impl Auth for V2 {
    fn authorize(_req: RequestInfo, _key: Option<KeyInfo>) -> Decision {
        Decision::Allow(Vec::new())
    }
}
export!(V2);
