//! Example auth policy (the plugin template): every request must carry a team
//! header whose value is on an allow list; each team gets its own requests-per-
//! minute budget in the host's windowed counters; the team becomes a label on
//! the usage record. Written against the SDK's API, so `cargo test` runs it
//! natively (see the tests below).
//!
//! Config (`team-header.toml`, handed to `init` as JSON):
//! ```toml
//! header = "x-team"            # which request header names the team
//! teams = ["blue", "red"]      # allowed teams
//! rpm_per_team = 600           # optional
//! ```

use std::cell::RefCell;

use sluice_policy_sdk::api::{Authorizer, Denial, Key, Label, Level, Request, Verdict};
use sluice_policy_sdk::denial::retry_after_secs;
use sluice_policy_sdk::host;

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

impl Authorizer for TeamHeader {
    fn init(config: &str) -> Result<(), String> {
        let config: Config =
            serde_json::from_str(config).map_err(|e| format!("team-header config: {e}"))?;
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

    fn authorize(req: &dyn Request, _key: Option<&dyn Key>) -> Verdict {
        CONFIG.with(|c| {
            let config = c.borrow();
            // One host call fetches the one header this policy reads.
            let team = req.header(&config.header);
            let Some(team) = team.filter(|t| config.teams.iter().any(|allowed| allowed == t))
            else {
                return Verdict::Deny(Denial::new(
                    403,
                    "team_not_allowed",
                    format!("Send a {} header naming an allowed team.", config.header),
                ));
            };
            if let Some(limit) = config.rpm_per_team {
                let window = host::counter_add(&format!("team-rpm:{team}"), 1, 60_000);
                if window.total > i64::from(limit) {
                    return Verdict::Deny(
                        Denial::new(
                            429,
                            "rate_limit_exceeded",
                            format!("Team {team} reached {limit} requests per minute."),
                        )
                        .retry_after(retry_after_secs(window.resets_in_ms)),
                    );
                }
            }
            Verdict::Allow(vec![Label::new("team", team)])
        })
    }
}

sluice_policy_sdk::export_policy!(authorizer: TeamHeader);

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_policy_sdk::testing::{self, TestKey, TestRequest};

    fn start(rpm: u32) {
        let config = format!(r#"{{"header": "x-team", "teams": ["blue"], "rpm_per_team": {rpm}}}"#);
        assert_eq!(TeamHeader::init(&config), Ok(()));
    }

    fn decide(team: Option<&str>) -> Verdict {
        let req = team.map_or_else(TestRequest::new, |t| {
            TestRequest::new().with_header("x-team", t)
        });
        TeamHeader::authorize(&req, Some(&TestKey::new()))
    }

    #[test]
    fn an_allowed_team_is_labelled_and_logged() {
        start(10);
        assert_eq!(
            decide(Some("blue")),
            Verdict::Allow(vec![Label::new("team", "blue")])
        );
        assert_eq!(
            testing::logs(),
            [(
                Level::Info,
                "team-header: 1 teams allowed via x-team".to_string()
            )]
        );
    }

    #[test]
    fn other_teams_and_none_are_refused() {
        start(10);
        for team in [Some("red"), None] {
            let Verdict::Deny(denial) = decide(team) else {
                panic!("{team:?} must be refused");
            };
            assert_eq!(
                (denial.status, denial.code.as_str()),
                (403, "team_not_allowed")
            );
        }
    }

    #[test]
    fn a_team_over_its_budget_waits_for_the_next_window() {
        start(2);
        assert!(matches!(decide(Some("blue")), Verdict::Allow(_)));
        assert!(matches!(decide(Some("blue")), Verdict::Allow(_)));
        let Verdict::Deny(denial) = decide(Some("blue")) else {
            panic!("the third request of the minute is over the budget");
        };
        assert_eq!(denial.code, "rate_limit_exceeded");
        assert_eq!(denial.retry_after_s, Some(60));
        testing::advance_clock(60_000);
        assert!(matches!(decide(Some("blue")), Verdict::Allow(_)));
    }

    #[test]
    fn a_config_without_teams_is_rejected() {
        assert!(TeamHeader::init(r#"{"header": "x-team", "teams": []}"#).is_err());
    }
}
