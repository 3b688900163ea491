//! The thin adapter between the proxy-wasm host (Envoy) and the pure core.
//!
//! - `root`: one per worker VM; loads the configuration and makes every
//!   delivery call, so that every outcome is seen (the SDK drops call
//!   responses whose HTTP context has ended).
//! - `stream`: one per request; copies event bodies as they stream past,
//!   matches them, and hands deliveries to its worker's root through a
//!   shared queue.
//! - `health_store`: webhook health in shared data, updated with CAS.
//! - `metrics`, `host`: Envoy stats and error-handling wrappers of host calls.

mod health_store;
mod host;
mod metrics;
mod plugin;
mod root;
mod stream;

use proxy_wasm::traits::RootContext;
use proxy_wasm::types::LogLevel;

proxy_wasm::main! {{
    host::install_panic_hook();
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_context_id| -> Box<dyn RootContext> {
        Box::new(root::WebhooksRoot::default())
    });
}}
