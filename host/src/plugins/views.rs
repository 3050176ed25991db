//! The host side of the 1.1 `context` interface: the request, key and usage
//! record a policy reads through handles instead of receiving them as records.
//! A call puts its views in the store's resource table, lends them to the guest
//! and takes them back afterwards (the usage view with the editor's changes).
//! Accounting fields of the usage record have no setters, so an editor cannot
//! touch them.

use std::net::IpAddr;
use std::sync::Arc;

use wasmtime::component::{Resource, ResourceTable};

use super::bindings::context::{self, Standing};
use super::bindings::host::CounterState;
use super::bindings::types::{KeyInfo, Label, RequestInfo};
use super::host_state::HostState;
use crate::store::UsageRecord;

/// The request being decided.
pub struct RequestView(pub Arc<RequestInfo>);

/// The key the request's credentials resolved to.
pub struct KeyView(pub Arc<KeyInfo>);

/// The usage record being edited.
pub struct UsageView(pub UsageRecord);

/// Lends `value` to the guest for one call.
pub fn lend<T: Send + 'static>(
    table: &mut ResourceTable,
    value: T,
) -> wasmtime::Result<Resource<T>> {
    Ok(table.push(value)?)
}

/// Takes a lent value back after the call.
pub fn take_back<T: 'static>(table: &mut ResourceTable, lent: Resource<T>) -> wasmtime::Result<T> {
    Ok(table.delete(lent)?)
}

/// True when `ip` lies in one of `networks` (CIDR or bare addresses); an empty
/// list allows every address, malformed entries match nothing.
pub fn networks_allow(networks: &[String], ip: &str) -> bool {
    if networks.is_empty() {
        return true;
    }
    let Ok(ip) = ip.parse::<IpAddr>().map(|ip| ip.to_canonical()) else {
        return false;
    };
    networks.iter().any(|n| match n.parse::<ipnet::IpNet>() {
        Ok(net) => net.contains(&ip),
        Err(_) => n.parse::<IpAddr>().is_ok_and(|a| a.to_canonical() == ip),
    })
}

/// FNV-1a: the request seed (stable across runs and hosts, unlike `std`'s hasher).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn request(state: &mut HostState, r: &Resource<RequestView>) -> wasmtime::Result<Arc<RequestInfo>> {
    Ok(state.table().get(r)?.0.clone())
}

fn key(state: &mut HostState, r: &Resource<KeyView>) -> wasmtime::Result<Arc<KeyInfo>> {
    Ok(state.table().get(r)?.0.clone())
}

fn usage<'a>(
    state: &'a mut HostState,
    r: &Resource<UsageView>,
) -> wasmtime::Result<&'a mut UsageRecord> {
    Ok(&mut state.table().get_mut(r)?.0)
}

impl context::Host for HostState {}

impl context::HostRequest for HostState {
    fn request_id(&mut self, r: Resource<RequestView>) -> wasmtime::Result<String> {
        Ok(request(self, &r)?.request_id.clone())
    }
    fn seed(&mut self, r: Resource<RequestView>) -> wasmtime::Result<u64> {
        Ok(fnv1a(request(self, &r)?.request_id.as_bytes()))
    }
    fn endpoint(&mut self, r: Resource<RequestView>) -> wasmtime::Result<String> {
        Ok(request(self, &r)?.endpoint.clone())
    }
    fn model(&mut self, r: Resource<RequestView>) -> wasmtime::Result<String> {
        Ok(request(self, &r)?.model.clone())
    }
    fn stream(&mut self, r: Resource<RequestView>) -> wasmtime::Result<bool> {
        Ok(request(self, &r)?.stream)
    }
    fn client_ip(&mut self, r: Resource<RequestView>) -> wasmtime::Result<String> {
        Ok(request(self, &r)?.client_ip.clone())
    }
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
    fn headers(&mut self, r: Resource<RequestView>) -> wasmtime::Result<Vec<Label>> {
        Ok(request(self, &r)?.headers.clone())
    }
    fn drop(&mut self, r: Resource<RequestView>) -> wasmtime::Result<()> {
        take_back(self.table(), r).map(|_| ())
    }
}

impl context::HostKey for HostState {
    fn id(&mut self, r: Resource<KeyView>) -> wasmtime::Result<String> {
        Ok(key(self, &r)?.id.clone())
    }
    fn name(&mut self, r: Resource<KeyView>) -> wasmtime::Result<String> {
        Ok(key(self, &r)?.name.clone())
    }
    fn owner(&mut self, r: Resource<KeyView>) -> wasmtime::Result<String> {
        Ok(key(self, &r)?.owner.clone())
    }
    fn prefix(&mut self, r: Resource<KeyView>) -> wasmtime::Result<String> {
        Ok(key(self, &r)?.prefix.clone())
    }
    fn standing(
        &mut self,
        r: Resource<KeyView>,
        req: Resource<RequestView>,
    ) -> wasmtime::Result<Standing> {
        let (k, req) = (key(self, &r)?, request(self, &req)?);
        Ok(Standing {
            status: k.status,
            expires_at_ms: k.expires_at_ms,
            expired: k
                .expires_at_ms
                .is_some_and(|at| crate::keys::now_ms() >= at),
            model_allowed: req.model.is_empty()
                || k.models.is_empty()
                || k.models.contains(&req.model),
            client_allowed: networks_allow(&k.networks, &req.client_ip),
            quota_remaining: k.quota_remaining,
            rpm_limit: k.rpm_limit,
            tpm_limit: k.tpm_limit,
        })
    }
    fn models(&mut self, r: Resource<KeyView>) -> wasmtime::Result<Vec<String>> {
        Ok(key(self, &r)?.models.clone())
    }
    fn networks(&mut self, r: Resource<KeyView>) -> wasmtime::Result<Vec<String>> {
        Ok(key(self, &r)?.networks.clone())
    }
    fn counter_add(
        &mut self,
        r: Resource<KeyView>,
        name: String,
        delta: i64,
        window_ms: u32,
    ) -> wasmtime::Result<CounterState> {
        let id = key(self, &r)?;
        let counter = format!("{name}:{}", id.id);
        Ok(self.shared.counter_add(&counter, delta, window_ms))
    }
    fn drop(&mut self, r: Resource<KeyView>) -> wasmtime::Result<()> {
        take_back(self.table(), r).map(|_| ())
    }
}

impl context::HostUsage for HostState {
    fn request_id(&mut self, r: Resource<UsageView>) -> wasmtime::Result<String> {
        Ok(usage(self, &r)?.request_id.clone())
    }
    fn time_ms(&mut self, r: Resource<UsageView>) -> wasmtime::Result<u64> {
        Ok(usage(self, &r)?.time_ms)
    }
    fn key_id(&mut self, r: Resource<UsageView>) -> wasmtime::Result<String> {
        Ok(usage(self, &r)?.key_id.clone())
    }
    fn key_prefix(&mut self, r: Resource<UsageView>) -> wasmtime::Result<String> {
        Ok(usage(self, &r)?.key_prefix.clone())
    }
    fn endpoint(&mut self, r: Resource<UsageView>) -> wasmtime::Result<String> {
        Ok(usage(self, &r)?.endpoint.clone())
    }
    fn model(&mut self, r: Resource<UsageView>) -> wasmtime::Result<String> {
        Ok(usage(self, &r)?.model.clone())
    }
    fn upstream_model(&mut self, r: Resource<UsageView>) -> wasmtime::Result<String> {
        Ok(usage(self, &r)?.upstream_model.clone())
    }
    fn channel_id(&mut self, r: Resource<UsageView>) -> wasmtime::Result<String> {
        Ok(usage(self, &r)?.channel_id.clone())
    }
    fn status(&mut self, r: Resource<UsageView>) -> wasmtime::Result<u16> {
        Ok(usage(self, &r)?.status)
    }
    fn error_kind(&mut self, r: Resource<UsageView>) -> wasmtime::Result<Option<String>> {
        Ok(usage(self, &r)?.error_kind.clone())
    }
    fn prompt_tokens(&mut self, r: Resource<UsageView>) -> wasmtime::Result<u32> {
        Ok(usage(self, &r)?.prompt_tokens)
    }
    fn completion_tokens(&mut self, r: Resource<UsageView>) -> wasmtime::Result<u32> {
        Ok(usage(self, &r)?.completion_tokens)
    }
    fn cost(&mut self, r: Resource<UsageView>) -> wasmtime::Result<i64> {
        Ok(usage(self, &r)?.cost)
    }
    fn latency_ms(&mut self, r: Resource<UsageView>) -> wasmtime::Result<u32> {
        Ok(usage(self, &r)?.latency_ms)
    }
    fn ttft_ms(&mut self, r: Resource<UsageView>) -> wasmtime::Result<Option<u32>> {
        Ok(usage(self, &r)?.ttft_ms)
    }
    fn stream(&mut self, r: Resource<UsageView>) -> wasmtime::Result<bool> {
        Ok(usage(self, &r)?.stream)
    }
    fn partial(&mut self, r: Resource<UsageView>) -> wasmtime::Result<bool> {
        Ok(usage(self, &r)?.partial)
    }
    fn client_ip(&mut self, r: Resource<UsageView>) -> wasmtime::Result<String> {
        Ok(usage(self, &r)?.client_ip.clone())
    }
    fn labels(&mut self, r: Resource<UsageView>) -> wasmtime::Result<Vec<Label>> {
        Ok(usage(self, &r)?
            .labels
            .iter()
            .map(|(name, value)| Label {
                name: name.clone(),
                value: value.clone(),
            })
            .collect())
    }
    fn has_content(&mut self, r: Resource<UsageView>) -> wasmtime::Result<bool> {
        let u = usage(self, &r)?;
        Ok(u.prompt.is_some() || u.completion.is_some())
    }
    fn mentions(&mut self, r: Resource<UsageView>, needles: Vec<String>) -> wasmtime::Result<bool> {
        let u = usage(self, &r)?;
        let found = |text: &str| needles.iter().any(|n| text.contains(n.as_str()));
        Ok(u.labels.values().any(|v| found(v)) || u.error_kind.as_deref().is_some_and(found))
    }
    fn prompt(&mut self, r: Resource<UsageView>) -> wasmtime::Result<Option<String>> {
        Ok(usage(self, &r)?.prompt.clone())
    }
    fn completion(&mut self, r: Resource<UsageView>) -> wasmtime::Result<Option<String>> {
        Ok(usage(self, &r)?.completion.clone())
    }
    fn set_key_prefix(&mut self, r: Resource<UsageView>, value: String) -> wasmtime::Result<()> {
        usage(self, &r)?.key_prefix = value;
        Ok(())
    }
    fn set_upstream_model(
        &mut self,
        r: Resource<UsageView>,
        value: String,
    ) -> wasmtime::Result<()> {
        usage(self, &r)?.upstream_model = value;
        Ok(())
    }
    fn set_error_kind(
        &mut self,
        r: Resource<UsageView>,
        value: Option<String>,
    ) -> wasmtime::Result<()> {
        usage(self, &r)?.error_kind = value;
        Ok(())
    }
    fn set_client_ip(&mut self, r: Resource<UsageView>, value: String) -> wasmtime::Result<()> {
        usage(self, &r)?.client_ip = value;
        Ok(())
    }
    fn set_labels(&mut self, r: Resource<UsageView>, labels: Vec<Label>) -> wasmtime::Result<()> {
        usage(self, &r)?.labels = labels.into_iter().map(|l| (l.name, l.value)).collect();
        Ok(())
    }
    fn set_prompt(
        &mut self,
        r: Resource<UsageView>,
        value: Option<String>,
    ) -> wasmtime::Result<()> {
        usage(self, &r)?.prompt = value;
        Ok(())
    }
    fn set_completion(
        &mut self,
        r: Resource<UsageView>,
        value: Option<String>,
    ) -> wasmtime::Result<()> {
        usage(self, &r)?.completion = value;
        Ok(())
    }
    fn drop(&mut self, r: Resource<UsageView>) -> wasmtime::Result<()> {
        take_back(self.table(), r).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::networks_allow;

    #[test]
    fn networks_match_cidrs_bare_addresses_and_mapped_ipv4() {
        let nets = |n: &[&str]| n.iter().map(|s| (*s).to_string()).collect::<Vec<_>>();
        assert!(networks_allow(&[], "203.0.113.9"));
        assert!(networks_allow(&nets(&["10.0.0.0/8"]), "10.2.3.4"));
        assert!(!networks_allow(&nets(&["10.0.0.0/8"]), "11.2.3.4"));
        assert!(networks_allow(&nets(&["127.0.0.1"]), "127.0.0.1"));
        assert!(networks_allow(&nets(&["10.0.0.0/8"]), "::ffff:10.0.0.1"));
        assert!(networks_allow(&nets(&["::1/128"]), "::1"));
        assert!(!networks_allow(&nets(&["garbage"]), "10.0.0.1"));
        assert!(!networks_allow(&nets(&["10.0.0.0/8"]), "not an ip"));
    }
}
