//! A worker's deliveries waiting for their next attempt: ordered by due time,
//! bounded in count and bytes, evicting the oldest when full.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::rc::Rc;

use crate::webhook::store::PendingSummary;

/// A webhook as a delivery knows it: by its id and the fingerprint of its
/// definition, never by its position in the configuration (a reload may
/// insert, remove or reorder definitions). The engine resolves it through a
/// map; a delivery whose definition is gone or changed is never sent with
/// another one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WebhookRef {
    pub id: Rc<str>,
    pub fingerprint: u64,
}

/// Where a delivery goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    Webhook(WebhookRef),
    /// The dead-letter destination, carrying a delivery of this webhook.
    DeadLetter(WebhookRef),
}

impl Target {
    /// The webhook the delivery is for.
    pub fn webhook(&self) -> &WebhookRef {
        match self {
            Target::Webhook(webhook) | Target::DeadLetter(webhook) => webhook,
        }
    }

    pub fn is_dead_letter(&self) -> bool {
        matches!(self, Target::DeadLetter(_))
    }
}

/// One delivery and its history so far: the one type for a delivery waiting
/// in the retry queue and in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub target: Target,
    /// What is POSTed: the event, or the dead-letter record. Shared by the
    /// deliveries of one event to several webhooks.
    pub body: Rc<[u8]>,
    /// `webhook-id`, stable across attempts.
    pub message_id: String,
    /// The event's `request_id`, for logs.
    pub request_id: Option<String>,
    /// Headers of the platform's request copied into every attempt
    /// (`delivery.propagate_headers`); shared like `body`.
    pub headers: Rc<[(String, String)]>,
    /// Attempts made so far.
    pub attempts: u32,
    /// Times the host could not even start the call (not counted as attempts).
    pub dispatch_failures: u32,
    pub first_attempt_at_ms: u64,
    pub last_error: Option<String>,
    /// The webhook's `enable` epoch when the latest attempt was made (see
    /// `WebhookHealth::epoch`).
    pub epoch: u64,
    /// With `cluster_state`: its number in this worker's hand-off journal
    /// (kept in etcd while it waits, for another Envoy to adopt).
    pub journal: Option<u64>,
    /// It has waited for its webhook's rate limit (counted once).
    pub throttled: bool,
}

impl Delivery {
    /// What this delivery counts against `max_pending_bytes`.
    pub fn cost_bytes(&self) -> usize {
        self.body.len()
            + self.message_id.len()
            + self.request_id.as_ref().map_or(0, String::len)
            + self.last_error.as_ref().map_or(0, String::len)
            + self
                .headers
                .iter()
                .map(|(name, value)| name.len() + value.len())
                .sum::<usize>()
            + 64
    }
}

/// Deliveries waiting for a retry, per worker.
#[derive(Debug)]
pub struct RetryQueue {
    /// By insertion order, so the oldest is first; with each one's due time.
    entries: BTreeMap<u64, (u64, Delivery)>,
    /// (due time, sequence) of every entry; stale pairs are skipped on pop.
    due: BinaryHeap<Reverse<(u64, u64)>>,
    next_seq: u64,
    bytes: usize,
    max_count: usize,
    max_bytes: usize,
}

impl RetryQueue {
    pub fn new(max_count: usize, max_bytes: usize) -> RetryQueue {
        RetryQueue {
            entries: BTreeMap::new(),
            due: BinaryHeap::new(),
            next_seq: 0,
            bytes: 0,
            max_count,
            max_bytes,
        }
    }

    /// Changes the bounds (a new configuration); returns what no longer fits, oldest first.
    pub fn set_bounds(&mut self, max_count: usize, max_bytes: usize) -> Vec<Delivery> {
        self.max_count = max_count;
        self.max_bytes = max_bytes;
        self.evict_over_bounds()
    }

    /// Queues `delivery` for `due_ms`; returns the deliveries evicted to stay
    /// within bounds, oldest first (possibly `delivery` itself, if it alone is too big).
    pub fn push(&mut self, delivery: Delivery, due_ms: u64) -> Vec<Delivery> {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.bytes += delivery.cost_bytes();
        self.entries.insert(seq, (due_ms, delivery));
        self.due.push(Reverse((due_ms, seq)));
        self.evict_over_bounds()
    }

    fn evict_over_bounds(&mut self) -> Vec<Delivery> {
        let mut evicted = Vec::new();
        while self.entries.len() > self.max_count || self.bytes > self.max_bytes {
            let Some((_, (_, delivery))) = self.entries.pop_first() else {
                break;
            };
            self.bytes -= delivery.cost_bytes();
            evicted.push(delivery);
        }
        evicted
    }

    /// The earliest delivery due at `now_ms`, if any.
    pub fn pop_due(&mut self, now_ms: u64) -> Option<Delivery> {
        while let Some(&Reverse((due_ms, seq))) = self.due.peek() {
            if due_ms > now_ms {
                return None;
            }
            self.due.pop();
            if let Some((entry_due, _)) = self.entries.get(&seq) {
                if *entry_due == due_ms {
                    if let Some((_, delivery)) = self.entries.remove(&seq) {
                        self.bytes -= delivery.cost_bytes();
                        return Some(delivery);
                    }
                }
            }
        }
        None
    }

    /// When the next delivery is due.
    pub fn next_due_ms(&mut self) -> Option<u64> {
        // Drop stale heap entries so the answer is exact.
        while let Some(&Reverse((due_ms, seq))) = self.due.peek() {
            if self.entries.get(&seq).is_some_and(|(d, _)| *d == due_ms) {
                return Some(due_ms);
            }
            self.due.pop();
        }
        None
    }

    /// Removes and returns every delivery for which `select` holds, oldest first.
    pub fn remove_where(&mut self, mut select: impl FnMut(&Delivery) -> bool) -> Vec<Delivery> {
        let chosen: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, (_, delivery))| select(delivery))
            .map(|(seq, _)| *seq)
            .collect();
        let mut removed = Vec::with_capacity(chosen.len());
        for seq in chosen {
            if let Some((_, delivery)) = self.entries.remove(&seq) {
                self.bytes -= delivery.cost_bytes();
                removed.push(delivery);
            }
        }
        removed
    }

    /// Every waiting delivery, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Delivery> {
        self.entries.values().map(|(_, delivery)| delivery)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Counts and next due time per webhook id.
    pub fn summary(&self) -> BTreeMap<Rc<str>, PendingSummary> {
        let mut summary: BTreeMap<Rc<str>, PendingSummary> = BTreeMap::new();
        for (due_ms, delivery) in self.entries.values() {
            let entry = summary
                .entry(delivery.target.webhook().id.clone())
                .or_default();
            match delivery.target {
                Target::Webhook(_) => entry.deliveries += 1,
                Target::DeadLetter(_) => entry.dead_letters += 1,
            }
            entry.next_due_ms = Some(entry.next_due_ms.map_or(*due_ms, |d| d.min(*due_ms)));
        }
        summary
    }
}
