//! Example auth policy (the plugin template): every request must carry a team
//! header whose value is on an allow list; each team gets its own requests-per-
//! minute budget in the host's windowed counters; the team becomes a label on
//! the usage record.
//!
//! Config (`team-header.toml`, handed to `init` as JSON):
//! ```toml
//! header = "x-team"            # which request header names the team
//! teams = ["blue", "red"]      # allowed teams
//! rpm_per_team = 600           # optional
//! ```

use std::cell::RefCell;

use sluice_policy_sdk::authorizer::exports::sluice::policy::authorizer::{Guest as Auth, Verdict};
use sluice_policy_sdk::authorizer::exports::sluice::policy::lifecycle::Guest as Lifecycle;
use sluice_policy_sdk::authorizer::sluice::policy::context::{Key, Request};
use sluice_policy_sdk::authorizer::sluice::policy::host::{self, Level};
use sluice_policy_sdk::authorizer::sluice::policy::types::{Denial, Label};
use sluice_policy_sdk::denial::retry_after_secs;

#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    header: String,
    teams: Vec<String>,
    #[serde(default)]
    rpm_per_team: Option<u32>,
}

thread_local! {
    static CONFIG: RefCell<Config> = RefCell::new(Config::default());
}

struct TeamHeader;

impl Lifecycle for TeamHeader {
    fn init(config: String) -> Result<(), String> {
        let config: Config =
            serde_json::from_str(&config).map_err(|e| format!("team-header config: {e}"))?;
        if config.teams.is_empty() {
            return Err("team-header config: `teams` must not be empty".into());
        }
        host::log(
            Level::Info,
            &format!(
                "team-header: {} teams allowed via {}",
                config.teams.len(),
                config.header
            ),
        );
        CONFIG.with(|c| *c.borrow_mut() = config);
        Ok(())
    }
}

impl Auth for TeamHeader {
    fn authorize(req: &Request, _key: Option<&Key>) -> Verdict {
        CONFIG.with(|c| {
            let config = c.borrow();
            // One host call fetches the one header this policy reads.
            let team = req.header(&config.header);
            let Some(team) = team.filter(|t| config.teams.iter().any(|allowed| allowed == t))
            else {
                return Verdict::Deny(Denial {
                    status: 403,
                    code: "team_not_allowed".into(),
                    message: format!("Send a {} header naming an allowed team.", config.header),
                    retry_after_s: None,
                });
            };
            if let Some(limit) = config.rpm_per_team {
                let window = host::counter_add(&format!("team-rpm:{team}"), 1, 60_000);
                if window.total > i64::from(limit) {
                    return Verdict::Deny(Denial {
                        status: 429,
                        code: "rate_limit_exceeded".into(),
                        message: format!("Team {team} reached {limit} requests per minute."),
                        retry_after_s: Some(retry_after_secs(window.resets_in_ms)),
                    });
                }
            }
            Verdict::Allow(vec![Label {
                name: "team".into(),
                value: team,
            }])
        })
    }
}

sluice_policy_sdk::authorizer::export_authorizer!(TeamHeader);
