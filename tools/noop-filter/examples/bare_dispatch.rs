//! The floor of a delivery: a proxy-wasm filter that, for every request, makes
//! one HTTP call to the cluster named by its plugin configuration
//! (`{"dispatch_cluster": "NAME"}`), the way envoy-webhooks makes its
//! deliveries, and does nothing else. The request's context enqueues a message
//! on the worker's shared queue; the root context dequeues it in
//! `on_queue_ready` and dispatches a POST of a fixed ~2 KB body; the answer is
//! not read. What it costs Envoy beyond the no-op filter (`src/lib.rs`) is
//! Envoy's own cost of a dispatched call, which no filter making calls can
//! go below. Without a configuration it makes no calls.
//!
//! An example of this crate, so that the no-op filter stays exactly what it is:
//!   cargo build --release --target wasm32-wasip1 --example bare_dispatch
//!   # target/wasm32-wasip1/release/examples/bare_dispatch.wasm

use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(NoopRoot::default()) });
}}

/// The body of every dispatched call: about the size of the bench's events.
const BODY: [u8; 2048] = [b'x'; 2048];

/// The dispatch mode's set-up, shared by the root and its request contexts.
struct Dispatch {
    cluster: String,
    /// This worker's shared queue.
    queue: u32,
}

#[derive(Default)]
struct NoopRoot {
    dispatch: Option<Rc<Dispatch>>,
}

impl Context for NoopRoot {}

/// A number no other worker VM of this Envoy has: each worker needs a
/// shared queue of its own (the last to register a name receives it).
fn unique_vm_number() -> Option<u64> {
    const KEY: &str = "noop_filter.next_vm";
    for _ in 0..100 {
        let (value, cas) = hostcalls::get_shared_data(KEY).ok()?;
        let number = value
            .and_then(|bytes| <[u8; 8]>::try_from(bytes.as_slice()).ok())
            .map_or(0, u64::from_le_bytes);
        let next = number.checked_add(1)?.to_le_bytes();
        if hostcalls::set_shared_data(KEY, Some(&next), cas).is_ok() {
            return Some(number);
        }
    }
    None
}

fn configured_cluster(size: usize) -> Option<String> {
    if size == 0 {
        return None;
    }
    let bytes = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, size).ok()??;
    let text = String::from_utf8(bytes).ok()?;
    // `{"dispatch_cluster": "NAME"}`, read without a JSON parser (which would
    // add to the module's size and start-up, that this filter is the floor of).
    let rest = &text[text.find("\"dispatch_cluster\"")? + "\"dispatch_cluster\"".len()..];
    let rest = &rest[rest.find('"')? + 1..];
    Some(rest[..rest.find('"')?].to_string())
}

impl RootContext for NoopRoot {
    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        let Some(cluster) = configured_cluster(plugin_configuration_size) else {
            return true;
        };
        let Some(number) = unique_vm_number() else {
            return false;
        };
        let Ok(queue) = hostcalls::register_shared_queue(&format!("noop_filter.queue.{number}"))
        else {
            return false;
        };
        self.dispatch = Some(Rc::new(Dispatch { cluster, queue }));
        true
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        let Some(dispatch) = &self.dispatch else {
            return;
        };
        while let Ok(Some(_)) = hostcalls::dequeue_shared_queue(queue_id) {
            let _ = hostcalls::dispatch_http_call(
                &dispatch.cluster,
                vec![
                    (":method", "POST"),
                    (":path", "/hooks/bare"),
                    (":authority", "webhooks"),
                    ("content-type", "application/json"),
                ],
                Some(&BODY),
                Vec::new(),
                Duration::from_secs(10),
            );
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Noop {
            dispatch: self.dispatch.clone(),
        }))
    }
}

struct Noop {
    dispatch: Option<Rc<Dispatch>>,
}

impl Context for Noop {}

impl HttpContext for Noop {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(dispatch) = &self.dispatch {
            let _ = hostcalls::enqueue_shared_queue(dispatch.queue, Some(b"1"));
        }
        Action::Continue
    }
}
