//! Sluice: an OpenAI-compatible LLM API gateway whose auth, routing and
//! log-shaping policies are WebAssembly components.
//!
//! Modules follow the request's path: [`server`] accepts, builds the request's
//! [`context`] at the door ([`endpoint`], [`facts`]) and dispatches; [`keys`]
//! resolves API keys; [`accounting`] owns each admitted request's settlement;
//! [`plugins`] runs policies; [`relay`] talks to upstreams; [`store`]
//! persists. [`state`] holds the shared parts, which [`app`] builds and runs;
//! [`admin`] and [`metrics`] serve operators. The fake upstream that tests and
//! the quick start use is its own crate, `sluice-mock`.

pub mod accounting;
pub mod admin;
pub mod app;
pub mod background;
pub mod cli;
pub mod config;
pub mod context;
pub mod endpoint;
pub mod error;
pub mod facts;
pub mod failpoint;
pub mod fuzzing;
pub mod http1;
pub mod keys;
pub mod log_format;
pub mod log_sink;
pub mod metering;
pub mod metrics;
pub mod plugins;
pub mod protocol;
pub mod provider;
pub mod relay;
pub mod runtime;
pub mod server;
pub mod settling;
pub mod state;
pub mod store;
