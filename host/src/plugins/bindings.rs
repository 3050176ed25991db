//! Generated host bindings for the six policy worlds, and nothing else. The
//! `types` and `host` interfaces are generated once (in `auth`), the `context`
//! interface of the 1.1 worlds once (in `authorizer`, with the host's own view
//! types as its resources); the other worlds share them.
#![allow(missing_docs)]

/// The `auth-policy` world (1.0: records).
pub mod auth {
    wasmtime::component::bindgen!({
        world: "auth-policy",
        path: "../wit",
        exports: { default: async },
    });
}

/// The `authorizer-policy` world (1.1: handles).
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

/// Generates the bindings of a world that reuses the shared interfaces: `types`
/// and `host`, plus `context` for the 1.1 worlds. Interfaces of its own (the
/// planner's `candidates`) are trappable: a bad argument traps the guest.
macro_rules! sharing_world {
    ($(#[$doc:meta])* $module:ident, $world:tt $(, $interface:tt => $path:path)*) => {
        $(#[$doc])*
        pub mod $module {
            wasmtime::component::bindgen!({
                world: $world,
                path: "../wit",
                exports: { default: async },
                imports: { default: trappable },
                with: {
                    "sluice:policy/types": super::auth::sluice::policy::types,
                    "sluice:policy/host": super::auth::sluice::policy::host,
                    $($interface: $path,)*
                },
            });
        }
    };
}

sharing_world!(
    /// The `router-policy` world (1.0: records).
    router, "router-policy"
);
sharing_world!(
    /// The `shaper-policy` world (1.0: records).
    shaper, "shaper-policy"
);
sharing_world!(
    /// The `planner-policy` world (1.1: handles; `candidates` since 1.2).
    planner, "planner-policy",
    "sluice:policy/context" => super::authorizer::sluice::policy::context
);
sharing_world!(
    /// The `editor-policy` world (1.1: handles).
    editor, "editor-policy",
    "sluice:policy/context" => super::authorizer::sluice::policy::context
);

pub use auth::sluice::policy::host;
pub use auth::sluice::policy::types;
pub use authorizer::sluice::policy::context;
pub use planner::sluice::policy::candidates;
