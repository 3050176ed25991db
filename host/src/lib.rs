//! Sluice: an OpenAI-compatible LLM API gateway whose auth, routing and
//! log-shaping policies are WebAssembly components.
//!
//! Modules follow the request's path: [`server`] accepts and dispatches,
//! [`relay`] talks to upstreams, [`keys`] resolves API keys, [`plugins`] runs
//! policies, [`usage`] accounts, [`store`] persists; [`admin`] and [`metrics`]
//! serve operators; [`mock`] is the fake upstream used by tests and the quick start.

pub mod admin;
pub mod app;
pub mod background;
pub mod cli;
pub mod config;
pub mod error;
pub mod keys;
pub mod metrics;
pub mod mock;
pub mod plugins;
pub mod relay;
pub mod server;
pub mod store;
pub mod usage;
