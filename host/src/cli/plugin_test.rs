//! `sluice plugin test FILE --cases CASES.toml`: a plugin run against cases
//! without a gateway. Each case gives a request (model, endpoint, headers,
//! client IP), a key (or none), the channels a router is offered and the
//! record a shaper edits, and may state what it expects; the plugin keeps
//! its in-memory host state (counters, key/value) from case to case, as in a
//! gateway. Each decision, plan or edited record is printed with the call's
//! time; any failed call or unmet expectation makes the command exit non-zero.
//!
//! ```toml
//! [[case]]
//! name = "a blue team member is allowed"
//! headers = { x-team = "blue" }
//! expect = { outcome = "allow", labels = { team = "blue" } }
//!
//! [[case]]
//! name = "no team header"
//! expect = { outcome = "deny", status = 403 }
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;

use crate::endpoint::Endpoint;
use crate::facts::RequestFacts;
use crate::plugins::exercise::{ChannelInput, Inputs, Outcome, exercise, key};
use crate::plugins::instance::Plugin;
use crate::store::UsageRecord;

/// A cases file.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Cases {
    #[serde(rename = "case", default)]
    cases: Vec<Case>,
}

/// One case: the inputs (each defaulting to the sample's) and what it expects.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    model: Option<String>,
    endpoint: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    client_ip: Option<String>,
    /// `false`: the request carries no key.
    #[serde(default = "yes")]
    keyed: bool,
    key_models: Option<Vec<String>>,
    key_quota: Option<i64>,
    channels: Option<Vec<ChannelInput>>,
    record: Option<RecordInput>,
    #[serde(default)]
    expect: Option<Expect>,
}

fn yes() -> bool {
    true
}

/// The parts of a usage record a case sets.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordInput {
    model: Option<String>,
    prompt: Option<String>,
    completion: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// What a case expects; unset fields are not checked.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    /// `allow`, `deny`, `plan`, `keep` or `drop`.
    outcome: String,
    status: Option<u16>,
    code: Option<String>,
    /// Text a refusal's message must contain.
    message: Option<String>,
    /// Labels that must be present with these values.
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// The plan's channel ids, in order.
    plan: Option<Vec<String>>,
    /// Whether a kept record still holds prompt or completion text.
    content: Option<bool>,
}

impl Expect {
    /// `Err` with what differs.
    fn check(&self, outcome: &Outcome) -> Result<(), String> {
        let (kind, labels) = match outcome {
            Outcome::Allow(labels) => ("allow", Some(labels)),
            Outcome::Deny { .. } => ("deny", None),
            Outcome::Plan(_) => ("plan", None),
            Outcome::Keep(record) => ("keep", Some(&record.labels)),
            Outcome::Drop => ("drop", None),
        };
        if kind != self.outcome {
            return Err(format!("expected {}, got {outcome}", self.outcome));
        }
        if let Outcome::Deny {
            status,
            code,
            message,
        } = outcome
        {
            if self.status.is_some_and(|s| s != *status) {
                return Err(format!("expected status {:?}, got {status}", self.status));
            }
            if self.code.as_ref().is_some_and(|c| c != code) {
                return Err(format!("expected code {:?}, got {code}", self.code));
            }
            if let Some(text) = self.message.as_ref().filter(|t| !message.contains(*t)) {
                return Err(format!(
                    "expected a message containing {text:?}, got {message:?}"
                ));
            }
        }
        for (name, value) in &self.labels {
            if labels.and_then(|l| l.get(name)) != Some(value) {
                return Err(format!("expected label {name}={value}, got {outcome}"));
            }
        }
        if let (Some(want), Outcome::Keep(record)) = (self.content, outcome)
            && want != (record.prompt.is_some() || record.completion.is_some())
        {
            return Err(format!("expected content {want}, got {outcome}"));
        }
        if let (Some(want), Outcome::Plan(steps)) = (&self.plan, outcome) {
            let ids: Vec<&String> = steps.iter().map(|(id, _)| id).collect();
            if ids
                .iter()
                .map(|s| s.as_str())
                .ne(want.iter().map(String::as_str))
            {
                return Err(format!("expected plan {want:?}, got {outcome}"));
            }
        }
        Ok(())
    }
}

impl Case {
    fn inputs(&self) -> anyhow::Result<Inputs> {
        let sample = Inputs::sample();
        let mut headers = Vec::with_capacity(self.headers.len());
        for (name, value) in &self.headers {
            let name = http::HeaderName::try_from(name.as_str())
                .map_err(|_| anyhow::anyhow!("case {:?}: bad header name {name:?}", self.name))?;
            headers.push((name, value.clone()));
        }
        let endpoint = match self.endpoint.as_deref() {
            None => Endpoint::Chat,
            Some(name) => Endpoint::of_name(name).ok_or_else(|| {
                anyhow::anyhow!("case {:?}: unknown endpoint {name:?}", self.name)
            })?,
        };
        let request = RequestFacts {
            model: self
                .model
                .clone()
                .unwrap_or_else(|| sample.request.model.clone()),
            endpoint: endpoint.name(),
            protocol: endpoint.protocol(),
            client_ip: self
                .client_ip
                .clone()
                .unwrap_or_else(|| sample.request.client_ip.clone()),
            headers,
            ..(*sample.request).clone()
        };
        let key = sample.key.filter(|_| self.keyed).map(|k| {
            let mut record = k.record.clone();
            if let Some(models) = &self.key_models {
                record.models.clone_from(models);
            }
            if let Some(quota) = self.key_quota {
                record.quota_total = Some(quota);
                record.quota_remaining = Some(quota);
            }
            key(record)
        });
        let record = match &self.record {
            None => sample.record,
            Some(r) => UsageRecord {
                model: r.model.clone().unwrap_or(sample.record.model),
                prompt: r.prompt.clone(),
                completion: r.completion.clone(),
                labels: r.labels.clone(),
                ..sample.record
            },
        };
        Ok(Inputs {
            request: Arc::new(request),
            key,
            channels: self.channels.clone().unwrap_or(sample.channels),
            record,
        })
    }
}

impl Cases {
    /// Reads a cases file.
    ///
    /// # Errors
    /// An unreadable file or one that is not a cases file.
    pub(super) fn read(path: &std::path::Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("{} is not a cases file", path.display()))
    }
}

/// Calls the plugin `calls` times per case and prints each case's mean,
/// median and 99th-percentile call time, then the mean over all calls.
///
/// # Errors
/// A case whose inputs are invalid, or a failed call.
pub(super) async fn bench(
    plugin: &Plugin,
    cases: &Cases,
    calls: u32,
    out: impl Fn(&str) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut all = Vec::new();
    for case in &cases.cases {
        let inputs = case.inputs()?;
        let mut times = Vec::with_capacity(calls as usize);
        for _ in 0..calls {
            let started = Instant::now();
            exercise(plugin, &inputs)
                .await
                .with_context(|| format!("case {:?}", case.name))?;
            times.push(started.elapsed().as_secs_f64() * 1e6);
        }
        out(&format!("{}: {}", case.name, summary(&mut times)))?;
        all.extend(times);
    }
    out(&format!("all cases: {}", summary(&mut all)))
}

/// `mean M µs, p50 P µs, p99 Q µs (N calls)` of call times in µs.
fn summary(times: &mut [f64]) -> String {
    times.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let last = times.len().saturating_sub(1) as f64;
        times
            .get((last * q).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
    format!(
        "mean {mean:.1} µs, p50 {:.1} µs, p99 {:.1} µs ({} calls)",
        at(0.5),
        at(0.99),
        times.len()
    )
}

/// Runs every case; `Ok(false)` when any failed or missed its expectation.
pub(super) async fn run(
    plugin: &Plugin,
    cases: &Cases,
    out: impl Fn(&str) -> anyhow::Result<()>,
) -> anyhow::Result<bool> {
    let mut passed = 0;
    for case in &cases.cases {
        let inputs = case.inputs()?;
        let started = Instant::now();
        let result = exercise(plugin, &inputs).await;
        let took = started.elapsed().as_micros();
        let verdict = match (&result, &case.expect) {
            (Err(e), _) => Err(format!("the call failed: {e}")),
            (Ok(outcome), Some(expect)) => expect.check(outcome),
            (Ok(_), None) => Ok(()),
        };
        let shown = result.map_or_else(|e| e.to_string(), |o| o.to_string());
        match verdict {
            Ok(()) => {
                passed += 1;
                out(&format!("ok       {}: {shown} ({took} µs)", case.name))?;
            }
            Err(why) => out(&format!("FAILED   {}: {why} ({took} µs)", case.name))?,
        }
    }
    let total = cases.cases.len();
    out(&format!("{passed} of {total} cases passed"))?;
    Ok(passed == total)
}
