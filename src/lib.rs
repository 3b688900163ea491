//! envoy-webhooks: iconik-style webhooks for Envoy, as a proxy-wasm filter.
//!
//! The pipeline, one folder a stage: request `event`s are parsed (to just the
//! fields queries read), the `matcher` finds the webhook definitions
//! (`config`, `query`) they match, `delivery` makes and retries the calls,
//! and each `webhook`'s status follows the outcomes. `admin` answers the admin
//! API. All of it is plain Rust, tested natively; only `wasm_host` talks to
//! the proxy-wasm host (Envoy), through the traits in `host`.
//!
//! # Public surface
//!
//! What the command-line tool and a Rust program embedding the matcher use:
//! [`query`] (parse, check, evaluate and explain a query), [`config`] (load
//! and validate a configuration), [`event`] (parse events), [`matcher`]
//! (which definitions an event matches), [`status`] (a webhook's status) and
//! [`signature`] (sign and verify deliveries). Everything else is private.
//!
//! Tests, fuzz targets and benches reach private items through
//! `testing` only: hidden from the docs, not part of the API, and listing
//! each item they use (one submodule per private module, named after it), so
//! that an item nothing uses is still reported as dead code.

#![forbid(unsafe_code)]

pub mod config;
pub mod event;
pub mod matcher;
pub mod query;
pub mod status;
#[doc(hidden)]
pub mod testing;

pub use delivery::signature;

mod admin;
mod api;
mod body_wait;
mod cluster;
mod delivery;
mod host;
mod intake;
mod logging;
mod plugin;
mod serve;
mod webhook;

#[cfg(target_arch = "wasm32")]
mod wasm_host;
