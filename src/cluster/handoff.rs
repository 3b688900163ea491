//! A delivery waiting for a retry, as kept in etcd while it waits: if its
//! Envoy goes away (its lease lapses), another Envoy takes the record and
//! makes the delivery.

use std::rc::Rc;

use serde::{Deserialize, Serialize};

use crate::delivery::queue::{Delivery, Target, WebhookRef};
use crate::plugin::Plugin;

/// Records larger than this are not journaled: etcd refuses requests over
/// 1.5 MiB by default, and a transaction carries several.
pub const MAX_RECORD_BYTES: usize = 512 * 1024;

#[derive(Debug, Serialize, Deserialize)]
struct HandoffRecord {
    webhook_id: String,
    fingerprint: u64,
    message_id: String,
    request_id: Option<String>,
    attempts: u32,
    first_attempt_at_ms: u64,
    last_error: Option<String>,
    /// The platform request's propagated headers (`delivery.propagate_headers`);
    /// absent in records of earlier versions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    headers: Vec<(String, String)>,
    /// The event, exactly as received (JSON text).
    event: String,
}

/// The record of a waiting webhook delivery; `None` for a dead letter, an
/// event that is not text, or one too large to journal.
pub fn record_of(delivery: &Delivery) -> Option<Vec<u8>> {
    let Target::Webhook(webhook) = &delivery.target else {
        return None;
    };
    if delivery.body.len() > MAX_RECORD_BYTES {
        return None;
    }
    let record = HandoffRecord {
        webhook_id: webhook.id.to_string(),
        fingerprint: webhook.fingerprint,
        message_id: delivery.message_id.clone(),
        request_id: delivery.request_id.clone(),
        attempts: delivery.attempts,
        first_attempt_at_ms: delivery.first_attempt_at_ms,
        last_error: delivery.last_error.clone(),
        headers: delivery.headers.to_vec(),
        event: std::str::from_utf8(&delivery.body).ok()?.to_string(),
    };
    // As written: JSON escaping can make an event's text six times longer.
    serde_json::to_vec(&record)
        .ok()
        .filter(|bytes| bytes.len() <= MAX_RECORD_BYTES)
}

/// The delivery a record holds, for a webhook this configuration has
/// unchanged; `None` otherwise (the record is left for an Envoy that has it).
pub fn delivery_of(bytes: &[u8], plugin: &Plugin) -> Option<Delivery> {
    let record: HandoffRecord = serde_json::from_slice(bytes).ok()?;
    let (index, definition) = plugin.resolve_fingerprint(record.fingerprint)?;
    if definition.id != record.webhook_id {
        return None;
    }
    let webhook = plugin.webhook_ref(index)?.clone();
    Some(delivery(record, webhook))
}

/// The delivery a record holds, whatever the configuration: for a webhook
/// no Envoy has any more, on its way to the dead letters.
pub fn orphan_of(bytes: &[u8]) -> Option<Delivery> {
    let record: HandoffRecord = serde_json::from_slice(bytes).ok()?;
    let webhook = WebhookRef {
        id: Rc::from(record.webhook_id.as_str()),
        fingerprint: record.fingerprint,
    };
    Some(delivery(record, webhook))
}

fn delivery(record: HandoffRecord, webhook: WebhookRef) -> Delivery {
    Delivery {
        target: Target::Webhook(webhook),
        body: Rc::from(record.event.into_bytes()),
        headers: Rc::from(record.headers),
        message_id: record.message_id,
        request_id: record.request_id,
        attempts: record.attempts,
        dispatch_failures: 0,
        first_attempt_at_ms: record.first_attempt_at_ms,
        last_error: record.last_error,
        epoch: 0,
        journal: None,
        throttled: false,
    }
}
