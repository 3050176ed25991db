//! Shadow mode: a folder plugin whose config says `mode = "shadow"` runs on
//! live traffic after the response, with the request, key, channels and
//! usage record the live policies saw; its decision is logged (with the
//! request id, to set beside what the live policies did) and counted in
//! `sluice_policy_shadow_decisions_total{plugin, outcome}`, and never
//! enforced: a denial, a plan or a failure changes nothing for the request.
//! An operator sees what a new auth or routing policy would do before
//! switching it on.

use std::sync::Arc;

use super::exercise::{Inputs, Outcome, exercise};
use super::instance::Plugin;
use crate::metrics::{Metrics, ShadowLabels};

/// Runs each shadow plugin once on `inputs`; logs and counts its decision.
pub async fn run(plugins: &[Arc<Plugin>], inputs: &Inputs, metrics: &Metrics) {
    for plugin in plugins {
        let outcome = exercise(plugin, inputs).await;
        let kind = match &outcome {
            Ok(Outcome::Allow(_)) => "allow",
            Ok(Outcome::Deny { .. }) => "deny",
            Ok(Outcome::Plan(_)) => "plan",
            Ok(Outcome::Keep(_)) => "keep",
            Ok(Outcome::Drop) => "drop",
            Err(_) => "failed",
        };
        metrics
            .policy_shadow_decisions
            .get_or_create(&ShadowLabels {
                plugin: plugin.info.name.clone(),
                outcome: kind,
            })
            .inc();
        let request_id = inputs.request.request_id.as_str();
        match outcome {
            Ok(decision) => {
                tracing::info!(plugin = %plugin.info.name, request_id, %decision, "shadow decision");
            }
            Err(error) => {
                tracing::warn!(plugin = %plugin.info.name, request_id, %error, "shadow plugin failed");
            }
        }
    }
}
