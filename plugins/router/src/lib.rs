//! Sluice's default routing policy: healthy channels only, highest priority first,
//! weighted order within a priority (seeded by the request id, so retries of one
//! request are stable), and each channel's model rename applied (by the host:
//! a step without a model uses the channel's own mapping).

use sluice_policy_sdk::planner::exports::sluice::policy::lifecycle::Guest as Lifecycle;
use sluice_policy_sdk::planner::exports::sluice::policy::planner::{
    Candidate, Guest as Planner, Step,
};
use sluice_policy_sdk::planner::sluice::policy::context::Request;
use sluice_policy_sdk::planner::sluice::policy::types::Denial;

struct PriorityWeight;

impl Lifecycle for PriorityWeight {
    fn init(config: String) -> Result<(), String> {
        match serde_json::from_str::<serde_json::Value>(&config) {
            Ok(serde_json::Value::Object(map)) if map.is_empty() => Ok(()),
            Ok(_) => Err("the default router takes no configuration".into()),
            Err(e) => Err(format!("invalid router config: {e}")),
        }
    }
}

impl Planner for PriorityWeight {
    fn plan(req: &Request, candidates: Vec<Candidate>) -> Result<Vec<Step>, Denial> {
        let mut usable: Vec<(u32, Candidate)> = (0u32..)
            .zip(candidates)
            .filter(|(_, c)| c.healthy && (c.max_in_flight == 0 || c.in_flight < c.max_in_flight))
            .collect();
        if usable.is_empty() {
            return Err(Denial {
                status: 503,
                code: "no_healthy_channel".into(),
                message: format!(
                    "No healthy upstream channel can serve model '{}' right now.",
                    req.model()
                ),
                retry_after_s: Some(1),
            });
        }
        // The request's seed is a host call: asked for only when some priority
        // group has a choice to make (never with a single channel).
        let mut seed = None;
        usable.sort_by_key(|(_, c)| std::cmp::Reverse(c.priority));
        let mut plan = Vec::with_capacity(usable.len());
        for group in usable.chunk_by_mut(|(_, a), (_, b)| a.priority == b.priority) {
            if group.len() > 1 {
                weighted_order(group, seed.get_or_insert_with(|| req.seed()));
            }
            plan.extend(group.iter().map(|(candidate, _)| Step {
                candidate: *candidate,
                model: None,
            }));
        }
        Ok(plan)
    }
}

/// Reorders `group` by repeated weighted draws without replacement.
fn weighted_order(group: &mut [(u32, Candidate)], seed: &mut u64) {
    for start in 0..group.len() {
        let rest = &group[start..];
        let total: u64 = rest.iter().map(|(_, c)| u64::from(c.weight.max(1))).sum();
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut pick = (*seed >> 33) % total;
        let mut chosen = start;
        for (i, (_, c)) in rest.iter().enumerate() {
            let w = u64::from(c.weight.max(1));
            if pick < w {
                chosen = start + i;
                break;
            }
            pick -= w;
        }
        group.swap(start, chosen);
    }
}

sluice_policy_sdk::planner::export_planner!(PriorityWeight);
