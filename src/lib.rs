//! envoy-webhooks: iconik-style webhooks for Envoy, as a proxy-wasm filter.
//!
//! The core (query language, webhook definitions, matching, delivery policy)
//! is plain Rust and runs natively; only `wasm_host` talks to the proxy-wasm host.

pub mod admin;
pub mod config;
pub mod delivery;
pub mod events;
pub mod fields;
pub mod health;
pub mod held;
pub mod logging;
pub mod matcher;
pub mod query;
pub mod status;

pub mod dead_letter;
pub mod pending;
pub mod retry;
pub mod signature;
#[cfg(target_arch = "wasm32")]
mod wasm_host;
