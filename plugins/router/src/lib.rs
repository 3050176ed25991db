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
        let mut plan = Vec::with_capacity(candidates.len());
        plan.extend(
            (0u32..)
                .zip(&candidates)
                .filter(|(_, c)| {
                    c.healthy && (c.max_in_flight == 0 || c.in_flight < c.max_in_flight)
                })
                .map(|(candidate, _)| Step {
                    candidate,
                    model: None,
                }),
        );
        if plan.is_empty() {
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
        let of = |step: &Step| &candidates[step.candidate as usize];
        plan.sort_by_key(|step| std::cmp::Reverse(of(step).priority));
        let mut seed = None;
        for group in plan.chunk_by_mut(|a, b| of(a).priority == of(b).priority) {
            if group.len() > 1 {
                weighted_order(group, &candidates, seed.get_or_insert_with(|| req.seed()));
            }
        }
        Ok(plan)
    }
}

/// Orders `group` (steps of one priority) by weighted random draws without
/// replacement: each draw picks a step with probability proportional to its
/// channel's weight among those left.
fn weighted_order(group: &mut [Step], candidates: &[Candidate], seed: &mut u64) {
    let weight = |step: &Step| u64::from(candidates[step.candidate as usize].weight.max(1));
    for start in 0..group.len() {
        let rest = &group[start..];
        let total: u64 = rest.iter().map(weight).sum();
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut pick = (*seed >> 33) % total;
        let mut chosen = start;
        for (i, step) in rest.iter().enumerate() {
            let w = weight(step);
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
