//! Example router (the router template): a request's tenant header picks the
//! healthy channels tagged with the tenant's name, highest priority first,
//! then the healthy channels tagged `shared`; a tenant with neither is
//! refused with 403 `tenant_has_no_channel`. Channel tags come from the
//! gateway's config (`tags = ["acme", "shared"]`).
//!
//! Config (`tenant-router.toml`, handed to `init` as JSON):
//! ```toml
//! header = "x-tenant"          # which request header names the tenant
//! shared_tag = "shared"        # channels any tenant may use after its own
//! ```

use std::cell::RefCell;

use sluice_policy_sdk::api::{Candidate, Denial, Planner, Request, Step};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    header: String,
    #[serde(default = "shared")]
    shared_tag: String,
}

fn shared() -> String {
    "shared".into()
}

thread_local! {
    static CONFIG: RefCell<Option<Config>> = const { RefCell::new(None) };
}

struct TenantRouter;

/// The healthy candidates carrying `tag`, highest priority first.
fn tagged<'a>(candidates: &'a [Candidate], tag: &str) -> Vec<&'a Candidate> {
    let mut chosen: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| c.healthy && c.has_tag(tag))
        .collect();
    chosen.sort_by_key(|c| std::cmp::Reverse(c.priority));
    chosen
}

impl Planner for TenantRouter {
    fn init(config: &str) -> Result<(), String> {
        let config: Config =
            serde_json::from_str(config).map_err(|e| format!("tenant-router config: {e}"))?;
        CONFIG.with(|c| *c.borrow_mut() = Some(config));
        Ok(())
    }

    fn plan(req: &dyn Request, candidates: &[Candidate]) -> Result<Vec<Step>, Denial> {
        CONFIG.with(|c| {
            let config = c.borrow();
            let config = config.as_ref().ok_or_else(|| {
                Denial::new(
                    500,
                    "router_not_configured",
                    "The router has no configuration.",
                )
            })?;
            let tenant = req.header(&config.header).unwrap_or_default();
            let mut plan = if tenant.is_empty() {
                Vec::new()
            } else {
                tagged(candidates, &tenant)
            };
            plan.extend(tagged(candidates, &config.shared_tag));
            if plan.is_empty() {
                return Err(Denial::new(
                    403,
                    "tenant_has_no_channel",
                    format!(
                        "No channel serves tenant '{tenant}' (send it in {}).",
                        config.header
                    ),
                ));
            }
            Ok(plan.into_iter().map(Candidate::step).collect())
        })
    }
}

sluice_policy_sdk::export_policy!(planner: TenantRouter);

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_policy_sdk::testing::{TestCandidate, TestRequest, offer};

    fn ids(plan: &[Step], offered: &[Candidate]) -> Vec<String> {
        plan.iter()
            .map(|s| offered[s.candidate as usize].id.clone())
            .collect()
    }

    fn offered() -> Vec<Candidate> {
        offer([
            TestCandidate::new("pool").with_tags(&["shared"]),
            TestCandidate::new("acme-low").with_tags(&["acme"]),
            TestCandidate::new("acme-high")
                .with_tags(&["acme"])
                .with_priority(5),
            TestCandidate::new("acme-down")
                .with_tags(&["acme"])
                .unhealthy(),
            TestCandidate::new("globex").with_tags(&["globex"]),
        ])
    }

    #[test]
    fn a_tenant_gets_its_channels_by_priority_then_the_shared_ones() {
        assert_eq!(TenantRouter::init(r#"{"header": "x-tenant"}"#), Ok(()));
        let offered = offered();
        let req = TestRequest::new().with_header("x-tenant", "acme");
        let plan = TenantRouter::plan(&req, &offered).unwrap_or_default();
        assert_eq!(ids(&plan, &offered), ["acme-high", "acme-low", "pool"]);
    }

    #[test]
    fn without_a_tenant_only_shared_channels_serve() {
        assert_eq!(TenantRouter::init(r#"{"header": "x-tenant"}"#), Ok(()));
        let offered = offered();
        let plan = TenantRouter::plan(&TestRequest::new(), &offered).unwrap_or_default();
        assert_eq!(ids(&plan, &offered), ["pool"]);
    }

    #[test]
    fn a_tenant_with_no_channel_is_refused() {
        assert_eq!(
            TenantRouter::init(r#"{"header": "x-tenant", "shared_tag": "none"}"#),
            Ok(())
        );
        let req = TestRequest::new().with_header("x-tenant", "initech");
        let refusal = TenantRouter::plan(&req, &offered()).err();
        assert_eq!(
            refusal.map(|d| (d.status, d.code)),
            Some((403, "tenant_has_no_channel".into()))
        );
    }
}
