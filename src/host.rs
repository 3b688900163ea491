//! What the core needs of its host (Envoy, or a fake in tests): a clock,
//! randomness, calls, a tick, shared data and counters. The proxy-wasm
//! adapter implements it; nothing else knows of proxy-wasm. Below every
//! stage, so that `webhook`, `delivery` and `cluster` all import it downwards.

use std::rc::Rc;

use crate::status::Status;

/// Proxy-wasm shared data: one store per VM id, shared by every worker, with
/// compare-and-swap on a per-key version.
pub trait SharedData {
    /// The value and its version; `(None, None)` for a missing key.
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    /// Stores `value` if the key's version is still `cas` (`None`: unconditionally).
    /// The host does not check `cas` for a missing key: it creates it.
    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// Another worker changed the key since it was read.
    CasMismatch,
    Other(String),
}

/// One HTTP call to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call<'a> {
    pub cluster: &'a str,
    pub headers: Vec<(&'a str, &'a str)>,
    pub body: &'a [u8],
    pub timeout_ms: u64,
}

/// Why the host did not start a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DispatchError {
    /// Not now (the dynamic forward proxy is still resolving the host): try again soon.
    Busy,
    /// Never (an unknown cluster): the attempt fails.
    Refused(String),
}

/// Per-webhook counters (docs/operations.md's metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WebhookCounter {
    Delivered,
    Failed,
    Dropped,
    Retried,
    DeadLettered,
    Lost,
    /// Taken over from an Envoy that went away (cluster state).
    Adopted,
    /// Left in etcd for another Envoy when this one stopped (cluster state).
    HandedOff,
    /// Journaled by an Envoy that went away, for a webhook no Envoy has any
    /// more: taken from etcd after `orphan_retention_s`, to the dead letters.
    Orphaned,
    /// Handed in by an operator (`POST .../deliver`): a test event or a redriven dead letter.
    Injected,
    /// Matched while an operator paused the webhook: not made, not dead-lettered.
    Paused,
    /// Deliveries that waited for the webhook's `rate_limit_per_s` (each counted once).
    Throttled,
}

/// Counters of the whole filter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Counter {
    /// Waiting for a retry when their webhook's definition changed.
    DeliveriesDiscarded,
    /// Calls to the cluster store (etcd) that failed, and records in it that
    /// do not decode.
    ClusterStateErrors,
    /// Status records of webhooks no Envoy has any more, deleted from etcd.
    ClusterStateRecordsRemoved,
    /// Named by the webhook's id: a delivery made under a configuration that
    /// has since been reloaded still counts for its webhook.
    Webhook(Rc<str>, WebhookCounter),
}

pub trait Host: SharedData {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
    /// Uniform in `[0, 1)`: retry jitter.
    fn random_unit(&mut self) -> f64;
    /// 128 random bits: a delivery's `webhook-id`.
    fn random_id(&mut self) -> u128;
    /// Starts a call; its outcome comes back with the returned token.
    fn dispatch(&mut self, call: Call<'_>) -> Result<u32, DispatchError>;
    /// Sets the tick period (0: no tick); `false` if the host refused.
    fn set_tick_period_ms(&mut self, period_ms: u64) -> bool;
    fn count(&mut self, counter: Counter, n: u64);
    /// The webhook `id` now has `status`.
    fn set_status(&mut self, id: &str, status: Status);
    /// Adds `delta` to the gauge of held bytes (summed over workers).
    fn add_held_bytes(&mut self, delta: i64);
}
