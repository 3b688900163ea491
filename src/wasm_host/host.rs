//! Every proxy-wasm call the filter makes that can read what a client, a
//! receiver or the host sends, wrapped so that none of them can panic.
//!
//! proxy-wasm 0.2.5 panics (and so traps the VM, failing every later request
//! of the worker) where it meets the unexpected: `get_map_value` unwraps
//! `String::from_utf8` of a header value, and every call panics on a status it
//! does not expect, e.g. asking for the headers of a call that ended without
//! an answer. So: only the `_bytes` variants, decoded leniently; call-response
//! maps only when the host said there are headers; buffers only when non-empty.

use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, LogLevel, MapType, Status as HostStatus};

use crate::host::{Call, Counter, DispatchError, Host, SharedData, StoreError, WebhookCounter};
use crate::status::Status;

use super::worker::Worker;

/// Milliseconds since the Unix epoch, by the host's clock.
pub fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|time| time.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn map_value(map: MapType, name: &str) -> Option<String> {
    hostcalls::get_map_value_bytes(map, name)
        .ok()
        .flatten()
        .map(|bytes| match String::from_utf8(bytes) {
            Ok(text) => text,
            // obs-text (0x80-0xff) is legal in HTTP header values: keep what can be read.
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
}

/// A request header, with bytes that are not UTF-8 replaced by U+FFFD.
pub fn request_header(name: &str) -> Option<String> {
    map_value(MapType::HttpRequestHeaders, name)
}

/// A request header exactly as sent; `None` also when it is not UTF-8 (it
/// is then not copied anywhere: a changed value would be a lie).
pub fn request_header_exact(name: &str) -> Option<String> {
    hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name)
        .ok()
        .flatten()
        .and_then(|bytes| String::from_utf8(bytes).ok())
}

/// A response header, with bytes that are not UTF-8 replaced by U+FFFD.
pub fn response_header(name: &str) -> Option<String> {
    map_value(MapType::HttpResponseHeaders, name)
}

/// A header of a call's answer. `num_headers` is what the host reported for
/// the call: 0 means there was no answer (reset, timeout, overflow), and then
/// the host has no header map to read (the SDK would panic).
pub fn call_response_header(num_headers: usize, name: &str) -> Option<String> {
    if num_headers == 0 {
        return None;
    }
    map_value(MapType::HttpCallResponseHeaders, name)
}

/// Up to `size` bytes of a buffer; nothing when `size` is 0.
pub fn buffer(kind: BufferType, size: usize) -> Option<Vec<u8>> {
    if size == 0 {
        return None;
    }
    hostcalls::get_buffer(kind, 0, size).ok().flatten()
}

/// Makes a panic visible in Envoy's log before the VM aborts: without it, a
/// trap says nothing of where it came from. The filter's own code never
/// panics (lints forbid it); this is for the SDK's and the standard library's.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let _ = hostcalls::log(
            LogLevel::Critical,
            &format!("envoy-webhooks panicked, the Wasm VM will abort: {info}"),
        );
    }));
}

/// Proxy-wasm shared data, for the core's `webhook::store`.
pub struct ProxySharedData;

impl SharedData for ProxySharedData {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        hostcalls::get_shared_data(key).unwrap_or((None, None))
    }

    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(HostStatus::CasMismatch) => Err(StoreError::CasMismatch),
            Err(status) => Err(StoreError::Other(format!("{status:?}"))),
        }
    }
}

/// The delivery engine's host: Envoy, through proxy-wasm, with the worker's
/// stats. Made for one callback: dropped at its end, it leaves what was
/// counted to the worker's next flush (`Worker::end_callback`).
pub struct ProxyHost<'a> {
    pub worker: &'a Worker,
    /// The tick comes at least this often (0: only when the engine asks),
    /// for the cluster-state poller and stalled admin requests.
    pub tick_floor_ms: u64,
    /// The time, read once per callback (a host call each).
    pub clock: std::cell::Cell<Option<u64>>,
}

impl SharedData for ProxyHost<'_> {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        ProxySharedData.get(key)
    }

    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        ProxySharedData.set(key, value, cas)
    }
}

impl Host for ProxyHost<'_> {
    fn now_ms(&self) -> u64 {
        if let Some(now) = self.clock.get() {
            return now;
        }
        let now = now_ms();
        self.clock.set(Some(now));
        now
    }

    fn random_unit(&mut self) -> f64 {
        fastrand::f64()
    }

    fn random_id(&mut self) -> u128 {
        fastrand::u128(..)
    }

    fn dispatch(&mut self, call: Call<'_>) -> Result<u32, DispatchError> {
        hostcalls::dispatch_http_call(
            call.cluster,
            call.headers,
            Some(call.body),
            Vec::new(),
            Duration::from_millis(call.timeout_ms),
        )
        .map_err(|status| match status {
            HostStatus::InternalFailure => DispatchError::Busy,
            other => DispatchError::Refused(format!("{other:?}")),
        })
    }

    fn set_tick_period_ms(&mut self, period_ms: u64) -> bool {
        let shortest = |a: u64, b: u64| match (a, b) {
            (0, other) | (other, 0) => other,
            (a, b) => a.min(b),
        };
        let floor = shortest(self.tick_floor_ms, self.worker.flush_floor_ms());
        self.worker.set_tick_ms(shortest(period_ms, floor))
    }

    fn count(&mut self, counter: Counter, n: u64) {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        let metrics = &self.worker.metrics;
        match counter {
            Counter::DeliveriesDiscarded => {
                metrics.add(metrics.deliveries_discarded, n);
            }
            Counter::ClusterStateErrors => {
                metrics.add(metrics.cluster_state_errors, n);
            }
            Counter::ClusterStateRecordsRemoved => {
                metrics.add(metrics.cluster_state_records_removed, n);
            }
            Counter::Webhook(id, which) => {
                let webhook = metrics.webhook_named(&id);
                let metric = match which {
                    WebhookCounter::Delivered => webhook.delivered,
                    WebhookCounter::Failed => webhook.failed,
                    WebhookCounter::Dropped => webhook.dropped,
                    WebhookCounter::Retried => webhook.retried,
                    WebhookCounter::DeadLettered => webhook.dead_lettered,
                    WebhookCounter::Lost => webhook.lost,
                    WebhookCounter::Adopted => webhook.adopted,
                    WebhookCounter::HandedOff => webhook.handed_off,
                    WebhookCounter::Orphaned => webhook.orphaned,
                    WebhookCounter::Injected => webhook.injected,
                    WebhookCounter::Paused => webhook.paused,
                    WebhookCounter::Throttled => webhook.throttled,
                };
                metrics.add(metric, n);
            }
        }
    }

    fn set_status(&mut self, id: &str, status: Status) {
        self.worker.metrics.webhook_named(id).set_status(status);
    }

    fn add_held_bytes(&mut self, delta: i64) {
        let metrics = &self.worker.metrics;
        metrics.add(metrics.held_bytes, delta);
    }
}

impl Drop for ProxyHost<'_> {
    fn drop(&mut self) {
        self.worker.end_callback();
    }
}
