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
//! interval per worker, not one per delivery.

use hashbrown::{HashMap, HashSet};

use super::etcd::{self, EtcdError};
use super::handoff;
use crate::config::EtcdConfig;
use crate::delivery::engine::Engine;
use crate::delivery::host::Host;
use crate::delivery::queue::Delivery;

/// Operations and bytes of one transaction (etcd's defaults: 128 ops, 1.5 MiB).
const MAX_TXN_OPS: usize = 64;
const MAX_TXN_BYTES: usize = 1024 * 1024;
/// The owner's lease lasts this many sync intervals (at least `MIN_TTL_S`).
const TTL_INTERVALS: u64 = 5;
const MIN_TTL_S: u64 = 5;

/// One call of the journal in flight.
#[derive(Debug)]
pub enum JournalCall {
    Grant,
    Liveness,
    Keepalive,
    Write {
        /// Journal numbers and their keys.
        puts: Vec<(u64, Vec<u8>)>,
        deletes: Vec<u64>,
    },
    Revoke,
}

/// What a journal call asks of the transport (`sync` sends it).
pub struct Request {
    pub path: &'static str,
    pub body: Vec<u8>,
    pub call: JournalCall,
}

pub struct Journal {
    prefix: String,
    owner: String,
    interval_ms: u64,
    lease: Option<i64>,
    /// The liveness key is in place under `lease`: records may be written.
    live: bool,
    /// Journal numbers whose record etcd holds, with its key (the delivery
    /// may be gone when its record is deleted); `None`: not journaled (too
    /// large, not text), never to be tried again.
    written: HashMap<u64, Option<Vec<u8>>>,
    /// Handed off when the filter stopped: their records stay for another Envoy.
    kept: HashSet<u64>,
    busy: bool,
    next_write_ms: u64,
    next_keepalive_ms: u64,
    /// After a failed call, the next waits until then: an etcd that refuses
    /// at once must not get a call per answer.
    retry_at_ms: u64,
    stopping: bool,
    /// Stopped, flushed and the lease revoked (or given up on).
    finished: bool,
}

impl Journal {
    pub fn new(config: &EtcdConfig, owner: String) -> Journal {
        Journal {
            prefix: config.prefix.clone(),
            owner,
            interval_ms: config.sync_interval_ms,
            lease: None,
            live: false,
            written: HashMap::new(),
            kept: HashSet::new(),
            busy: false,
            next_write_ms: 0,
            next_keepalive_ms: 0,
            retry_at_ms: 0,
            stopping: false,
            finished: false,
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
        self.finished || (self.stopping && self.lease.is_none() && !self.busy)
    }

    /// The next call to make now, if any.
    pub fn next<H: Host>(&mut self, host: &mut H, engine: &mut Engine) -> Option<Request> {
        if self.busy || self.finished {
            return None;
        }
        let now = host.now_ms();
        if now < self.retry_at_ms {
            return None;
        }
        self.kept.extend(engine.take_handed_off());
        // Records in etcd with no liveness key look orphaned to every other
        // Envoy (the lease lapsed while etcd was away): a new lease and
        // liveness key at once, not at the next put.
        let orphaned = !self.live && self.written.values().any(Option::is_some);
        if !self.stopping && now < self.next_write_ms && !orphaned {
            // Written this interval already: no scan of the worker's deliveries.
            return self.keepalive(now);
        }
        let alive: HashMap<u64, &Delivery> = engine.journaled().collect();
        let puts: Vec<u64> = if self.stopping {
            Vec::new()
        } else {
            alive
                .keys()
                .filter(|n| !self.written.contains_key(*n))
                .copied()
                .collect()
        };
        let deletes: Vec<u64> = self
            .written
            .keys()
            .filter(|n| !alive.contains_key(*n) && !self.kept.contains(*n))
            .copied()
            .collect();
        if self.stopping {
            if !deletes.is_empty() && self.live {
                return self.write(now, &alive, Vec::new(), deletes);
            }
            if engine.is_idle() || !self.live {
                return self.revoke();
            }
            return None;
        }
        if puts.is_empty() && deletes.is_empty() && !orphaned {
            return self.keepalive(now);
        }
        let Some(lease) = self.lease else {
            self.busy = true;
            return Some(Request {
                path: etcd::LEASE_GRANT_PATH,
                body: etcd::lease_grant_request(self.ttl_s()),
                call: JournalCall::Grant,
            });
        };
        if !self.live {
            self.busy = true;
            let key = self.liveness_key().into_bytes();
            return Some(Request {
                path: etcd::TXN_PATH,
                body: etcd::txn_write(&[(key, Vec::new())], &[], Some(lease)),
                call: JournalCall::Liveness,
            });
        }
        if now < self.next_write_ms {
            return self.keepalive(now);
        }
        self.write(now, &alive, puts, deletes)
    }

    fn keepalive(&mut self, now: u64) -> Option<Request> {
        let lease = self.lease?;
        if now < self.next_keepalive_ms {
            return None;
        }
        self.busy = true;
        self.next_keepalive_ms = now.saturating_add(self.interval_ms);
        Some(Request {
            path: etcd::LEASE_KEEPALIVE_PATH,
            body: etcd::lease_id_request(lease),
            call: JournalCall::Keepalive,
        })
    }

    fn revoke(&mut self) -> Option<Request> {
        match self.lease {
            Some(lease) => {
                self.busy = true;
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
        alive: &HashMap<u64, &Delivery>,
        puts: Vec<u64>,
        deletes: Vec<u64>,
    ) -> Option<Request> {
        let mut put_records = Vec::new();
        let mut put_numbers = Vec::new();
        let mut bytes = 0usize;
        for number in puts {
            if put_records.len() >= MAX_TXN_OPS || bytes >= MAX_TXN_BYTES {
                break;
            }
            let Some(delivery) = alive.get(&number) else {
                continue;
            };
            let Some(record) = handoff::record_of(delivery) else {
                // Not journaled: a hard kill loses it.
                self.written.insert(number, None);
                continue;
            };
            bytes = bytes.saturating_add(record.len());
            put_records.push((self.record_key(number, delivery).into_bytes(), record));
            put_numbers.push(number);
        }
        let room = MAX_TXN_OPS.saturating_sub(put_records.len());
        let deletes: Vec<u64> = deletes.into_iter().take(room).collect();
        let delete_keys: Vec<Vec<u8>> = deletes
            .iter()
            .filter_map(|n| self.written.get(n).cloned().flatten())
            .collect();
        if put_records.is_empty() && delete_keys.is_empty() {
            for n in &deletes {
                self.written.remove(n);
            }
            return None;
        }
        self.busy = true;
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

    /// The answer to a journal call (`None`: it failed; the error is the caller's to count).
    pub fn finished_call(
        &mut self,
        call: JournalCall,
        body: Option<&[u8]>,
    ) -> Result<(), EtcdError> {
        self.busy = false;
        let Some(body) = body else {
            if matches!(call, JournalCall::Revoke) {
                // The lease lapses by itself; the records are adopted then.
                self.lease = None;
                self.finished = true;
            }
            return Err(EtcdError::Malformed("no answer".to_string()));
        };
        match call {
            JournalCall::Grant => {
                self.lease = Some(etcd::parse_lease_grant(body)?);
                self.live = false;
            }
            JournalCall::Liveness => {
                if etcd::parse_txn_applied(body)? {
                    self.live = true;
                }
            }
            JournalCall::Keepalive => {
                if !etcd::parse_keepalive(body)? {
                    // Lapsed (etcd was away longer than the TTL): a new lease
                    // and liveness key; the records stay as they are.
                    self.lease = None;
                    self.live = false;
                }
            }
            JournalCall::Write { puts, deletes } => {
                if etcd::parse_txn_applied(body)? {
                    self.written
                        .extend(puts.into_iter().map(|(n, key)| (n, Some(key))));
                    for n in deletes {
                        self.written.remove(&n);
                    }
                }
            }
            JournalCall::Revoke => {
                self.lease = None;
                self.live = false;
                self.finished = true;
            }
        }
        Ok(())
    }

    /// A call failed (no answer, an error, an answer that is not etcd's):
    /// the next one waits an interval.
    pub fn back_off(&mut self, now_ms: u64) {
        self.retry_at_ms = now_ms.saturating_add(self.interval_ms);
    }

    /// The filter stops: handed-off records stay, the rest are deleted, then
    /// the lease is revoked so that another Envoy adopts at once.
    pub fn stop(&mut self) {
        self.stopping = true;
        if self.lease.is_none() {
            self.finished = true;
        }
    }
}
