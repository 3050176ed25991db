//! Sluice's default auth policy: key status, expiry, allowed models, allowed client
//! networks, remaining quota, and RPM/TPM limits kept in the host's windowed counters.
//!
//! Config (all optional): `{"rpm_window_ms": 60000}`.

use std::cell::Cell;

use sluice_policy_sdk::authorizer::exports::sluice::policy::authorizer::{Guest as Auth, Verdict};
use sluice_policy_sdk::authorizer::exports::sluice::policy::lifecycle::Guest as Lifecycle;
use sluice_policy_sdk::authorizer::sluice::policy::context::{Key, Request};
use sluice_policy_sdk::authorizer::sluice::policy::types::{Denial, KeyStatus};
use sluice_policy_sdk::denial::{self, retry_after_secs};

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
    fn authorize(req: &Request, key: Option<&Key>) -> Verdict {
        match check(req, key) {
            Ok(()) => Verdict::Allow(Vec::new()),
            Err(denial) => Verdict::Deny(denial),
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

/// One host call answers status, expiry, model and network; the counters are
/// the only other calls, and strings are fetched only to word a denial.
fn check(req: &Request, key: Option<&Key>) -> Result<(), Denial> {
    let (unauthorized, invalid) = denial::INVALID_API_KEY;
    let Some(key) = key else {
        return Err(deny(
            unauthorized,
            invalid,
            "Incorrect API key provided.".into(),
        ));
    };
    let standing = key.standing(req);
    match standing.status {
        KeyStatus::Active => {}
        KeyStatus::Disabled => {
            return Err(deny(
                unauthorized,
                "key_disabled",
                format!("API key {} is disabled.", key.prefix()),
            ));
        }
        KeyStatus::Revoked => {
            return Err(deny(
                unauthorized,
                "key_revoked",
                format!("API key {} has been revoked.", key.prefix()),
            ));
        }
    }
    if standing.expired {
        return Err(deny(
            unauthorized,
            "key_expired",
            format!("API key {} has expired.", key.prefix()),
        ));
    }
    if !standing.model_allowed {
        return Err(deny(
            denial::PERMISSION_DENIED,
            "model_not_allowed",
            format!(
                "API key {} may not use model '{}'.",
                key.prefix(),
                req.model()
            ),
        ));
    }
    if !standing.client_allowed {
        return Err(deny(
            denial::PERMISSION_DENIED,
            "ip_not_allowed",
            format!(
                "API key {} may not be used from {}.",
                key.prefix(),
                req.client_ip()
            ),
        ));
    }
    if standing.quota_remaining.is_some_and(|q| q <= 0) {
        let (status, code) = denial::INSUFFICIENT_QUOTA;
        return Err(deny(
            status,
            code,
            "You exceeded your current quota.".into(),
        ));
    }
    let window = WINDOW_MS.with(Cell::get);
    if let Some(limit) = standing.tpm_limit {
        let tokens = key.counter_add("tpm", 0, window);
        if tokens.total >= i64::from(limit) {
            return Err(rate_limited(
                format!("Rate limit reached: {limit} tokens per minute."),
                tokens.resets_in_ms,
            ));
        }
    }
    if let Some(limit) = standing.rpm_limit {
        let requests = key.counter_add("rpm", 1, window);
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

sluice_policy_sdk::authorizer::export_authorizer!(KeyAuth);
