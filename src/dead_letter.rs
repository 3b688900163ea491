//! The record POSTed to the dead-letter destination for a delivery that
//! could not be made.

use serde_json::{json, Value};

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
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::RetriesExhausted => "retries_exhausted",
            Reason::Gone => "gone",
            Reason::PendingLimit => "pending_limit",
            Reason::WebhookFailed => "webhook_failed",
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
pub fn record(failed: &FailedDelivery<'_>) -> Vec<u8> {
    let event = serde_json::from_slice::<Value>(failed.event)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(failed.event).into_owned()));
    json!({
        "webhook_id": failed.webhook_id,
        "event": event,
        "attempts": failed.attempts,
        "last_error": failed.last_error,
        "first_attempt_at": failed.first_attempt_at_ms / 1000,
        "reason": failed.reason.as_str(),
        "message_id": failed.message_id,
        "request_id": failed.request_id,
    })
    .to_string()
    .into_bytes()
}
