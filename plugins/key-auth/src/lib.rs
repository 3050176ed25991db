//! Sluice's default auth policy: key status, expiry, allowed models, allowed client
//! networks, remaining quota, and RPM/TPM limits kept in the host's windowed counters.
//!
//! Config (all optional): `{"rpm_window_ms": 60000}`.

use std::cell::Cell;

use sluice_policy_sdk::auth::exports::sluice::policy::auth::{Decision, Guest as Auth};
use sluice_policy_sdk::auth::exports::sluice::policy::lifecycle::Guest as Lifecycle;
use sluice_policy_sdk::auth::sluice::policy::host;
use sluice_policy_sdk::auth::sluice::policy::types::{Denial, KeyInfo, KeyStatus, RequestInfo};
use sluice_policy_sdk::denial::{self, retry_after_secs};
use sluice_policy_sdk::net::cidr_contains;

/// Length of the RPM and TPM windows unless configured.
const DEFAULT_WINDOW_MS: u32 = 60_000;

thread_local! {
    static WINDOW_MS: Cell<u32> = const { Cell::new(DEFAULT_WINDOW_MS) };
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    rpm_window_ms: Option<u32>,
}

struct KeyAuth;

impl Lifecycle for KeyAuth {
    fn init(config: String) -> Result<(), String> {
        let config: Config =
            serde_json::from_str(&config).map_err(|e| format!("invalid key-auth config: {e}"))?;
        if let Some(ms) = config.rpm_window_ms {
            if ms == 0 {
                return Err("rpm_window_ms must be positive".into());
            }
            WINDOW_MS.with(|w| w.set(ms));
        }
        Ok(())
    }
}

impl Auth for KeyAuth {
    fn authorize(req: RequestInfo, key: Option<KeyInfo>) -> Decision {
        match check(&req, key.as_ref()) {
            Ok(()) => Decision::Allow(Vec::new()),
            Err(denial) => Decision::Deny(denial),
        }
    }
}

fn deny(status: u16, code: &str, message: String) -> Denial {
    Denial {
        status,
        code: code.into(),
        message,
        retry_after_s: None,
    }
}

fn check(req: &RequestInfo, key: Option<&KeyInfo>) -> Result<(), Denial> {
    let (unauthorized, invalid) = denial::INVALID_API_KEY;
    let Some(key) = key else {
        return Err(deny(
            unauthorized,
            invalid,
            "Incorrect API key provided.".into(),
        ));
    };
    match key.status {
        KeyStatus::Active => {}
        KeyStatus::Disabled => {
            return Err(deny(
                unauthorized,
                "key_disabled",
                format!("API key {} is disabled.", key.prefix),
            ));
        }
        KeyStatus::Revoked => {
            return Err(deny(
                unauthorized,
                "key_revoked",
                format!("API key {} has been revoked.", key.prefix),
            ));
        }
    }
    if key.expires_at_ms.is_some_and(|at| host::now_ms() >= at) {
        return Err(deny(
            unauthorized,
            "key_expired",
            format!("API key {} has expired.", key.prefix),
        ));
    }
    if !req.model.is_empty()
        && !key.models.is_empty()
        && !key.models.iter().any(|m| m == &req.model)
    {
        return Err(deny(
            denial::PERMISSION_DENIED,
            "model_not_allowed",
            format!("API key {} may not use model '{}'.", key.prefix, req.model),
        ));
    }
    if !key.networks.is_empty()
        && !key
            .networks
            .iter()
            .any(|n| cidr_contains(n, &req.client_ip))
    {
        return Err(deny(
            denial::PERMISSION_DENIED,
            "ip_not_allowed",
            format!(
                "API key {} may not be used from {}.",
                key.prefix, req.client_ip
            ),
        ));
    }
    if key.quota_remaining.is_some_and(|q| q <= 0) {
        let (status, code) = denial::INSUFFICIENT_QUOTA;
        return Err(deny(
            status,
            code,
            "You exceeded your current quota.".into(),
        ));
    }
    let window = WINDOW_MS.with(Cell::get);
    if let Some(limit) = key.tpm_limit {
        let tokens = host::counter_add(&format!("tpm:{}", key.id), 0, window);
        if tokens.total >= i64::from(limit) {
            return Err(rate_limited(
                format!("Rate limit reached: {limit} tokens per minute."),
                tokens.resets_in_ms,
            ));
        }
    }
    if let Some(limit) = key.rpm_limit {
        let requests = host::counter_add(&format!("rpm:{}", key.id), 1, window);
        if requests.total > i64::from(limit) {
            return Err(rate_limited(
                format!("Rate limit reached: {limit} requests per minute."),
                requests.resets_in_ms,
            ));
        }
    }
    Ok(())
}

fn rate_limited(message: String, resets_in_ms: u32) -> Denial {
    let (status, code) = denial::RATE_LIMITED;
    Denial {
        status,
        code: code.into(),
        message,
        retry_after_s: Some(retry_after_secs(resets_in_ms)),
    }
}

sluice_policy_sdk::auth::export_auth!(KeyAuth);
