//! A worker's deliveries waiting for a retry, journaled in etcd so that
//! nothing is lost when its Envoy goes away: each root context that holds
//! such deliveries owns an etcd lease and a liveness key under it
//! (`owners/<owner>`), and writes each waiting delivery under
//! `handoff/<owner>/<webhook>/<fingerprint>/<n>` (without the lease), then
//! deletes it once the delivery is made or dead-lettered. When the owner stops
//! renewing its lease (killed, or stopped: it revokes it), its liveness key
//! goes, and another Envoy's poller adopts the records (see `sync`).
//!
//! Writes are batched: at most one transaction in flight per root context,
//! once per sync interval, so a failing receiver costs etcd one write per
//! interval per worker, not one per delivery. The lease's keep-alive has a
//! slot of its own: writes that etcd refuses (its space quota, a permission)
//! never let a live owner's lease lapse.
//!
//! A delivery counts as handed off only once etcd holds its record: when the
//! filter stops, the journal writes what it has not written yet, and what it
//! cannot write goes to the dead letters (see `Engine::hand_off`).

use hashbrown::{HashMap, HashSet};

use super::etcd::{self, EtcdError};
use super::handoff;
use crate::config::EtcdConfig;
use crate::delivery::engine::Engine;
use crate::delivery::queue::Delivery;
use crate::host::Host;

/// Operations and bytes of one transaction: etcd's defaults are 128 ops and
/// a 1.5 MiB request; the bytes are counted as sent (base64, JSON).
const MAX_TXN_OPS: usize = 64;
const MAX_TXN_BYTES: usize = 1024 * 1024;
/// JSON around one put or delete of a transaction, at most.
const OP_OVERHEAD_BYTES: usize = 64;
/// The owner's lease lasts this many sync intervals (at least `MIN_TTL_S`).
const TTL_INTERVALS: u64 = 5;
const MIN_TTL_S: u64 = 5;

/// One call of the journal in flight.
#[derive(Debug)]
pub enum JournalCall {
    Grant,
    Liveness {
        lease: i64,
    },
    Keepalive {
        lease: i64,
    },
    Write {
        /// Journal numbers and their keys.
        puts: Vec<(u64, Vec<u8>)>,
        deletes: Vec<u64>,
    },
    Revoke,
}

impl JournalCall {
    /// The keep-alive has a slot of its own; every other call shares one.
    fn is_keepalive(&self) -> bool {
        matches!(self, JournalCall::Keepalive { .. })
    }
}

/// What a journal call asks of the transport (`sync` sends it).
pub struct Request {
    pub path: &'static str,
    pub body: Vec<u8>,
    pub call: JournalCall,
}

/// Where a journaled delivery's record stands in etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Record {
    /// etcd holds it under this key.
    Written(Vec<u8>),
    /// Its write got no answer: etcd may hold it. Written again while the
    /// delivery waits; deleted (harmless if absent) once it is gone.
    Unsure(Vec<u8>),
    /// Not journaled (not text, or too large), never to be tried again.
    Skipped,
}

impl Record {
    fn key(&self) -> Option<&[u8]> {
        match self {
            Record::Written(key) | Record::Unsure(key) => Some(key),
            Record::Skipped => None,
        }
    }
}

pub struct Journal {
    prefix: String,
    owner: String,
    interval_ms: u64,
    lease: Option<i64>,
    /// The liveness key is in place under `lease`: records may be written.
    live: bool,
    /// Journal numbers of the deliveries this worker has journaled (or tried to).
    records: HashMap<u64, Record>,
    /// Handed off when the filter stopped: their records stay for another Envoy.
    kept: HashSet<u64>,
    /// A grant, liveness put, write or revocation in flight.
    writing: bool,
    /// A keep-alive in flight.
    renewing: bool,
    next_write_ms: u64,
    next_keepalive_ms: u64,
    /// After a failed write, the next waits until then: an etcd that refuses
    /// at once must not get a call per answer.
    retry_at_ms: u64,
    stopping: bool,
    /// Stopping, and a call failed: nothing more is written; what etcd does
    /// not hold is dead-lettered.
    gave_up: bool,
    /// Stopped, flushed and the lease revoked (or given up on).
    finished: bool,
    /// Replaced by another configuration's journal: deletes its records and
    /// revokes its lease (see `release`).
    releasing: bool,
}

impl Journal {
    pub fn new(config: &EtcdConfig, owner: String) -> Journal {
        Journal {
            prefix: config.prefix.clone(),
            owner,
            interval_ms: config.sync_interval_ms,
            lease: None,
            live: false,
            records: HashMap::new(),
            kept: HashSet::new(),
            writing: false,
            renewing: false,
            next_write_ms: 0,
            next_keepalive_ms: 0,
            retry_at_ms: 0,
            stopping: false,
            gave_up: false,
            finished: false,
            releasing: false,
        }
    }

    pub fn owners_prefix(prefix: &str) -> String {
        format!("{prefix}owners/")
    }

    pub fn handoff_prefix(prefix: &str) -> String {
        format!("{prefix}handoff/")
    }

    fn liveness_key(&self) -> String {
        format!("{}{}", Self::owners_prefix(&self.prefix), self.owner)
    }

    fn record_key(&self, number: u64, delivery: &Delivery) -> String {
        let webhook = delivery.target.webhook();
        format!(
            "{}{}/{}/{:016x}/{number}",
            Self::handoff_prefix(&self.prefix),
            self.owner,
            webhook.id,
            webhook.fingerprint
        )
    }

    fn ttl_s(&self) -> u64 {
        (self.interval_ms.saturating_mul(TTL_INTERVALS) / 1000).max(MIN_TTL_S)
    }

    /// Stopped, flushed, and the lease revoked: the root context may end.
    pub fn is_finished(&self) -> bool {
        self.finished
            || ((self.stopping || self.releasing)
                && self.lease.is_none()
                && !self.writing
                && !self.renewing)
    }

    /// Whether etcd holds the record of journal number `number`.
    fn in_etcd(&self, number: u64) -> bool {
        matches!(self.records.get(&number), Some(Record::Written(_)))
    }

    /// The next call to make at `now` (steady time, see `clock`), if any;
    /// called until it returns `None`.
    pub fn next<H: Host>(
        &mut self,
        host: &mut H,
        engine: &mut Engine,
        now: u64,
    ) -> Option<Request> {
        if self.releasing {
            return self.next_releasing(now);
        }
        if self.stopping {
            return self.next_stopping(host, engine, now);
        }
        if let Some(keepalive) = self.keepalive(now) {
            return Some(keepalive);
        }
        if self.writing || now < self.retry_at_ms {
            return None;
        }
        // Records in etcd with no liveness key look orphaned to every other
        // Envoy (the lease lapsed while etcd was away): a new lease and
        // liveness key at once, not at the next put.
        let orphaned = !self.live && self.records.values().any(|r| r.key().is_some());
        if now < self.next_write_ms && !orphaned {
            // Written this interval already: no scan of the worker's deliveries.
            return None;
        }
        let (puts, deletes) = self.changes(engine);
        if puts.is_empty() && deletes.is_empty() && !orphaned {
            return None;
        }
        if let Some(step) = self.make_live() {
            return Some(step);
        }
        self.write(now, engine, puts, deletes)
    }

    /// While stopping: the records not written yet are written (a grant and
    /// liveness key first if need be), without waiting for the interval;
    /// then the deliveries leaving the engine are handed off or
    /// dead-lettered, and the lease is revoked once the engine is idle.
    fn next_stopping<H: Host>(
        &mut self,
        host: &mut H,
        engine: &mut Engine,
        now: u64,
    ) -> Option<Request> {
        if self.finished {
            self.hand_off(host, engine);
            return None;
        }
        if self.writing {
            // Its answer may make more records written: decided then.
            return None;
        }
        let (puts, deletes) = self.changes(engine);
        if !self.gave_up && (!puts.is_empty() || !deletes.is_empty()) {
            if !puts.is_empty() {
                if let Some(step) = self.make_live() {
                    return Some(step);
                }
            }
            // Deletes need no lease: a delivery made must not be adopted
            // again, even when this worker's lease lapsed.
            if let Some(write) = self.write(now, engine, puts, deletes) {
                return Some(write);
            }
        }
        // Nothing more will be written (all written, or etcd cannot be).
        self.hand_off(host, engine);
        if engine.is_idle() || self.gave_up {
            return self.revoke();
        }
        None
    }

    /// Released: every record deleted (one batch a call), then the lease
    /// revoked; given up on at the first failure (the lease lapses, and
    /// whatever is left is adopted by some Envoy then).
    fn next_releasing(&mut self, now: u64) -> Option<Request> {
        if self.writing || self.finished {
            return None;
        }
        let deletes: Vec<u64> = self
            .records
            .iter()
            .filter(|(_, record)| record.key().is_some())
            .map(|(n, _)| *n)
            .take(MAX_TXN_OPS)
            .collect();
        if self.gave_up || deletes.is_empty() {
            return self.revoke();
        }
        let keys = self.keys_of(&deletes);
        self.writing = true;
        self.next_write_ms = now.saturating_add(self.interval_ms);
        Some(Request {
            path: etcd::TXN_PATH,
            body: etcd::txn_write(&[], &keys, None),
            call: JournalCall::Write {
                puts: Vec::new(),
                deletes,
            },
        })
    }

    /// The keys of the records of `numbers` that etcd holds or may hold.
    fn keys_of(&self, numbers: &[u64]) -> Vec<Vec<u8>> {
        numbers
            .iter()
            .filter_map(|n| {
                self.records
                    .get(n)
                    .and_then(Record::key)
                    .map(<[u8]>::to_vec)
            })
            .collect()
    }

    /// Another configuration's journal takes over the engine's deliveries:
    /// this one deletes its records and revokes its lease.
    pub fn release(&mut self) {
        self.releasing = true;
    }

    fn hand_off<H: Host>(&mut self, host: &mut H, engine: &mut Engine) {
        if engine.is_leaving() {
            let handed = engine.hand_off(host, |number| self.in_etcd(number));
            self.kept.extend(handed);
        }
    }

    /// The records to put (journaled deliveries etcd may not hold) and to
    /// delete (records of deliveries that are gone, unless handed off).
    fn changes(&self, engine: &Engine) -> (Vec<u64>, Vec<u64>) {
        let alive: HashSet<u64> = engine.journaled().map(|(n, _)| n).collect();
        let puts = alive
            .iter()
            .filter(|n| matches!(self.records.get(*n), None | Some(Record::Unsure(_))))
            .copied()
            .collect();
        let deletes = self
            .records
            .keys()
            .filter(|n| !alive.contains(*n) && !self.kept.contains(*n))
            .copied()
            .collect();
        (puts, deletes)
    }

    /// A grant, or the liveness key, when records cannot be written yet.
    fn make_live(&mut self) -> Option<Request> {
        let Some(lease) = self.lease else {
            self.writing = true;
            return Some(Request {
                path: etcd::LEASE_GRANT_PATH,
                body: etcd::lease_grant_request(self.ttl_s()),
                call: JournalCall::Grant,
            });
        };
        if self.live {
            return None;
        }
        self.writing = true;
        let key = self.liveness_key().into_bytes();
        Some(Request {
            path: etcd::TXN_PATH,
            body: etcd::txn_write(&[(key, Vec::new())], &[], Some(lease)),
            call: JournalCall::Liveness { lease },
        })
    }

    /// The lease's keep-alive, once an interval, whatever else is in flight.
    fn keepalive(&mut self, now: u64) -> Option<Request> {
        let lease = self.lease?;
        if self.renewing || now < self.next_keepalive_ms {
            return None;
        }
        self.renewing = true;
        self.next_keepalive_ms = now.saturating_add(self.interval_ms);
        Some(Request {
            path: etcd::LEASE_KEEPALIVE_PATH,
            body: etcd::lease_id_request(lease),
            call: JournalCall::Keepalive { lease },
        })
    }

    fn revoke(&mut self) -> Option<Request> {
        match self.lease {
            Some(lease) => {
                self.writing = true;
                Some(Request {
                    path: etcd::LEASE_REVOKE_PATH,
                    body: etcd::lease_id_request(lease),
                    call: JournalCall::Revoke,
                })
            }
            None => {
                self.finished = true;
                None
            }
        }
    }

    fn write(
        &mut self,
        now: u64,
        engine: &Engine,
        puts: Vec<u64>,
        deletes: Vec<u64>,
    ) -> Option<Request> {
        let alive: HashMap<u64, &Delivery> = engine.journaled().collect();
        let mut put_records = Vec::new();
        let mut put_numbers = Vec::new();
        let mut bytes = 0usize;
        for number in puts {
            if put_records.len() >= MAX_TXN_OPS {
                break;
            }
            let Some(delivery) = alive.get(&number) else {
                continue;
            };
            let Some(record) = handoff::record_of(delivery) else {
                // Not journaled: a hard kill loses it; a stop dead-letters it.
                self.records.insert(number, Record::Skipped);
                continue;
            };
            let key = self.record_key(number, delivery).into_bytes();
            let cost = sent_bytes(&key).saturating_add(sent_bytes(&record));
            if bytes.saturating_add(cost) > MAX_TXN_BYTES {
                // The next write takes it (a record alone always fits).
                break;
            }
            bytes = bytes.saturating_add(cost);
            put_records.push((key, record));
            put_numbers.push(number);
        }
        let room = MAX_TXN_OPS.saturating_sub(put_records.len());
        let deletes: Vec<u64> = deletes.into_iter().take(room).collect();
        let delete_keys = self.keys_of(&deletes);
        if put_records.is_empty() && delete_keys.is_empty() {
            for n in &deletes {
                self.records.remove(n);
            }
            return None;
        }
        self.writing = true;
        self.next_write_ms = now.saturating_add(self.interval_ms);
        let puts = put_numbers
            .into_iter()
            .zip(put_records.iter().map(|(key, _)| key.clone()))
            .collect();
        Some(Request {
            path: etcd::TXN_PATH,
            body: etcd::txn_write(&put_records, &delete_keys, None),
            call: JournalCall::Write { puts, deletes },
        })
    }

    /// The answer to a journal call: its body (a 200), or what went wrong
    /// (the caller counts it).
    pub fn finished_call(
        &mut self,
        call: JournalCall,
        answer: Result<&[u8], EtcdError>,
        now_ms: u64,
    ) -> Result<(), EtcdError> {
        if call.is_keepalive() {
            self.renewing = false;
        } else {
            self.writing = false;
        }
        let outcome = self.apply(call, answer);
        if let Err(error) = &outcome {
            if self.stopping || self.releasing {
                // No tick comes to a stopping filter: what is not written now
                // never will be.
                self.gave_up = true;
            } else if !matches!(error, EtcdError::LeaseNotFound) {
                self.retry_at_ms = now_ms.saturating_add(self.interval_ms);
            }
        }
        outcome
    }

    fn apply(
        &mut self,
        call: JournalCall,
        answer: Result<&[u8], EtcdError>,
    ) -> Result<(), EtcdError> {
        match call {
            JournalCall::Grant => {
                self.lease = Some(etcd::parse_lease_grant(answer?)?);
                self.live = false;
            }
            JournalCall::Liveness { lease } => match answer {
                Ok(body) => {
                    if etcd::parse_txn_applied(body)? && self.lease == Some(lease) {
                        self.live = true;
                    }
                }
                Err(error) => {
                    self.lapsed(lease, &error);
                    return Err(error);
                }
            },
            JournalCall::Keepalive { lease } => match answer {
                Ok(body) => {
                    if !etcd::parse_keepalive(body)? {
                        // Lapsed (etcd was away longer than the TTL): a new
                        // lease and liveness key; the records stay as they are.
                        self.lapsed(lease, &EtcdError::LeaseNotFound);
                    }
                }
                Err(error) => {
                    self.lapsed(lease, &error);
                    return Err(error);
                }
            },
            JournalCall::Write { puts, deletes } => match answer {
                Ok(body) => {
                    if etcd::parse_txn_applied(body)? {
                        for (n, key) in puts {
                            self.records.insert(n, Record::Written(key));
                        }
                        for n in deletes {
                            self.records.remove(&n);
                        }
                    }
                }
                Err(error) => {
                    // It may have applied (its answer lost, or Envoy's own
                    // error after etcd's): written again while its delivery
                    // waits, deleted once it is gone.
                    for (n, key) in puts {
                        if !self.in_etcd(n) {
                            self.records.insert(n, Record::Unsure(key));
                        }
                    }
                    return Err(error);
                }
            },
            JournalCall::Revoke => {
                self.lease = None;
                self.live = false;
                self.finished = true;
                // A failed revocation: the lease lapses by itself, and the
                // records are adopted then.
                answer?;
            }
        }
        Ok(())
    }

    /// `error` says the lease `lease` is gone: a new one is granted.
    fn lapsed(&mut self, lease: i64, error: &EtcdError) {
        if matches!(error, EtcdError::LeaseNotFound) && self.lease == Some(lease) {
            self.lease = None;
            self.live = false;
        }
    }

    /// The filter stops: what is not written yet is written, handed-off
    /// records stay, the rest are deleted, then the lease is revoked so that
    /// another Envoy adopts at once.
    pub fn stop(&mut self) {
        self.stopping = true;
    }
}

/// Bytes a key or value takes in a transaction's JSON (base64, quotes).
fn sent_bytes(raw: &[u8]) -> usize {
    raw.len()
        .div_ceil(3)
        .saturating_mul(4)
        .saturating_add(OP_OVERHEAD_BYTES)
}
