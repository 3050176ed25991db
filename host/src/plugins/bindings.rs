//! Generated host bindings for the three policy worlds, and nothing else. The
//! `types` and `host` interfaces are generated once (in `auth`) and shared.
#![allow(missing_docs)]

/// The `auth-policy` world.
pub mod auth {
    wasmtime::component::bindgen!({
        world: "auth-policy",
        path: "../wit",
        exports: { default: async },
    });
}

/// The `router-policy` world.
pub mod router {
    wasmtime::component::bindgen!({
        world: "router-policy",
        path: "../wit",
        exports: { default: async },
        with: {
            "sluice:policy/types": super::auth::sluice::policy::types,
            "sluice:policy/host": super::auth::sluice::policy::host,
        },
    });
}

/// The `shaper-policy` world.
pub mod shaper {
    wasmtime::component::bindgen!({
        world: "shaper-policy",
        path: "../wit",
        exports: { default: async },
        with: {
            "sluice:policy/types": super::auth::sluice::policy::types,
            "sluice:policy/host": super::auth::sluice::policy::host,
        },
    });
}

pub use auth::sluice::policy::host;
pub use auth::sluice::policy::types;
