//! envoy-webhooks: iconik-style webhooks for Envoy, as a proxy-wasm filter.
//!
//! The pipeline, one folder a stage: request `event`s are parsed (to just the
//! fields queries read), the `matcher` finds the webhook definitions
//! (`config`, `query`) they match, `delivery` makes and retries the calls,
//! and each `webhook`'s status follows the outcomes. `admin` answers the admin
//! API. All of it is plain Rust, tested natively; only `wasm_host` talks to
//! the proxy-wasm host (Envoy), through the traits in `delivery::host`.

#![forbid(unsafe_code)]

pub mod admin;
pub mod cluster;
pub mod config;
pub mod delivery;
pub mod event;
pub mod intake;
pub mod logging;
pub mod matcher;
pub mod plugin;
pub mod query;
#[doc(hidden)]
pub mod testing;
pub mod webhook;

// Short paths for the modules the configuration and the CLI use most.
pub use delivery::{retry, signature};
pub use webhook::status;

#[cfg(target_arch = "wasm32")]
mod wasm_host;
