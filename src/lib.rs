//! envoy-webhooks: iconik-style webhooks for Envoy, as a proxy-wasm filter.
//!
//! The core (query language, webhook definitions, matching, delivery policy)
//! is plain Rust and runs natively; only `wasm_host` talks to the proxy-wasm host.

pub mod query;
