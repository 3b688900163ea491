//! The thin adapter between the proxy-wasm host (Envoy) and the pure core.
//!
//! - `root`: one per worker VM; loads the configuration and forwards to the
//!   delivery engine, which makes every call from here so that every outcome
//!   is seen (the SDK drops call responses whose HTTP context has ended).
//! - `api`: an API request's etcd calls, made from its own context.
//! - `stream`: one per request; copies event bodies as they stream past,
//!   matches them, and hands deliveries to its worker's root (`worker`: in
//!   the VM's memory, with an empty wake-up through a shared queue).
//! - `metrics`: Envoy stats; `host`: every host call, none able to panic,
//!   and the delivery engine's `Host` on top of them.
//!
//! No delivery decision is made here: `crate::delivery::engine` makes them.

mod api;
mod host;
mod metrics;
mod root;
mod stream;
mod worker;

use proxy_wasm::traits::RootContext;
use proxy_wasm::types::LogLevel;

proxy_wasm::main! {{
    host::install_panic_hook();
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        Box::new(root::WebhooksRoot::new(context_id))
    });
}}
