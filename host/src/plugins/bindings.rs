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

/// The `authorizer-policy` world (1.1: handles). Generates the `context`
/// interface, whose resources are the host's own view types.
pub mod authorizer {
    wasmtime::component::bindgen!({
        world: "authorizer-policy",
        path: "../wit",
        exports: { default: async },
        imports: { default: trappable },
        with: {
            "sluice:policy/types": super::auth::sluice::policy::types,
            "sluice:policy/host": super::auth::sluice::policy::host,
            "sluice:policy/context.request": crate::plugins::views::RequestView,
            "sluice:policy/context.key": crate::plugins::views::KeyView,
            "sluice:policy/context.usage": crate::plugins::views::UsageView,
        },
    });
}

/// The `planner-policy` world (1.1: handles).
pub mod planner {
    wasmtime::component::bindgen!({
        world: "planner-policy",
        path: "../wit",
        exports: { default: async },
        with: {
            "sluice:policy/types": super::auth::sluice::policy::types,
            "sluice:policy/host": super::auth::sluice::policy::host,
            "sluice:policy/context": super::authorizer::sluice::policy::context,
        },
    });
}

/// The `editor-policy` world (1.1: handles).
pub mod editor {
    wasmtime::component::bindgen!({
        world: "editor-policy",
        path: "../wit",
        exports: { default: async },
        with: {
            "sluice:policy/types": super::auth::sluice::policy::types,
            "sluice:policy/host": super::auth::sluice::policy::host,
            "sluice:policy/context": super::authorizer::sluice::policy::context,
        },
    });
}

pub use authorizer::sluice::policy::context;
