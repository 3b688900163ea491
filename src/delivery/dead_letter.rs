//! The record POSTed to the dead-letter destination for a delivery that
//! could not be made.

use serde::Serialize;
use serde_json::value::RawValue;

/// Why a delivery was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Every attempt of the retry schedule failed.
    RetriesExhausted,
    /// The receiver answered `410 Gone`.
    Gone,
    /// The worker's retry queue was full (`max_pending`, `max_pending_bytes`).
    PendingLimit,
    /// The webhook is `FAILED`: it is no longer called.
    WebhookFailed,
    /// The worker held `delivery.max_held_bytes` of bodies already.
    MemoryLimit,
    /// Envoy stopped the filter (shut down, or replaced its configuration)
    /// while the delivery waited for a retry.
    Shutdown,
    /// Journaled in etcd by an Envoy that went away, for a webhook no Envoy
    /// has configured any more (`cluster_state.etcd.orphan_retention_s`).
    Orphaned,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::RetriesExhausted => "retries_exhausted",
            Reason::Gone => "gone",
            Reason::PendingLimit => "pending_limit",
            Reason::WebhookFailed => "webhook_failed",
            Reason::MemoryLimit => "memory_limit",
            Reason::Shutdown => "shutdown",
            Reason::Orphaned => "orphaned",
        }
    }
}

/// What is known of the delivery that failed.
#[derive(Debug, Clone, Copy)]
pub struct FailedDelivery<'a> {
    pub webhook_id: &'a str,
    /// `webhook-id` of the delivery, for de-duplication.
    pub message_id: &'a str,
    pub request_id: Option<&'a str>,
    /// The event's JSON text.
    pub event: &'a [u8],
    pub attempts: u32,
    pub last_error: Option<&'a str>,
    pub first_attempt_at_ms: u64,
    pub reason: Reason,
}

/// The dead-letter record: `{"webhook_id", "event", "attempts", "last_error",
/// "first_attempt_at", "reason", ...}` (`first_attempt_at` in Unix seconds).
///
/// `event` is the event's JSON text byte for byte (big integers, `-0`, `1E2`,
/// key order and duplicate keys as the platform sent them), not a re-encoding.
pub fn record(failed: &FailedDelivery<'_>) -> Vec<u8> {
    /// Field order is the record's documented order.
    #[derive(Serialize)]
    struct Record<'a> {
        webhook_id: &'a str,
        event: EventText<'a>,
        attempts: u32,
        last_error: Option<&'a str>,
        first_attempt_at: u64,
        reason: &'a str,
        message_id: &'a str,
        request_id: Option<&'a str>,
    }
    #[derive(Serialize)]
    #[serde(untagged)]
    enum EventText<'a> {
        Json(&'a RawValue),
        /// Not JSON (never the case for an accepted event): carried as a string.
        Text(String),
    }
    let event = std::str::from_utf8(failed.event)
        .ok()
        .and_then(|text| serde_json::from_slice::<&RawValue>(text.as_bytes()).ok())
        .map_or_else(
            || EventText::Text(String::from_utf8_lossy(failed.event).into_owned()),
            EventText::Json,
        );
    let record = Record {
        webhook_id: failed.webhook_id,
        event,
        attempts: failed.attempts,
        last_error: failed.last_error,
        first_attempt_at: failed.first_attempt_at_ms / 1000,
        reason: failed.reason.as_str(),
        message_id: failed.message_id,
        request_id: failed.request_id,
    };
    // Serialising borrowed strings and numbers cannot fail; an empty body
    // would be refused by the destination and so still be counted.
    serde_json::to_vec(&record).unwrap_or_default()
}
