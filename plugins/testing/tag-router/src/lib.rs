//! Fixture: a 1.2 router. A request's `x-team` header picks the channels
//! tagged with that team (none: every channel), of which it plans only the
//! healthy ones (all unhealthy: an empty plan); a client speaking Anthropic's
//! protocol is sent to `anthropic` channels first, any other client to the
//! others first; otherwise the offered order is kept. A team no channel
//! carries is refused with 403 `no_channel_for_team`, naming each offered
//! channel's provider, models and tags.
use sluice_policy_sdk::planner::exports::sluice::policy::lifecycle::Guest as Lifecycle;
use sluice_policy_sdk::planner::exports::sluice::policy::planner::{
    Candidate, Guest as Planner, Step,
};
use sluice_policy_sdk::planner::sluice::policy::candidates;
use sluice_policy_sdk::planner::sluice::policy::context::Request;
use sluice_policy_sdk::planner::sluice::policy::types::Denial;

struct TagRouter;
impl Lifecycle for TagRouter {
    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }
}

/// How one offered channel reads in a refusal.
fn describe(position: u32, candidate: &Candidate) -> String {
    format!(
        "{} ({}: {}; tags: {})",
        candidate.id,
        candidates::provider(position),
        candidates::models(position).join(", "),
        candidates::tags(position).join(", ")
    )
}

impl Planner for TagRouter {
    fn plan(req: &Request, offered: Vec<Candidate>) -> Result<Vec<Step>, Denial> {
        let positions = 0..u32::try_from(offered.len()).unwrap_or(u32::MAX);
        let mut chosen: Vec<u32> = match req.header("x-team") {
            Some(team) => positions
                .filter(|&p| candidates::has_tag(p, &team))
                .collect(),
            None => positions.collect(),
        };
        if chosen.is_empty() {
            let team = req.header("x-team").unwrap_or_default();
            let offered: Vec<String> = offered
                .iter()
                .zip(0..)
                .map(|(c, p)| describe(p, c))
                .collect();
            return Err(Denial {
                status: 403,
                code: "no_channel_for_team".into(),
                message: format!(
                    "No channel serves team {team}; offered: {}",
                    offered.join("; ")
                ),
                retry_after_s: None,
            });
        }
        chosen.retain(|&p| offered[p as usize].healthy);
        let anthropic_client = req.protocol() == "anthropic";
        chosen.sort_by_key(|&p| (candidates::provider(p) == "anthropic") != anthropic_client);
        Ok(chosen
            .into_iter()
            .map(|candidate| Step {
                candidate,
                model: None,
            })
            .collect())
    }
}
sluice_policy_sdk::planner::export_planner!(TagRouter);
