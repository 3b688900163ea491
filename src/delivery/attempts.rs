//! The attempt log: each worker's latest call attempts per webhook, for
//! `GET {prefix}/webhooks/{id}/attempts`.
//!
//! Recording is cheap on purpose: an attempt is encoded once, as its JSON
//! object, into a bounded ring per webhook; a tick at most every 250 ms
//! publishes the rings that changed to shared data (one write each, the
//! entries joined as they are). The admin API merges every worker's log.
//!
//! A worker's log holds at most `MAX_LOG_BYTES` in all, however many
//! webhooks there are (tenants may have thousands): past it, the ring of
//! the webhook called longest ago goes, published as empty (shared data
//! has no delete), so shared data holds no more than the log does.

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
/// Bytes of entries one worker's log holds at most, over all its webhooks
/// (some 400 full rings of 100 typical entries).
pub const MAX_LOG_BYTES: usize = 8 * 1024 * 1024;

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

/// One webhook's latest attempts: entries as JSON text, newest last.
#[derive(Default)]
struct Ring {
    entries: VecDeque<String>,
    bytes: usize,
    /// When it was last recorded into (the log's own count): the oldest goes first.
    recorded: u64,
    /// Listed in `changed`.
    changed: bool,
}

/// One worker's logs, by webhook id.
#[derive(Default)]
pub struct AttemptLog {
    rings: HashMap<Rc<str>, Ring>,
    /// Webhooks whose ring changed since it was last published (each once).
    changed: Vec<Rc<str>>,
    published_ms: u64,
    /// Bytes of every ring's entries.
    bytes: usize,
    /// Counts records: each ring's `recorded` is one of these.
    records: u64,
    /// (record count, webhook) for every record, oldest first; an entry
    /// whose count is not its ring's `recorded` any more is stale. The
    /// oldest ring is found at its front in amortised constant time.
    order: VecDeque<(u64, Rc<str>)>,
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
        self.records = self.records.saturating_add(1);
        let ring = self.rings.entry(id.clone()).or_default();
        ring.recorded = self.records;
        self.order.push_back((self.records, id.clone()));
        if ring.entries.len() >= MAX_ATTEMPTS {
            let dropped = ring.entries.pop_front().map_or(0, |e| e.len());
            ring.bytes = ring.bytes.saturating_sub(dropped);
            self.bytes = self.bytes.saturating_sub(dropped);
        }
        ring.bytes = ring.bytes.saturating_add(entry.len());
        self.bytes = self.bytes.saturating_add(entry.len());
        ring.entries.push_back(entry);
        if !ring.changed {
            ring.changed = true;
            self.changed.push(id.clone());
        }
        while self.bytes > MAX_LOG_BYTES && self.rings.len() > 1 {
            if !self.evict_oldest(id) {
                break;
            }
        }
        if self.order.len() > self.rings.len().saturating_mul(4).saturating_add(1024) {
            // Mostly stale (webhooks recorded into again): keep the current entries.
            let rings = &self.rings;
            self.order
                .retain(|(at, id)| rings.get(id).is_some_and(|ring| ring.recorded == *at));
        }
    }

    /// Empties the ring recorded into longest ago (not `keep`'s): it is
    /// published empty, and forgotten once it is. `false`: none to empty.
    fn evict_oldest(&mut self, keep: &Rc<str>) -> bool {
        while let Some((at, id)) = self.order.pop_front() {
            if id == *keep {
                // Recorded into just now: its current entry is at the back.
                continue;
            }
            let Some(ring) = self.rings.get_mut(&id) else {
                continue;
            };
            if ring.recorded != at || ring.entries.is_empty() {
                continue;
            }
            self.bytes = self.bytes.saturating_sub(ring.bytes);
            ring.entries.clear();
            ring.bytes = 0;
            if !ring.changed {
                ring.changed = true;
                self.changed.push(id);
            }
            return true;
        }
        false
    }

    /// Bytes the log holds.
    pub fn bytes(&self) -> usize {
        self.bytes
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
        let changes: Vec<(Rc<str>, Vec<u8>)> = std::mem::take(&mut self.changed)
            .into_iter()
            .filter_map(|id| {
                let ring = self.rings.get_mut(&id)?;
                ring.changed = false;
                let bytes = ring.bytes.saturating_add(ring.entries.len());
                let mut log = Vec::with_capacity(bytes.saturating_add(2));
                log.push(b'[');
                for (n, entry) in ring.entries.iter().rev().enumerate() {
                    if n > 0 {
                        log.push(b',');
                    }
                    log.extend_from_slice(entry.as_bytes());
                }
                log.push(b']');
                Some((id, log))
            })
            .collect();
        // An evicted ring, published empty, is forgotten.
        self.rings
            .retain(|_, ring| !ring.entries.is_empty() || ring.changed);
        changes
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
    fn the_log_stays_under_its_bound_however_many_webhooks_and_the_oldest_goes() {
        let mut log = AttemptLog::default();
        let ids: Vec<Rc<str>> = (0..20_000)
            .map(|n| Rc::from(format!("w{n}").as_str()))
            .collect();
        let mut at = 0u64;
        let error = Some("HTTP 500 from the receiver");
        for _round in 0..5 {
            for id in &ids {
                at += 1;
                log.record(id, &attempt(at, error));
            }
        }
        // Then only the last webhooks are called: the first ones' rings go.
        for n in 0..20_000usize {
            at += 1;
            log.record(&ids[19_900 + n % 100], &attempt(at, error));
        }
        assert!(log.bytes() <= MAX_LOG_BYTES, "{}", log.bytes());
        let changes = log.take_changes(1_000, true);
        let emptied = changes
            .iter()
            .filter(|(_, log)| log.as_slice() == b"[]")
            .count();
        assert!(emptied > 0, "evicted rings are published empty");
        // The webhooks called last keep their entries; the first ones were emptied.
        let last = changes.iter().find(|(id, _)| &**id == "w19999").unwrap();
        assert_eq!(
            serde_json::from_slice::<Vec<Value>>(&last.1).unwrap().len(),
            100
        );
        let first = changes.iter().find(|(id, _)| &**id == "w0").unwrap();
        assert_eq!(first.1, b"[]");
        // Forgotten once published: the map holds only rings with entries.
        assert!(log.rings.values().all(|ring| !ring.entries.is_empty()));
        assert!(log.rings.len() < ids.len());
        assert!(
            log.order.len() <= log.rings.len() * 4 + 1024,
            "{}",
            log.order.len()
        );
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
