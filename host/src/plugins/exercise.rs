//! Calling a plugin's policy export outside a gateway, with the same host
//! interface (counters, key/value, clock and log held in memory): `plugin
//! check` calls it once with [`Inputs::sample`], `plugin test` once per case
//! of a cases file. An auth plugin authorizes a request and key, a router
//! plans over channels, a log shaper edits a usage record; the [`Outcome`]
//! says what came back and compares with what a case expects.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::bindings::auth::exports::sluice::policy::auth::Decision;
use super::instance::Plugin;
use super::{ChannelFacts, Offer, PluginError, PolicyKind};
use crate::endpoint::Endpoint;
use crate::facts::RequestFacts;
use crate::keys::{Balance, LiveKey};
use crate::store::{KeyRecord, KeyStatus, UsageRecord};

/// A channel offered to a router.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelInput {
    /// Its id.
    pub id: String,
    /// Its provider.
    #[serde(default = "openai")]
    pub provider: String,
    /// Its tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The models it serves; empty: the request's model.
    #[serde(default)]
    pub models: Vec<String>,
    /// Its priority (higher first).
    #[serde(default)]
    pub priority: i32,
    /// Its weight within its priority.
    #[serde(default = "one")]
    pub weight: u32,
    /// Whether it is healthy.
    #[serde(default = "yes")]
    pub healthy: bool,
    /// Requests in flight.
    #[serde(default)]
    pub in_flight: u32,
    /// Its latency EWMA, ms.
    #[serde(default)]
    pub latency_ewma_ms: u32,
    /// Its error rate, ‰.
    #[serde(default)]
    pub error_permille: u32,
}

fn one() -> u32 {
    1
}

fn openai() -> String {
    "openai".into()
}

impl From<&Offer<'_>> for ChannelInput {
    fn from(offer: &Offer<'_>) -> Self {
        Self {
            id: offer.id.into(),
            provider: offer.facts.provider.clone(),
            tags: offer.facts.tags.clone(),
            models: offer.facts.models.clone(),
            priority: offer.priority,
            weight: offer.weight,
            healthy: offer.healthy,
            in_flight: offer.in_flight,
            latency_ewma_ms: offer.latency_ewma_ms,
            error_permille: offer.error_permille,
        }
    }
}

fn yes() -> bool {
    true
}

/// What one call is given.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// The request.
    pub request: Arc<RequestFacts>,
    /// The caller's key, if any.
    pub key: Option<Arc<LiveKey>>,
    /// The channels offered to a router.
    pub channels: Vec<ChannelInput>,
    /// The record a shaper edits.
    pub record: UsageRecord,
}

impl Inputs {
    /// A chat request with a user agent, a key with quota, two channels and
    /// a record with its prompt and completion.
    pub fn sample() -> Self {
        Self {
            request: Arc::new(RequestFacts {
                request_id: "req_plugin_check".into(),
                endpoint: Endpoint::Chat.name(),
                protocol: Endpoint::Chat.protocol(),
                model: "gpt-4o-mini".into(),
                stream: false,
                client_ip: "10.0.0.1".into(),
                headers: vec![(http::header::USER_AGENT, "sluice-plugin-check".into())],
            }),
            key: Some(key(KeyRecord {
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
            })),
            channels: ["primary", "backup"]
                .iter()
                .enumerate()
                .map(|(i, id)| ChannelInput {
                    id: (*id).into(),
                    provider: openai(),
                    tags: Vec::new(),
                    models: Vec::new(),
                    priority: i32::from(i == 0),
                    weight: 1,
                    healthy: true,
                    in_flight: 0,
                    latency_ewma_ms: 100,
                    error_permille: 0,
                })
                .collect(),
            record: UsageRecord {
                request_id: "req_plugin_check".into(),
                key_id: "key_plugin_check".into(),
                model: "gpt-4o-mini".into(),
                prompt: Some("sample prompt".into()),
                completion: Some("sample completion".into()),
                ..UsageRecord::default()
            },
        }
    }
}

/// A key as the gateway holds it, its balance from its remaining quota.
pub fn key(record: KeyRecord) -> Arc<LiveKey> {
    let balance = Arc::new(Balance::new(record.quota_remaining));
    Arc::new(LiveKey::new(record, balance))
}

/// What a call returned.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// An auth plugin allowed the request, with these labels.
    Allow(BTreeMap<String, String>),
    /// An auth plugin or a router refused it.
    Deny {
        /// The status.
        status: u16,
        /// The error code.
        code: String,
        /// The message.
        message: String,
    },
    /// A router's plan: channel ids, each with its model override.
    Plan(Vec<(String, Option<String>)>),
    /// A shaper kept the record, edited as shown.
    Keep(Box<UsageRecord>),
    /// A shaper dropped the record.
    Drop,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Allow(labels) => write!(f, "allow (labels: {labels:?})"),
            Self::Deny {
                status,
                code,
                message,
            } => write!(f, "deny {status} {code} ({message})"),
            Self::Plan(steps) => {
                let steps: Vec<String> = steps
                    .iter()
                    .map(|(id, model)| {
                        model
                            .as_ref()
                            .map_or_else(|| id.clone(), |m| format!("{id} ({m})"))
                    })
                    .collect();
                write!(f, "plan [{}]", steps.join(", "))
            }
            Self::Keep(record) => write!(
                f,
                "keep (labels: {:?}, prompt: {:?}, completion: {:?})",
                record.labels, record.prompt, record.completion
            ),
            Self::Drop => write!(f, "drop"),
        }
    }
}

/// Calls the plugin's policy export once with `inputs`.
///
/// # Errors
/// The call's failure (trap, deadline, memory limit), naming the export.
pub async fn exercise(plugin: &Plugin, inputs: &Inputs) -> Result<Outcome, PluginError> {
    match plugin.info.kind {
        PolicyKind::Auth => Ok(
            match plugin
                .authorize(&inputs.request, inputs.key.as_ref())
                .await?
            {
                Decision::Allow(labels) => {
                    Outcome::Allow(labels.into_iter().map(|l| (l.name, l.value)).collect())
                }
                Decision::Deny(d) => Outcome::Deny {
                    status: d.status,
                    code: d.code,
                    message: d.message,
                },
            },
        ),
        PolicyKind::Router => {
            let model = inputs.request.model.as_str();
            let facts: Vec<Arc<ChannelFacts>> = inputs
                .channels
                .iter()
                .map(|c| {
                    Arc::new(ChannelFacts {
                        provider: c.provider.clone(),
                        tags: c.tags.clone(),
                        models: if c.models.is_empty() {
                            vec![model.to_string()]
                        } else {
                            c.models.clone()
                        },
                    })
                })
                .collect();
            let offers: Vec<Offer<'_>> = inputs
                .channels
                .iter()
                .zip(&facts)
                .map(|(c, facts)| Offer {
                    id: &c.id,
                    facts,
                    priority: c.priority,
                    weight: c.weight,
                    upstream_model: model,
                    healthy: c.healthy,
                    in_flight: c.in_flight,
                    max_in_flight: 0,
                    latency_ewma_ms: c.latency_ewma_ms,
                    error_permille: c.error_permille,
                })
                .collect();
            Ok(match plugin.route(&inputs.request, &offers).await? {
                Ok(picks) => Outcome::Plan(
                    picks
                        .into_iter()
                        .map(|p| (offers[p.offer].id.to_string(), p.model))
                        .collect(),
                ),
                Err(d) => Outcome::Deny {
                    status: d.status,
                    code: d.code,
                    message: d.message,
                },
            })
        }
        PolicyKind::Shaper => {
            let mut record = inputs.record.clone();
            Ok(if plugin.shape(&mut record).await? {
                Outcome::Keep(Box::new(record))
            } else {
                Outcome::Drop
            })
        }
    }
}
