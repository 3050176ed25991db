//! Rust guest SDK for Sluice policy plugins.
//!
//! **The policy API** ([`api`]): write a policy against plain Rust types and
//! traits — [`api::Authorizer`], [`api::Planner`] or [`api::Editor`] over
//! [`api::Request`], [`api::Key`], [`api::Usage`] and [`api::Candidate`], with
//! the host's services in [`host`] — and export it with
//! [`export_policy!`]`(authorizer: MyPolicy)` (the SDK feature of the same
//! name enabled). The same code then runs natively under `cargo test` with
//! the `testing` feature, whose [`testing`] module builds requests, keys,
//! records and candidates and keeps the host's state in memory per test.
//!
//! ```ignore
//! use sluice_policy_sdk::api::{Authorizer, Key, Request, Verdict};
//! struct MyPolicy;
//! impl Authorizer for MyPolicy {
//!     fn authorize(req: &dyn Request, key: Option<&dyn Key>) -> Verdict { Verdict::Allow(vec![]) }
//! }
//! sluice_policy_sdk::export_policy!(authorizer: MyPolicy);
//! ```
//!
//! **The generated bindings**, for full control: enable the feature of the
//! world you implement, implement the generated `Guest` traits, and register
//! your type. The 1.1 worlds (`authorizer`,
//! `planner`, `editor`) pass handles to the host's views of the request, key and
//! usage record, so a policy pays only for the fields it reads: prefer them. The
//! 1.0 worlds (`auth`, `router`, `shaper`) pass whole records and stay supported.
//! 1.2 added functions, not worlds: `request.protocol()` and, for planners, the
//! `candidates` interface (a candidate's provider, tags and models by position).
//!
//! ```ignore
//! use sluice_policy_sdk::authorizer::exports::sluice::policy::{authorizer, lifecycle};
//! struct MyPolicy;
//! impl lifecycle::Guest for MyPolicy { fn init(_config: String) -> Result<(), String> { Ok(()) } }
//! impl authorizer::Guest for MyPolicy { /* authorize */ }
//! sluice_policy_sdk::authorizer::export_authorizer!(MyPolicy);
//! ```
//!
//! Besides the bindings, the SDK carries small helpers every policy needs
//! ([`net::cidr_contains`], [`denial`]).

extern crate self as sluice_policy_sdk;

pub use wit_bindgen;

pub mod api;
#[doc(hidden)]
pub mod glue;
pub mod host;
#[cfg(feature = "testing")]
pub mod testing;

/// Bindings for the `auth-policy` world.
#[cfg(feature = "auth")]
pub mod auth {
    wit_bindgen::generate!({
        world: "auth-policy",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "export_auth",
        default_bindings_module: "sluice_policy_sdk::auth",
        runtime_path: "sluice_policy_sdk::wit_bindgen::rt",
    });
}

/// Bindings for the `router-policy` world.
#[cfg(feature = "router")]
pub mod router {
    wit_bindgen::generate!({
        world: "router-policy",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "export_router",
        default_bindings_module: "sluice_policy_sdk::router",
        runtime_path: "sluice_policy_sdk::wit_bindgen::rt",
    });
}

/// Bindings for the `shaper-policy` world.
#[cfg(feature = "shaper")]
pub mod shaper {
    wit_bindgen::generate!({
        world: "shaper-policy",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "export_shaper",
        default_bindings_module: "sluice_policy_sdk::shaper",
        runtime_path: "sluice_policy_sdk::wit_bindgen::rt",
    });
}

/// Bindings for the `authorizer-policy` world (1.1: handles).
#[cfg(feature = "authorizer")]
pub mod authorizer {
    wit_bindgen::generate!({
        world: "authorizer-policy",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "export_authorizer",
        default_bindings_module: "sluice_policy_sdk::authorizer",
        runtime_path: "sluice_policy_sdk::wit_bindgen::rt",
    });
}

/// Bindings for the `planner-policy` world (1.1: handles; since 1.2 also the
/// `candidates` interface: a candidate's provider, tags and models).
#[cfg(feature = "planner")]
pub mod planner {
    wit_bindgen::generate!({
        world: "planner-policy",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "export_planner",
        default_bindings_module: "sluice_policy_sdk::planner",
        runtime_path: "sluice_policy_sdk::wit_bindgen::rt",
    });
}

/// Bindings for the `editor-policy` world (1.1: handles).
#[cfg(feature = "editor")]
pub mod editor {
    wit_bindgen::generate!({
        world: "editor-policy",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "export_editor",
        default_bindings_module: "sluice_policy_sdk::editor",
        runtime_path: "sluice_policy_sdk::wit_bindgen::rt",
    });
}

/// Client-network matching.
pub mod net {
    use std::net::IpAddr;

    /// True when `ip` lies inside `cidr` (`10.0.0.0/8`, `::1/128`, or a bare address).
    /// Malformed input never matches.
    pub fn cidr_contains(cidr: &str, ip: &str) -> bool {
        let Ok(ip) = ip.parse::<IpAddr>() else {
            return false;
        };
        let (net, bits) = match cidr.split_once('/') {
            Some((net, bits)) => (net, bits.parse::<u32>().ok()),
            None => (cidr, None),
        };
        let Ok(net) = net.parse::<IpAddr>() else {
            return false;
        };
        match (net, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => {
                prefix_eq(u32::from(n).into(), u32::from(i).into(), 32, bits)
            }
            (IpAddr::V6(n), IpAddr::V6(i)) => prefix_eq(u128::from(n), u128::from(i), 128, bits),
            (IpAddr::V6(n), IpAddr::V4(i)) => {
                n.to_ipv4_mapped().is_some_and(|n| n == i && bits.is_none())
            }
            (IpAddr::V4(n), IpAddr::V6(i)) => i
                .to_ipv4_mapped()
                .is_some_and(|i| prefix_eq(u32::from(n).into(), u32::from(i).into(), 32, bits)),
        }
    }

    fn prefix_eq(net: u128, ip: u128, width: u32, bits: Option<u32>) -> bool {
        let bits = bits.unwrap_or(width);
        if bits > width {
            return false;
        }
        let shift = width - bits;
        shift >= width || (net >> shift) == (ip >> shift)
    }

    #[cfg(test)]
    mod tests {
        use super::cidr_contains;

        #[test]
        fn matches_prefixes() {
            assert!(cidr_contains("10.0.0.0/8", "10.2.3.4"));
            assert!(!cidr_contains("10.0.0.0/8", "11.2.3.4"));
            assert!(cidr_contains("127.0.0.1", "127.0.0.1"));
            assert!(cidr_contains("0.0.0.0/0", "8.8.8.8"));
            assert!(cidr_contains("::1/128", "::1"));
            assert!(!cidr_contains("10.0.0.0/33", "10.0.0.1"));
            assert!(!cidr_contains("garbage", "10.0.0.1"));
        }
    }
}

/// Status codes and OpenAI error codes the default policies use, so plugins agree
/// with the gateway's own errors.
pub mod denial {
    /// 401: the credentials match no usable key.
    pub const INVALID_API_KEY: (u16, &str) = (401, "invalid_api_key");
    /// 403: the key may not use this model or may not be used from this network.
    pub const PERMISSION_DENIED: u16 = 403;
    /// 429: the key's quota is spent.
    pub const INSUFFICIENT_QUOTA: (u16, &str) = (429, "insufficient_quota");
    /// 429: a rate limit was hit; send `retry-after`.
    pub const RATE_LIMITED: (u16, &str) = (429, "rate_limit_exceeded");

    /// Whole seconds, rounded up and at least 1, for a `retry-after` header.
    pub fn retry_after_secs(resets_in_ms: u32) -> u32 {
        resets_in_ms.div_ceil(1000).max(1)
    }
}
