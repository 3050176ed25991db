//! The host side of the 1.1 `context` interface: the request, key and usage
//! record a policy reads through handles instead of receiving them as records.
//! A call puts its views in the store's resource table, lends them to the guest
//! and takes them back afterwards (the usage view with the editor's changes).
//! Accounting fields of the usage record have no setters, so an editor cannot
//! touch them.

use std::marker::PhantomData;
use std::sync::Arc;

use wasmtime::component::{Resource, ResourceTable};

use super::bindings::context::{self, Standing};
use super::bindings::host::CounterState;
use super::bindings::types::{KeyStatus, Label, RequestInfo};
use super::host_state::HostState;
use crate::keys::LiveKey;
use crate::store::UsageRecord;

/// The request being decided.
pub struct RequestView(pub Arc<RequestInfo>);

/// The key the request's credentials resolved to, with its live quota.
pub struct KeyView(pub Arc<LiveKey>);

/// The usage record being edited.
pub struct UsageView(pub UsageRecord);

/// A view lent to the guest for one call: it sits in the store's resource
/// table, the guest gets a borrow handle to it, and the host takes it back
/// when the call returns.
pub struct Lent<T> {
    rep: u32,
    view: PhantomData<fn() -> T>,
}

/// Puts `value` in the table to lend it for one call.
///
/// # Errors
/// When the table is full.
pub fn lend<T: Send + 'static>(table: &mut ResourceTable, value: T) -> wasmtime::Result<Lent<T>> {
    Ok(Lent {
        rep: table.push(value)?.rep(),
        view: PhantomData,
    })
}

impl<T: 'static> Lent<T> {
    /// The handle passed to the guest. A borrow handle is lowered as it is; an
    /// owned one would first be moved through wasmtime's host handle table.
    pub fn handle(&self) -> Resource<T> {
        Resource::new_borrow(self.rep)
    }

    /// Takes the view back after the call.
    ///
    /// # Errors
    /// When the view is no longer in the table (a host bug).
    pub fn take_back(self, table: &mut ResourceTable) -> wasmtime::Result<T> {
        Ok(table.delete(Resource::<T>::new_own(self.rep))?)
    }
}

/// FNV-1a: the request seed (stable across runs and hosts, unlike `std`'s hasher).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn request<'a>(
    state: &'a mut HostState,
    r: &Resource<RequestView>,
) -> wasmtime::Result<&'a RequestInfo> {
    Ok(&state.table().get(r)?.0)
}

fn key<'a>(state: &'a mut HostState, r: &Resource<KeyView>) -> wasmtime::Result<&'a LiveKey> {
    Ok(&state.table().get(r)?.0)
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
    r: &Resource<UsageView>,
) -> wasmtime::Result<&'a mut UsageRecord> {
    Ok(&mut state.table().get_mut(r)?.0)
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
        endpoint: String = |v| v.endpoint.clone();
        model: String = |v| v.model.clone();
        stream: bool = |v| v.stream;
        client_ip: String = |v| v.client_ip.clone();
        headers: Vec<Label> = |v| v.headers.clone();
    );
    fn header(
        &mut self,
        r: Resource<RequestView>,
        name: String,
    ) -> wasmtime::Result<Option<String>> {
        let req = request(self, &r)?;
        Ok(req
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(&name))
            .map(|h| h.value.clone()))
    }
    fn drop(&mut self, r: Resource<RequestView>) -> wasmtime::Result<()> {
        self.table().delete(r).map(|_| ()).map_err(Into::into)
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
        let table = &*self.table();
        let (live, req) = (&table.get(&r)?.0, &table.get(&req)?.0);
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
        r: Resource<KeyView>,
        name: String,
        delta: i64,
        window_ms: u32,
    ) -> wasmtime::Result<CounterState> {
        self.key_counter_add(&r, &name, delta, window_ms)
    }
    fn drop(&mut self, r: Resource<KeyView>) -> wasmtime::Result<()> {
        self.table().delete(r).map(|_| ()).map_err(Into::into)
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
    fn drop(&mut self, r: Resource<UsageView>) -> wasmtime::Result<()> {
        self.table().delete(r).map(|_| ()).map_err(Into::into)
    }
}
