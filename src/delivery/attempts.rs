//! The attempt log: each worker's latest call attempts per webhook, for
//! `GET {prefix}/webhooks/{id}/attempts`.
//!
//! Recording is cheap on purpose: an attempt is encoded once, as its JSON
//! object, into a bounded ring per webhook; a tick at most every 250 ms
//! publishes the rings that changed to shared data (one write each, the
//! entries joined as they are). The admin API merges every worker's log.

use std::collections::VecDeque;
use std::rc::Rc;

use hashbrown::HashMap;
use serde::Serialize;
use serde_json::Value;

/// Attempts kept per webhook and worker, and shown per webhook.
pub const MAX_ATTEMPTS: usize = 100;
/// Bytes of an error kept in an entry; the rest is cut at a character boundary.
const MAX_ERROR_BYTES: usize = 512;
/// Bytes of a request_id kept in an entry.
const MAX_REQUEST_ID_BYTES: usize = 128;
/// How often a worker publishes its changed logs, at most.
pub const PUBLISH_INTERVAL_MS: u64 = 250;

/// One call attempt, as the admin API shows it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Attempt<'a> {
    /// Unix ms when the call was made.
    pub at_ms: u64,
    /// 1 for the first attempt of a delivery.
    pub attempt: u32,
    /// The receiver's HTTP status; `None` when the call got no answer from it.
    pub status: Option<u16>,
    pub latency_ms: u64,
    /// As in `last_error`; `None` on success.
    pub error: Option<&'a str>,
    /// The `webhook-id` the receiver saw (`None`: a dead letter's, unsigned).
    pub message_id: Option<&'a str>,
    pub request_id: Option<&'a str>,
}

/// `text` cut to at most `max` bytes, at a character boundary.
fn cut(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end = end.saturating_sub(1);
    }
    text.get(..end).unwrap_or_default()
}

/// One worker's logs, by webhook id: entries as JSON text, newest last.
#[derive(Default)]
pub struct AttemptLog {
    rings: HashMap<Rc<str>, VecDeque<String>>,
    /// Webhooks whose ring changed since it was last published.
    changed: Vec<Rc<str>>,
    published_ms: u64,
}

impl AttemptLog {
    pub fn record(&mut self, id: &Rc<str>, attempt: &Attempt<'_>) {
        let attempt = Attempt {
            error: attempt.error.map(|e| cut(e, MAX_ERROR_BYTES)),
            request_id: attempt.request_id.map(|r| cut(r, MAX_REQUEST_ID_BYTES)),
            ..*attempt
        };
        // Strings and integers always serialise.
        let entry = serde_json::to_string(&attempt).unwrap_or_default();
        let ring = self.rings.entry(id.clone()).or_default();
        if ring.len() >= MAX_ATTEMPTS {
            ring.pop_front();
        }
        ring.push_back(entry);
        if !self.changed.contains(id) {
            self.changed.push(id.clone());
        }
    }

    /// Something waits to be published.
    pub fn has_changes(&self) -> bool {
        !self.changed.is_empty()
    }

    /// The changed logs, each as a JSON array (newest first), if the last
    /// publication is `PUBLISH_INTERVAL_MS` old (`force`: whatever its age).
    pub fn take_changes(&mut self, now_ms: u64, force: bool) -> Vec<(Rc<str>, Vec<u8>)> {
        if self.changed.is_empty()
            || (!force && now_ms.saturating_sub(self.published_ms) < PUBLISH_INTERVAL_MS)
        {
            return Vec::new();
        }
        self.published_ms = now_ms;
        std::mem::take(&mut self.changed)
            .into_iter()
            .filter_map(|id| {
                let ring = self.rings.get(&id)?;
                let bytes: usize = ring.iter().map(|e| e.len().saturating_add(1)).sum();
                let mut log = Vec::with_capacity(bytes.saturating_add(2));
                log.push(b'[');
                for (n, entry) in ring.iter().rev().enumerate() {
                    if n > 0 {
                        log.push(b',');
                    }
                    log.extend_from_slice(entry.as_bytes());
                }
                log.push(b']');
                Some((id, log))
            })
            .collect()
    }
}

/// `{"attempts": [...]}`: the published logs (`published`, one per worker)
/// merged, newest first, at most `MAX_ATTEMPTS`.
pub fn merged_body(published: &[Vec<u8>]) -> String {
    let mut attempts: Vec<Value> = published
        .iter()
        .filter_map(|log| serde_json::from_slice::<Vec<Value>>(log).ok())
        .flatten()
        .collect();
    let at = |entry: &Value| entry.get("at_ms").and_then(Value::as_u64).unwrap_or(0);
    // Stable: one worker's attempts made in the same millisecond keep their order.
    attempts.sort_by_key(|entry| std::cmp::Reverse(at(entry)));
    attempts.truncate(MAX_ATTEMPTS);
    serde_json::json!({ "attempts": attempts }).to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn attempt(at_ms: u64, error: Option<&str>) -> Attempt<'_> {
        Attempt {
            at_ms,
            attempt: 1,
            status: error.is_none().then_some(200),
            latency_ms: 3,
            error,
            message_id: Some("msg_1"),
            request_id: Some("r"),
        }
    }

    #[test]
    fn a_ring_keeps_the_latest_hundred_newest_first() {
        let mut log = AttemptLog::default();
        let id: Rc<str> = Rc::from("a");
        for at in 0..150 {
            log.record(&id, &attempt(at, None));
        }
        let changes = log.take_changes(1_000, false);
        assert_eq!(changes.len(), 1);
        let entries: Vec<Value> = serde_json::from_slice(&changes[0].1).unwrap();
        assert_eq!(entries.len(), MAX_ATTEMPTS);
        assert_eq!(entries[0]["at_ms"], 149);
        assert_eq!(entries[99]["at_ms"], 50);
        assert_eq!(entries[0]["status"], 200);
        assert_eq!(entries[0]["error"], Value::Null);
        assert!(log.take_changes(2_000, false).is_empty(), "nothing changed");
    }

    #[test]
    fn publication_waits_for_its_interval_unless_forced() {
        let mut log = AttemptLog::default();
        let id: Rc<str> = Rc::from("a");
        log.record(&id, &attempt(1, None));
        assert_eq!(log.take_changes(1_000, false).len(), 1);
        log.record(&id, &attempt(2, None));
        assert!(log.take_changes(1_100, false).is_empty());
        assert!(log.has_changes());
        assert_eq!(log.take_changes(1_100, true).len(), 1);
    }

    #[test]
    fn long_errors_are_cut_at_a_character_boundary() {
        let mut log = AttemptLog::default();
        let id: Rc<str> = Rc::from("a");
        let error = "é".repeat(400);
        log.record(&id, &attempt(1, Some(&error)));
        let changes = log.take_changes(1_000, true);
        let entries: Vec<Value> = serde_json::from_slice(&changes[0].1).unwrap();
        let kept = entries[0]["error"].as_str().unwrap();
        assert_eq!(kept.len(), 512);
        assert_eq!(entries[0]["status"], Value::Null);
    }

    #[test]
    fn workers_logs_merge_newest_first_to_a_hundred() {
        let worker = |from: u64| {
            let entries: Vec<String> = (0..80)
                .rev()
                .map(|n| format!(r#"{{"at_ms":{}}}"#, from + n * 2))
                .collect();
            format!("[{}]", entries.join(",")).into_bytes()
        };
        let body = merged_body(&[worker(0), worker(1), b"not json".to_vec()]);
        let merged: Value = serde_json::from_str(&body).unwrap();
        let ats: Vec<u64> = merged["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["at_ms"].as_u64().unwrap())
            .collect();
        assert_eq!(ats.len(), 100);
        assert_eq!(ats[0], 159);
        assert!(ats.windows(2).all(|w| w[0] >= w[1]));
    }
}
