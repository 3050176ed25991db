//! Fixture: a router that traps on every call.
use sluice_policy_sdk::router::exports::sluice::policy::lifecycle::Guest as Lifecycle;
use sluice_policy_sdk::router::exports::sluice::policy::router::Guest as Router;
use sluice_policy_sdk::router::sluice::policy::types::{Channel, Denial, RequestInfo, RouteStep};

struct BadRouter;
impl Lifecycle for BadRouter {
    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }
}
impl Router for BadRouter {
    fn route(_req: RequestInfo, _candidates: Vec<Channel>) -> Result<Vec<RouteStep>, Denial> {
        unreachable!("fixture router trap")
    }
}
sluice_policy_sdk::router::export_router!(BadRouter);
