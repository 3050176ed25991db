//! Fixture: a shaper that traps on every call.
use sluice_policy_sdk::shaper::exports::sluice::policy::lifecycle::Guest as Lifecycle;
use sluice_policy_sdk::shaper::exports::sluice::policy::shaper::Guest as Shaper;
use sluice_policy_sdk::shaper::sluice::policy::types::UsageRecord;

struct BadShaper;
impl Lifecycle for BadShaper {
    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }
}
impl Shaper for BadShaper {
    fn shape(_rec: UsageRecord) -> Option<UsageRecord> {
        unreachable!("fixture shaper trap")
    }
}
sluice_policy_sdk::shaper::export_shaper!(BadShaper);
