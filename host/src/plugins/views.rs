//! The host side of the 1.1 `context` interface: the request, key and usage
//! record a policy reads through handles instead of receiving them as records;
//! and of the 1.2 `candidates` interface: what a router reads about the
//! channels it was offered. A call lends its views to the guest and takes them
//! back afterwards (the usage record with the editor's changes).
//! Accounting fields of the usage record have no setters, so an editor cannot
//! touch them.

use std::sync::Arc;

use wasmtime::component::Resource;

use super::bindings::candidates;
use super::bindings::context::{self, Standing};
use super::bindings::host::CounterState;
use super::bindings::types::{KeyStatus, Label};
use super::host_state::HostState;
use super::{ChannelFacts, Offer};
use crate::facts::RequestFacts;
use crate::keys::LiveKey;
use crate::store::UsageRecord;

/// The resource type of the request a policy reads.
pub struct RequestView;

/// The resource type of the key a policy reads.
pub struct KeyView;

/// The resource type of the usage record an editor edits.
pub struct UsageView;

/// The one handle value of each view: a call lends at most one view of each
/// type, so the handle only needs its type.
const LENT: u32 = 0;

/// The views lent to the call in progress. They live in the store's state
/// rather than its resource table: lending is a field assignment, and the
/// guest receives borrow handles, valid only until the call returns.
#[derive(Default)]
pub struct LentViews {
    request: Option<Arc<RequestFacts>>,
    key: Option<Arc<LiveKey>>,
    usage: Option<UsageRecord>,
    candidates: Vec<Arc<ChannelFacts>>,
}

impl LentViews {
    /// Lends the request; the handle to pass.
    pub fn request(&mut self, req: &Arc<RequestFacts>) -> Resource<RequestView> {
        self.request = Some(req.clone());
        Resource::new_borrow(LENT)
    }

    /// Lends the key; the handle to pass.
    pub fn key(&mut self, key: &Arc<LiveKey>) -> Resource<KeyView> {
        self.key = Some(key.clone());
        Resource::new_borrow(LENT)
    }

    /// Lends the usage record; the handle to pass.
    pub fn usage(&mut self, record: UsageRecord) -> Resource<UsageView> {
        self.usage = Some(record);
        Resource::new_borrow(LENT)
    }

    /// Lends the facts of the channels offered to a plan, by position.
    pub fn candidates(&mut self, offers: &[Offer<'_>]) {
        self.candidates
            .extend(offers.iter().map(|offer| offer.facts.clone()));
    }

    /// Ends the call's loans, returning the usage record (with an editor's
    /// changes) if one was lent.
    pub fn take_back(&mut self) -> Option<UsageRecord> {
        self.request = None;
        self.key = None;
        self.candidates.clear();
        self.usage.take()
    }

    /// The lent key, for the host functions.
    ///
    /// # Errors
    /// When no key is lent (a handle used outside its call).
    pub fn lent_key(&self) -> wasmtime::Result<&LiveKey> {
        lent(self.key.as_deref(), "key")
    }

    fn lent_request(&self) -> wasmtime::Result<&RequestFacts> {
        lent(self.request.as_deref(), "request")
    }
}

/// The lent view, or the error a stale handle earns.
fn lent<V>(view: Option<V>, what: &str) -> wasmtime::Result<V> {
    view.ok_or_else(|| wasmtime::format_err!("no {what} is lent to this call"))
}

/// FNV-1a: the request seed (stable across runs and hosts, unlike `std`'s hasher).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn request<'a>(
    state: &'a HostState,
    _: &Resource<RequestView>,
) -> wasmtime::Result<&'a RequestFacts> {
    state.lent.lent_request()
}

fn key<'a>(state: &'a HostState, _: &Resource<KeyView>) -> wasmtime::Result<&'a LiveKey> {
    state.lent.lent_key()
}

/// A stored key status as the policy interface names it.
pub fn key_status(status: crate::store::KeyStatus) -> KeyStatus {
    match status {
        crate::store::KeyStatus::Active => KeyStatus::Active,
        crate::store::KeyStatus::Disabled => KeyStatus::Disabled,
        crate::store::KeyStatus::Revoked => KeyStatus::Revoked,
    }
}

fn usage<'a>(
    state: &'a mut HostState,
    _: &Resource<UsageView>,
) -> wasmtime::Result<&'a mut UsageRecord> {
    lent(state.lent.usage.as_mut(), "usage record")
}

/// Getters that read a view: `name: Type = |view| value;`.
macro_rules! getters {
    ($view:ty, $lookup:ident, $($name:ident: $ty:ty = |$v:ident| $value:expr;)*) => {
        $(fn $name(&mut self, r: Resource<$view>) -> wasmtime::Result<$ty> {
            let $v = $lookup(self, &r)?;
            Ok($value)
        })*
    };
}

/// Setters of the usage view's editable fields: `name: Type = field;`.
macro_rules! usage_setters {
    ($($name:ident: $ty:ty = $field:ident;)*) => {
        $(fn $name(&mut self, r: Resource<UsageView>, value: $ty) -> wasmtime::Result<()> {
            usage(self, &r)?.$field = value;
            Ok(())
        })*
    };
}

impl context::Host for HostState {}

impl context::HostRequest for HostState {
    getters!(RequestView, request,
        request_id: String = |v| v.request_id.clone();
        seed: u64 = |v| fnv1a(v.request_id.as_bytes());
        endpoint: String = |v| v.endpoint.into();
        model: String = |v| v.model.clone();
        stream: bool = |v| v.stream;
        client_ip: String = |v| v.client_ip.clone();
        protocol: String = |v| v.protocol.name().into();
        headers: Vec<Label> = |v| v
            .headers
            .iter()
            .map(|(name, value)| Label { name: name.as_str().into(), value: value.clone() })
            .collect();
    );
    fn header(
        &mut self,
        r: Resource<RequestView>,
        name: String,
    ) -> wasmtime::Result<Option<String>> {
        Ok(request(self, &r)?.header(&name).map(String::from))
    }
    fn drop(&mut self, _: Resource<RequestView>) -> wasmtime::Result<()> {
        // Views are only ever lent as borrow handles: nothing to free.
        Ok(())
    }
}

impl context::HostKey for HostState {
    getters!(KeyView, key,
        id: String = |v| v.record.id.clone();
        name: String = |v| v.record.name.clone();
        owner: String = |v| v.record.owner.clone();
        prefix: String = |v| v.record.prefix.clone();
        models: Vec<String> = |v| v.record.models.clone();
        networks: Vec<String> = |v| v.record.networks.clone();
    );
    fn standing(
        &mut self,
        r: Resource<KeyView>,
        req: Resource<RequestView>,
    ) -> wasmtime::Result<Standing> {
        let (live, req) = (key(self, &r)?, request(self, &req)?);
        let k = &live.record;
        Ok(Standing {
            status: key_status(k.status),
            expires_at_ms: k.expires_at_ms,
            expired: k
                .expires_at_ms
                .is_some_and(|at| crate::keys::now_ms() >= at),
            model_allowed: req.model.is_empty()
                || k.models.is_empty()
                || k.models.contains(&req.model),
            client_allowed: live.allows_client(&req.client_ip),
            quota_remaining: live.remaining(),
            rpm_limit: k.rpm_limit,
            tpm_limit: k.tpm_limit,
        })
    }
    fn counter_add(
        &mut self,
        _: Resource<KeyView>,
        name: String,
        delta: i64,
        window_ms: u32,
    ) -> wasmtime::Result<CounterState> {
        self.key_counter_add(&name, delta, window_ms)
    }
    fn drop(&mut self, _: Resource<KeyView>) -> wasmtime::Result<()> {
        // Views are only ever lent as borrow handles: nothing to free.
        Ok(())
    }
}

impl context::HostUsage for HostState {
    getters!(UsageView, usage,
        request_id: String = |v| v.request_id.clone();
        time_ms: u64 = |v| v.time_ms;
        key_id: String = |v| v.key_id.clone();
        key_prefix: String = |v| v.key_prefix.clone();
        endpoint: String = |v| v.endpoint.clone();
        model: String = |v| v.model.clone();
        upstream_model: String = |v| v.upstream_model.clone();
        channel_id: String = |v| v.channel_id.clone();
        status: u16 = |v| v.status;
        error_kind: Option<String> = |v| v.error_kind.clone();
        prompt_tokens: u32 = |v| v.prompt_tokens;
        completion_tokens: u32 = |v| v.completion_tokens;
        cost: i64 = |v| v.cost;
        latency_ms: u32 = |v| v.latency_ms;
        ttft_ms: Option<u32> = |v| v.ttft_ms;
        stream: bool = |v| v.stream;
        partial: bool = |v| v.partial;
        client_ip: String = |v| v.client_ip.clone();
        prompt: Option<String> = |v| v.prompt.clone();
        completion: Option<String> = |v| v.completion.clone();
        has_content: bool = |v| v.prompt.is_some() || v.completion.is_some();
        labels: Vec<Label> = |v| v
            .labels
            .iter()
            .map(|(name, value)| Label { name: name.clone(), value: value.clone() })
            .collect();
    );
    usage_setters!(
        set_key_prefix: String = key_prefix;
        set_upstream_model: String = upstream_model;
        set_error_kind: Option<String> = error_kind;
        set_client_ip: String = client_ip;
        set_prompt: Option<String> = prompt;
        set_completion: Option<String> = completion;
    );
    fn mentions(&mut self, r: Resource<UsageView>, needles: Vec<String>) -> wasmtime::Result<bool> {
        let u = usage(self, &r)?;
        let found = |text: &str| needles.iter().any(|n| text.contains(n.as_str()));
        Ok(u.labels.values().any(|v| found(v)) || u.error_kind.as_deref().is_some_and(found))
    }
    fn set_labels(&mut self, r: Resource<UsageView>, labels: Vec<Label>) -> wasmtime::Result<()> {
        usage(self, &r)?.labels = labels.into_iter().map(|l| (l.name, l.value)).collect();
        Ok(())
    }
    fn drop(&mut self, _: Resource<UsageView>) -> wasmtime::Result<()> {
        // Views are only ever lent as borrow handles: nothing to free.
        Ok(())
    }
}

impl HostState {
    /// The lent facts of the candidate at `position`.
    fn candidate(&self, position: u32) -> wasmtime::Result<&ChannelFacts> {
        let offered = &self.lent.candidates;
        usize::try_from(position)
            .ok()
            .and_then(|p| offered.get(p))
            .map(|facts| &**facts)
            .ok_or_else(|| {
                wasmtime::format_err!(
                    "no candidate at position {position} ({} offered to this call)",
                    offered.len()
                )
            })
    }
}

impl candidates::Host for HostState {
    fn provider(&mut self, position: u32) -> wasmtime::Result<String> {
        Ok(self.candidate(position)?.provider.clone())
    }
    fn tags(&mut self, position: u32) -> wasmtime::Result<Vec<String>> {
        Ok(self.candidate(position)?.tags.clone())
    }
    fn has_tag(&mut self, position: u32, tag: String) -> wasmtime::Result<bool> {
        Ok(self.candidate(position)?.tags.contains(&tag))
    }
    fn models(&mut self, position: u32) -> wasmtime::Result<Vec<String>> {
        Ok(self.candidate(position)?.models.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::host_state::PluginShared;
    use candidates::Host as _;

    #[test]
    fn candidates_are_read_by_position_only_during_a_plan() -> wasmtime::Result<()> {
        let mut state = HostState::new(
            PluginShared::new("test"),
            1 << 20,
            Arc::new(tokio::sync::Semaphore::new(1)),
        );
        let facts = Arc::new(ChannelFacts {
            provider: "anthropic".into(),
            tags: vec!["eu".into(), "blue".into()],
            models: vec!["claude".into()],
        });
        let offer = |id| Offer {
            id,
            facts: &facts,
            priority: 0,
            weight: 1,
            upstream_model: "claude",
            healthy: true,
            in_flight: 0,
            max_in_flight: 0,
            latency_ewma_ms: 0,
            error_permille: 0,
        };
        state.lent.candidates(&[offer("a"), offer("b")]);
        assert_eq!(state.provider(1)?, "anthropic");
        assert_eq!(state.tags(0)?, ["eu", "blue"]);
        assert!(state.has_tag(0, "blue".into())?);
        assert!(!state.has_tag(0, "red".into())?);
        assert_eq!(state.models(1)?, ["claude"]);
        let beyond = state.provider(2).err().map(|e| e.to_string());
        assert_eq!(
            beyond.as_deref(),
            Some("no candidate at position 2 (2 offered to this call)")
        );
        state.lent.take_back();
        assert!(state.tags(0).is_err(), "no candidates outside a plan");
        Ok(())
    }
}
