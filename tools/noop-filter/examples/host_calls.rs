//! The host-call probe of `scripts/bench --host-calls`: a proxy-wasm filter
//! that makes, for every request, `calls` host calls of one kind and nothing
//! else, so that (its Envoy CPU per request − the no-op filter's) ÷ `calls` is
//! what one such call costs Envoy, crossings and host work included.
//!
//! Plugin configuration, read without a JSON parser (which would add to the
//! module that this filter is the floor of):
//! `{"probe": "KIND", "calls": K, "bytes": N, "cluster": "NAME"}` with KIND:
//! - `header`: read the request's `content-type` (`get_map_value_bytes`);
//! - `headers`: read all the request's headers in one call (`get_map_bytes`);
//! - `property_headers`: read all the request's headers in one call as the
//!   `request.headers` property (`get_property`: bytes, names unchecked);
//! - `body`: read the request body's last chunk whole (`get_buffer`), per KB
//!   of the ~2 KB events;
//! - `shared_get`: read a shared-data value of N bytes;
//! - `shared_cas`: read it and write it back with its CAS value;
//! - `queue`: enqueue a message of N bytes on the worker's shared queue (the
//!   root context dequeues each one: an enqueue plus a dequeue);
//! - `metric`: add 1 to a counter (`increment_metric`);
//! - `dispatch`: an HTTP call of N bytes to cluster NAME straight from the
//!   request's context, its answer never read (with `calls` 1: the true floor
//!   of a delivery, no queue hop);
//! - `tick`: set the root context's tick period (alternating two values an
//!   hour apart, so each call changes it and no tick fires);
//! - `log`: a trace-level log line, below Envoy's level (the host drops it).
//!
//!   cargo build --release --target wasm32-wasip1 --example host_calls

use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(ProbeRoot::default()) });
}}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Header,
    /// All the request's headers in one call (`get_http_request_headers_bytes`).
    Headers,
    /// All the request's headers as the `request.headers` property.
    PropertyHeaders,
    Body,
    SharedGet,
    SharedCas,
    Queue,
    Metric,
    Dispatch,
    Tick,
    Log,
}

impl Kind {
    fn parse(name: &str) -> Option<Kind> {
        Some(match name {
            "header" => Kind::Header,
            "headers" => Kind::Headers,
            "property_headers" => Kind::PropertyHeaders,
            "body" => Kind::Body,
            "shared_get" => Kind::SharedGet,
            "shared_cas" => Kind::SharedCas,
            "queue" => Kind::Queue,
            "metric" => Kind::Metric,
            "dispatch" => Kind::Dispatch,
            "tick" => Kind::Tick,
            "log" => Kind::Log,
            _ => return None,
        })
    }
}

struct Probe {
    kind: Kind,
    calls: usize,
    payload: Vec<u8>,
    cluster: String,
    queue: u32,
    metric: u32,
}

const SHARED_KEY: &str = "host_calls.value";

#[derive(Default)]
struct ProbeRoot {
    probe: Option<Rc<Probe>>,
}

impl Context for ProbeRoot {}

/// The text of `"name": ...` in `text`: a string's contents, or a number's digits.
fn field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let key = format!("\"{name}\"");
    let rest = text.get(text.find(&key)? + key.len()..)?;
    let rest = rest.get(rest.find(':')? + 1..)?.trim_start();
    if let Some(quoted) = rest.strip_prefix('"') {
        return quoted.get(..quoted.find('"')?);
    }
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest.get(..end)
}

/// A number no other worker VM of this Envoy has: each worker needs a shared queue of its own.
fn unique_vm_number() -> Option<u64> {
    const KEY: &str = "host_calls.next_vm";
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

impl RootContext for ProbeRoot {
    fn on_configure(&mut self, size: usize) -> bool {
        let Some(bytes) = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, size)
            .ok()
            .flatten()
        else {
            return false;
        };
        let Ok(text) = String::from_utf8(bytes) else {
            return false;
        };
        let Some(kind) = field(&text, "probe").and_then(Kind::parse) else {
            return false;
        };
        let calls = field(&text, "calls")
            .and_then(|n| n.parse().ok())
            .unwrap_or(1);
        let bytes: usize = field(&text, "bytes")
            .and_then(|n| n.parse().ok())
            .unwrap_or(64);
        let cluster = field(&text, "cluster").unwrap_or("webhooks").to_string();
        let payload = vec![b'x'; bytes];
        let Some(number) = unique_vm_number() else {
            return false;
        };
        let Ok(queue) = hostcalls::register_shared_queue(&format!("host_calls.queue.{number}"))
        else {
            return false;
        };
        let Ok(metric) = hostcalls::define_metric(MetricType::Counter, "host_calls.probe") else {
            return false;
        };
        if hostcalls::set_shared_data(SHARED_KEY, Some(&payload), None).is_err() {
            return false;
        }
        self.probe = Some(Rc::new(Probe {
            kind,
            calls,
            payload,
            cluster,
            queue,
            metric,
        }));
        true
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        while let Ok(Some(_)) = hostcalls::dequeue_shared_queue(queue_id) {}
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(ProbeStream {
            probe: self.probe.clone(),
        }))
    }
}

struct ProbeStream {
    probe: Option<Rc<Probe>>,
}

impl Context for ProbeStream {}

fn make_calls(probe: &Probe) {
    for i in 0..probe.calls {
        match probe.kind {
            Kind::Header => {
                let _ = hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, "content-type");
            }
            Kind::Headers => {
                let _ = hostcalls::get_map_bytes(MapType::HttpRequestHeaders);
            }
            Kind::PropertyHeaders => {
                let _ = hostcalls::get_property(vec!["request", "headers"]);
            }
            Kind::SharedGet => {
                let _ = hostcalls::get_shared_data(SHARED_KEY);
            }
            Kind::SharedCas => {
                if let Ok((Some(value), cas)) = hostcalls::get_shared_data(SHARED_KEY) {
                    let _ = hostcalls::set_shared_data(SHARED_KEY, Some(&value), cas);
                }
            }
            Kind::Queue => {
                let _ = hostcalls::enqueue_shared_queue(probe.queue, Some(&probe.payload));
            }
            Kind::Metric => {
                let _ = hostcalls::increment_metric(probe.metric, 1);
            }
            Kind::Dispatch => {
                let _ = hostcalls::dispatch_http_call(
                    &probe.cluster,
                    vec![
                        (":method", "POST"),
                        (":path", "/hooks/probe"),
                        (":authority", "webhooks"),
                        ("content-type", "application/json"),
                    ],
                    Some(&probe.payload),
                    Vec::new(),
                    Duration::from_secs(10),
                );
            }
            Kind::Tick => {
                let hour = 3_600_000 + u64::try_from(i % 2).unwrap_or(0);
                let _ = hostcalls::set_tick_period(Duration::from_millis(hour));
            }
            Kind::Log => {
                let _ = hostcalls::log(LogLevel::Trace, "host_calls probe");
            }
            Kind::Body => {}
        }
    }
}

impl HttpContext for ProbeStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(probe) = self.probe.as_ref().filter(|p| p.kind != Kind::Body) {
            make_calls(probe);
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if let Some(probe) = self.probe.as_ref().filter(|p| p.kind == Kind::Body) {
            if end_of_stream {
                for _ in 0..probe.calls {
                    let _ = hostcalls::get_buffer(BufferType::HttpRequestBody, 0, body_size);
                }
            }
        }
        Action::Continue
    }
}
