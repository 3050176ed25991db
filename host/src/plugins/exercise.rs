//! One call of a plugin's policy export with sample inputs, for `plugin
//! check`: an auth plugin authorizes a sample request and key, a router
//! plans over two sample channels, a log shaper edits a sample usage record.
//! What came back is described in one line; a call that fails fails the
//! check, so a plugin whose `plan` always traps is caught before it is
//! dropped into a gateway.

use std::sync::Arc;

use super::bindings::auth::exports::sluice::policy::auth::Decision;
use super::instance::Plugin;
use super::{Offer, PluginError, PolicyKind};
use crate::facts::RequestFacts;
use crate::keys::{Balance, LiveKey};
use crate::store::{KeyRecord, KeyStatus, UsageRecord};

/// The sample channels a router is offered.
const CHANNELS: [&str; 2] = ["primary", "backup"];

fn sample_request() -> Arc<RequestFacts> {
    Arc::new(RequestFacts {
        request_id: "req_plugin_check".into(),
        endpoint: "chat.completions",
        model: "gpt-4o-mini".into(),
        stream: false,
        client_ip: "10.0.0.1".into(),
        headers: vec![(http::header::USER_AGENT, "sluice-plugin-check".into())],
    })
}

fn sample_key() -> Arc<LiveKey> {
    let record = KeyRecord {
        id: "key_plugin_check".into(),
        digest: "0".repeat(64),
        prefix: "sk-sl-check0".into(),
        name: "plugin-check".into(),
        owner: "check".into(),
        status: KeyStatus::Active,
        created_ms: 0,
        expires_at_ms: None,
        models: Vec::new(),
        networks: Vec::new(),
        quota_total: Some(1_000_000),
        quota_remaining: Some(1_000_000),
        rpm_limit: None,
        tpm_limit: None,
    };
    Arc::new(LiveKey::new(
        record,
        Arc::new(Balance::new(Some(1_000_000))),
    ))
}

fn sample_offers() -> Vec<Offer<'static>> {
    CHANNELS
        .iter()
        .enumerate()
        .map(|(i, id)| Offer {
            id,
            provider: "openai",
            priority: i32::from(i == 0),
            weight: 1,
            upstream_model: "gpt-4o-mini",
            healthy: true,
            in_flight: 0,
            max_in_flight: 0,
            latency_ewma_ms: 100,
            error_permille: 0,
        })
        .collect()
}

/// Calls the plugin's export once; describes what it returned.
///
/// # Errors
/// The call's failure (trap, deadline, memory limit), naming the export.
pub async fn exercise(plugin: &Plugin) -> Result<String, PluginError> {
    let req = sample_request();
    match plugin.info.kind {
        PolicyKind::Auth => {
            let decision = plugin.authorize(&req, Some(&sample_key())).await?;
            Ok(match decision {
                Decision::Allow(labels) => {
                    let labels: Vec<String> = labels
                        .iter()
                        .map(|l| format!("{}={}", l.name, l.value))
                        .collect();
                    format!("allowed the sample request (labels: {})", labels.join(", "))
                }
                Decision::Deny(d) => format!(
                    "denied the sample request: {} {} ({})",
                    d.status, d.code, d.message
                ),
            })
        }
        PolicyKind::Router => {
            let offers = sample_offers();
            Ok(match plugin.route(&req, &offers).await? {
                Ok(picks) => {
                    let steps: Vec<String> = picks
                        .iter()
                        .map(|p| {
                            let id = offers[p.offer].id;
                            p.model
                                .as_ref()
                                .map_or_else(|| id.to_string(), |m| format!("{id} ({m})"))
                        })
                        .collect();
                    format!(
                        "planned over the sample channels {CHANNELS:?}: [{}]",
                        steps.join(", ")
                    )
                }
                Err(d) => format!("refused the sample request: {} {}", d.status, d.code),
            })
        }
        PolicyKind::Shaper => {
            let mut record = UsageRecord {
                request_id: "req_plugin_check".into(),
                key_id: "key_plugin_check".into(),
                model: "gpt-4o-mini".into(),
                prompt: Some("sample prompt".into()),
                completion: Some("sample completion".into()),
                ..UsageRecord::default()
            };
            Ok(if plugin.shape(&mut record).await? {
                format!(
                    "kept the sample record (prompt: {:?}, labels: {:?})",
                    record.prompt, record.labels
                )
            } else {
                "dropped the sample record".into()
            })
        }
    }
}
