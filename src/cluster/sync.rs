//! One Envoy's side of the cluster state: a root context that holds the
//! poller lease reads every webhook's record from etcd every
//! `sync_interval_ms`, makes the local records follow them, and writes the
//! changes this Envoy made (its deltas) with compare-and-set transactions.
//!
//! etcd failing never stops a delivery: the local records go on changing,
//! the deltas wait in shared data (a FAILED among them is never lost), the
//! errors are counted, logged once per outage and shown by `GET /status`.

use std::rc::Rc;

use hashbrown::HashMap;

use super::clock::SteadyClock;
use super::etcd::{self, EtcdError, KeyValue, Taken, TxnOutcome};
use super::handoff;
use super::journal::{Journal, JournalCall};
use super::members::{MemberCall, Membership};
use super::sweep::{Candidate, Sweep};
use crate::config::{EtcdConfig, WebhookDefinition};
use crate::delivery::engine::Engine;
use crate::host::{Counter, Host, WebhookCounter};
use crate::logging::Printable;
use crate::plugin::Plugin;
use crate::webhook::delta::Delta;
use crate::webhook::health::WebhookHealth;
use crate::webhook::store::{self, Dirty, SyncState};

/// A write that lost this many races in one round waits for the next round.
const MAX_CONFLICTS: u32 = 8;
/// A lease lapses after this many sync intervals without renewal.
const LEASE_INTERVALS: u64 = 3;

/// Every this many rounds that write deltas, every webhook's delta is
/// looked at, not only the dirty list's: a list entry lost (shared data
/// refused a write) delays a change by this many rounds at most.
const FULL_SCAN_ROUNDS: u32 = 60;
/// How often a root context looks for changes to write, and at the lease.
pub const CHECK_INTERVAL_MS: u64 = 100;
/// Records of Envoys that went away adopted per round, at most.
const MAX_ADOPTIONS_PER_ROUND: usize = 20;
/// Journal keys read per round, at most: about 130 KB of answer, however
/// many deliveries wait in the cluster (Envoy caps an answer at 16 MiB).
const JOURNAL_PAGE_KEYS: usize = 1_000;

/// What etcd holds for one webhook, as last seen.
#[derive(Debug, Clone)]
struct Known {
    /// `None`: no record (or one that does not decode: it is overwritten).
    record: Option<WebhookHealth>,
    /// The key's `mod_revision`; 0: the key does not exist.
    revision: i64,
    /// The latest writes that made it (see `stamped`).
    writes: Vec<String>,
}

#[derive(Debug)]
enum Pending {
    Authenticate {
        then_range: bool,
    },
    Range,
    /// The owners that are alive and the journaled deliveries, in one view.
    Orphans,
    /// The values of records about to be taken or removed, read first so
    /// that each take leaves a receipt holding what it took.
    Fetch(Vec<Fetched>),
    /// One orphaned record, taken if still there and its owner still gone,
    /// or a delivery record of a webhook no Envoy has, removed.
    Take(Box<Taking>),
    /// A receipt no longer needed, deleted (its lease would take it anyway).
    Forget,
    Journal(JournalCall),
    Member(MemberCall),
    /// Every member entry: which webhooks some Envoy has.
    Members,
    /// A status record of a webhook no Envoy has, removed if still unchanged.
    Remove(Box<Candidate>),
    Write {
        index: usize,
        delta: Box<Delta>,
        record: Box<WebhookHealth>,
        conflicts: u32,
        /// Unique to this write: tells our own write from an equal one.
        write_id: String,
    },
}

/// What a fetched record is read for.
#[derive(Debug)]
enum Fetched {
    /// Adopted: taken while its owner's liveness key is gone.
    Take { key: Vec<u8>, liveness: Vec<u8> },
    /// Dead-lettered: removed, its webhook unknown to every Envoy.
    Remove(Box<Candidate>),
}

impl Fetched {
    fn key(&self) -> &[u8] {
        match self {
            Fetched::Take { key, .. } => key,
            Fetched::Remove(candidate) => &candidate.key,
        }
    }
}

/// A take of a journaled delivery: to adopt it (its owner is gone), or to
/// dead-letter it (removed: no Envoy has its webhook). Kept whole so that a
/// take whose outcome is unknown is sent again, with the same receipt: a
/// take that applied the first time then finds its receipt.
#[derive(Debug)]
struct Taking {
    key: Vec<u8>,
    mod_revision: i64,
    /// The owner's liveness key: taken only while it is absent.
    liveness: Vec<u8>,
    receipt: etcd::Receipt,
    /// `Some`: a removal decided at this revision (see `txn_remove_if_unchanged`).
    removal: Option<(Box<Candidate>, i64)>,
}

/// A record names this many of the latest writes that made it: a write whose
/// answer was lost is recognised by its id even after other Envoys wrote
/// (each Envoy writes a record at most four times an interval).
const WRITES_KEPT: usize = 16;

/// The record as written to etcd, with the ids of the latest writes, this
/// one first.
fn stamped(record: &WebhookHealth, write_id: &str, earlier: &[String]) -> Vec<u8> {
    let mut value = serde_json::to_value(record).unwrap_or_default();
    let writes: Vec<&str> = std::iter::once(write_id)
        .chain(earlier.iter().map(String::as_str))
        .take(WRITES_KEPT)
        .collect();
    if let Some(object) = value.as_object_mut() {
        object.insert("writes".to_string(), serde_json::json!(writes));
    }
    serde_json::to_vec(&value).unwrap_or_default()
}

/// The ids of the latest writes a record's value names.
fn writes_of(value: &[u8]) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Stamp {
        #[serde(default)]
        writes: Vec<String>,
    }
    serde_json::from_slice::<Stamp>(value)
        .map(|stamp| stamp.writes)
        .unwrap_or_default()
}

/// Whether `kv` holds the write `write_id`, or was written after it.
fn written_by(kv: Option<&KeyValue>, write_id: &str) -> bool {
    kv.is_some_and(|kv| writes_of(&kv.value).iter().any(|id| id == write_id))
}

/// A call to etcd waiting for its answer, kept whole to be sent again once.
#[derive(Debug)]
struct InFlight {
    pending: Pending,
    path: &'static str,
    body: Vec<u8>,
    /// Already sent twice: a second failure counts.
    retried: bool,
}

/// What a finished call brought back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdAnswer {
    /// `None`: the call ended without an answer (reset, timeout, no cluster).
    pub status: Option<u16>,
    pub body: Vec<u8>,
}

pub struct ClusterSync {
    plugin: Rc<Plugin>,
    vm_number: u64,
    token: Option<String>,
    /// What etcd held at the last read, by definition index: the webhooks
    /// with a record (or a write since); absent, none.
    known: HashMap<usize, Known>,
    /// A complete read has succeeded since the definitions last changed.
    has_read: bool,
    calls: HashMap<u32, InFlight>,
    holder: bool,
    next_lease_ms: u64,
    next_round_ms: u64,
    /// Rounds until deltas are looked for on every webhook, not only on
    /// the dirty list's (a net under a list entry that was lost).
    rounds_to_full_scan: u32,
    /// After a failed call, no round starts before this (but the regular one).
    quiet_until_ms: u64,
    state: SyncState,
    journal: Journal,
    membership: Membership,
    sweep: Sweep,
    /// This root context's name in etcd (owner of its journal).
    owner: String,
    /// Writes made so far (naming each).
    writes: u64,
    /// The revision the sweep's last decision was read at.
    sweep_revision: Option<i64>,
    /// The sync of the configuration this one replaced, while it retires.
    retiring: Option<Box<ClusterSync>>,
    /// Where the next round's page of the journal starts (empty: at its start).
    journal_cursor: Vec<u8>,
    /// The time of this sync's own deadlines (see `clock`).
    clock: SteadyClock,
    /// Takes whose outcome is unknown (no answer): sent again next round.
    unsure_takes: Vec<Taking>,
    /// Status writes whose outcome is unknown, by definition index: the next
    /// read tells whether the record names the write (applied) or not (its
    /// delta is put back); the webhook is not written meanwhile.
    unsure_writes: HashMap<usize, (String, Delta)>,
}

impl ClusterSync {
    /// `None` without `cluster_state` in the configuration.
    pub fn new(plugin: Rc<Plugin>, vm_number: u64, owner: String) -> Option<ClusterSync> {
        let config = plugin.config.cluster_state.as_ref()?;
        let journal = Journal::new(config, owner.clone());
        let membership = Membership::new(config, &owner, plugin.definitions());
        let sweep = Sweep::new(config.orphan_retention_s, config.sync_interval_ms);
        Some(ClusterSync {
            journal,
            membership,
            sweep,
            owner,
            writes: 0,
            sweep_revision: None,
            retiring: None,
            journal_cursor: Vec::new(),
            clock: SteadyClock::default(),
            unsure_takes: Vec::new(),
            unsure_writes: HashMap::new(),
            plugin,
            vm_number,
            token: None,
            known: HashMap::new(),
            has_read: false,
            calls: HashMap::new(),
            holder: false,
            next_lease_ms: 0,
            next_round_ms: 0,
            rounds_to_full_scan: 0,
            quiet_until_ms: 0,
            state: SyncState::default(),
        })
    }

    /// The sync of a new configuration of the same root context (a second
    /// `on_configure`). With the same `cluster_state`, the new one carries on
    /// the old one's work: its journal (same owner, lease and records: the
    /// engine's waiting deliveries keep them), its member entry (listing the
    /// new webhooks), its calls in flight. With another (or none), the old one
    /// retires: it deletes its records (the new journal writes them anew),
    /// revokes its leases, and ends once its calls have.
    pub fn reconfigure(
        previous: Option<ClusterSync>,
        plugin: Rc<Plugin>,
        vm_number: u64,
        owner: String,
    ) -> Option<ClusterSync> {
        let Some(mut old) = previous else {
            return ClusterSync::new(plugin, vm_number, owner);
        };
        if old.config() == plugin.config.cluster_state.as_ref() {
            old.carry_on(plugin);
            return Some(old);
        }
        old.retire();
        match ClusterSync::new(plugin, vm_number, owner) {
            Some(mut next) => {
                next.retiring = Some(Box::new(old));
                Some(next)
            }
            // No cluster_state any more: it retires in the new one's place.
            None => Some(old),
        }
    }

    /// Goes on with `plugin`'s definitions (the tenants' changed, or a new
    /// configuration of the same etcd): everything else (journal,
    /// owner, leases, calls in flight) stays; writes in flight follow their
    /// definition to its new index, those of a definition gone are dropped
    /// (their answers ignored); the records are read again at once.
    pub fn carry_on(&mut self, plugin: Rc<Plugin>) {
        let old = std::mem::replace(&mut self.plugin, plugin);
        let definitions = self.plugin.definitions();
        // Same id and fingerprint: the same webhook, maybe at another index.
        let moved = |index: usize| {
            let definition = old.definitions().get(index)?;
            definitions
                .iter()
                .position(|d| d.id == definition.id && d.fingerprint == definition.fingerprint)
        };
        self.calls.retain(|_, call| match &mut call.pending {
            Pending::Write { index, .. } => moved(*index).map(|now| *index = now).is_some(),
            _ => true,
        });
        self.unsure_writes = std::mem::take(&mut self.unsure_writes)
            .into_iter()
            .filter_map(|(index, write)| Some((moved(index)?, write)))
            .collect();
        self.membership.relist(definitions);
        self.known.clear();
        self.has_read = false;
        self.next_round_ms = 0;
    }

    /// Replaced by a sync of another `cluster_state`: deletes its journal's
    /// records, revokes its leases, polls no more.
    fn retire(&mut self) {
        self.holder = false;
        self.journal.release();
        self.membership.set_active(false);
        self.next_lease_ms = u64::MAX;
        self.next_round_ms = u64::MAX;
        self.quiet_until_ms = u64::MAX;
    }

    /// Now, for this sync's deadlines: never set back with the wall clock.
    fn steady_ms<H: Host>(&mut self, host: &H) -> u64 {
        self.clock.read(host.now_ms())
    }

    fn config(&self) -> Option<&EtcdConfig> {
        self.plugin.config.cluster_state.as_ref()
    }

    /// Whether the call with this token is ours (its whole answer is to be read).
    pub fn owns(&self, token: u32) -> bool {
        self.calls.contains_key(&token) || self.retiring.as_ref().is_some_and(|old| old.owns(token))
    }

    /// Whether this root context polls etcd for its Envoy.
    pub fn is_poller(&self) -> bool {
        self.holder
    }

    /// This root context goes away: another one polls at once.
    pub fn stop<H: Host>(&mut self, host: &mut H) {
        if let Some(old) = self.retiring.as_mut() {
            old.stop(host);
        }
        if self.holder {
            store::release_poller_lease(host, self.vm_number);
            self.holder = false;
        }
        self.journal.stop();
        self.membership.set_active(false);
        // No more rounds from here.
        self.next_lease_ms = u64::MAX;
        self.next_round_ms = u64::MAX;
        self.quiet_until_ms = u64::MAX;
    }

    /// Stopped, its journal flushed and its lease revoked: the root context may end.
    pub fn is_finished(&self) -> bool {
        self.calls.is_empty()
            && self.journal.is_finished()
            && self.membership.is_finished()
            && self.retiring.as_ref().is_none_or(|old| old.is_finished())
    }

    /// Called every `CHECK_INTERVAL_MS`: keeps the lease, writes the journal,
    /// and starts a round when one is due or a delta changed.
    pub fn tick<H: Host>(&mut self, host: &mut H, engine: &mut Engine) {
        if let Some(old) = self.retiring.as_mut() {
            old.tick(host, engine);
            if old.is_finished() {
                self.retiring = None;
            }
        }
        self.pump_journal(host, engine);
        self.poll(host);
        self.pump_membership(host);
    }

    /// Keeps this Envoy's member entry while this root context polls.
    fn pump_membership<H: Host>(&mut self, host: &mut H) {
        if self
            .calls
            .values()
            .any(|call| matches!(call.pending, Pending::Member(_)))
        {
            return;
        }
        self.membership.set_active(self.holder);
        let now = self.steady_ms(host);
        if let Some((path, body, call)) = self.membership.next(now) {
            self.send(host, path, body, Pending::Member(call));
        }
    }

    /// Sends the journal's next calls, if it has any (it keeps its own
    /// count of calls in flight: one write and one keep-alive at most).
    fn pump_journal<H: Host>(&mut self, host: &mut H, engine: &mut Engine) {
        loop {
            let now = self.steady_ms(host);
            let Some(request) = self.journal.next(host, engine, now) else {
                return;
            };
            let sent = self.send(
                host,
                request.path,
                request.body,
                Pending::Journal(request.call),
            );
            if !sent {
                // Refused at once: tried again at the next tick.
                return;
            }
        }
    }

    fn poll<H: Host>(&mut self, host: &mut H) {
        let Some(interval) = self.config().map(|c| c.sync_interval_ms) else {
            return;
        };
        let now = self.steady_ms(host);
        if now >= self.next_lease_ms {
            let ttl = interval.saturating_mul(LEASE_INTERVALS);
            // Shared by this Envoy's root contexts: in the wall clock's time.
            let wall = host.now_ms();
            let held = store::hold_poller_lease(host, self.vm_number, wall, ttl);
            if held && !self.holder {
                log::debug!("envoy-webhooks: VM {} polls etcd", self.vm_number);
                self.next_round_ms = now;
            }
            self.holder = held;
            self.next_lease_ms = now.saturating_add((interval / 2).max(CHECK_INTERVAL_MS));
        }
        if !self.holder || !self.calls.is_empty() {
            return;
        }
        let due = now >= self.next_round_ms;
        if !due && (now < self.quiet_until_ms || !store::any_dirty(host)) {
            return;
        }
        let range = due || !self.has_read;
        if range {
            self.next_round_ms = now.saturating_add(interval);
        } else {
            // Changes are written soon, but at most four times an interval:
            // a failing receiver costs etcd a few writes, not one per delivery.
            self.quiet_until_ms = now.saturating_add(interval / 4);
        }
        self.start(host, range);
    }

    fn start<H: Host>(&mut self, host: &mut H, range: bool) {
        let credentials = self
            .plugin
            .cluster_credentials
            .as_ref()
            .filter(|_| self.token.is_none())
            .cloned();
        if let Some((name, password)) = credentials {
            let body = etcd::authenticate_request(&name, &password);
            self.send(
                host,
                etcd::AUTHENTICATE_PATH,
                body,
                Pending::Authenticate { then_range: range },
            );
        } else if range {
            let prefix = self.records_prefix();
            self.send(
                host,
                etcd::RANGE_PATH,
                etcd::range_prefix_request(prefix.as_bytes()),
                Pending::Range,
            );
        } else {
            self.write_deltas(host);
        }
    }

    fn prefix(&self) -> &str {
        self.config().map_or("", |c| c.prefix.as_str())
    }

    fn records_prefix(&self) -> String {
        format!("{}webhooks/", self.prefix())
    }

    /// Takes the journaled deliveries of owners that are gone, for webhooks
    /// configured here (a few per round).
    fn adopt_orphans<H: Host>(
        &mut self,
        host: &mut H,
        owners: &[KeyValue],
        records: Vec<KeyValue>,
    ) {
        let owners_prefix = Journal::owners_prefix(self.prefix());
        let live: hashbrown::HashSet<&[u8]> = owners
            .iter()
            .filter_map(|kv| kv.key.strip_prefix(owners_prefix.as_bytes()))
            .collect();
        let handoff_prefix = Journal::handoff_prefix(self.prefix()).into_bytes();
        let mut takes = Vec::new();
        for record in records {
            // handoff/<owner>/<webhook>/<fingerprint>/<n>
            let Some(rest) = record.key.strip_prefix(handoff_prefix.as_slice()) else {
                continue;
            };
            let mut parts = rest.split(|b| *b == b'/');
            let (Some(owner), Some(webhook), Some(fingerprint)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if live.contains(owner) || owner == self.owner.as_bytes() {
                continue;
            }
            let known = std::str::from_utf8(fingerprint)
                .ok()
                .and_then(|hex| u64::from_str_radix(hex, 16).ok())
                .and_then(|fingerprint| self.plugin.resolve_fingerprint(fingerprint))
                .is_some_and(|(_, d)| d.id.as_bytes() == webhook);
            let mut liveness = owners_prefix.clone().into_bytes();
            liveness.extend_from_slice(owner);
            if !known {
                // For another configuration: an Envoy that has it adopts it,
                // or, when none has for the retention, the sweep removes it.
                let mut name = webhook.to_vec();
                name.push(b'/');
                name.extend_from_slice(fingerprint);
                self.sweep.journaled(&record, name, liveness);
                continue;
            }
            if takes.len() < MAX_ADOPTIONS_PER_ROUND {
                takes.push(Fetched::Take {
                    key: record.key,
                    liveness,
                });
            }
        }
        self.fetch(host, takes);
    }

    /// Where the journal's next page starts, after `page`: at its start
    /// again once a page came back short; past the rest of a live owner's
    /// records (and this worker's own), which no round takes.
    fn next_page(&self, owners: &[KeyValue], page: &[KeyValue]) -> Vec<u8> {
        let Some(last) = page.last().filter(|_| page.len() >= JOURNAL_PAGE_KEYS) else {
            return Vec::new();
        };
        let handoff_prefix = Journal::handoff_prefix(self.prefix()).into_bytes();
        let owners_prefix = Journal::owners_prefix(self.prefix()).into_bytes();
        let owner = last
            .key
            .strip_prefix(handoff_prefix.as_slice())
            .and_then(|rest| rest.split(|b| *b == b'/').next());
        let alive = owner.is_some_and(|owner| {
            owner == self.owner.as_bytes()
                || owners
                    .iter()
                    .any(|kv| kv.key.strip_prefix(owners_prefix.as_slice()) == Some(owner))
        });
        match owner {
            Some(owner) if alive => {
                let mut records = handoff_prefix;
                records.extend_from_slice(owner);
                records.push(b'/');
                etcd::prefix_end(&records)
            }
            _ => {
                let mut next = last.key.clone();
                next.push(0);
                next
            }
        }
    }

    /// Reads the values of records to take or remove (one transaction),
    /// once this Envoy's member entry is in place to hold the receipts.
    fn fetch<H: Host>(&mut self, host: &mut H, records: Vec<Fetched>) {
        if records.is_empty() || self.membership.lease().is_none() {
            return;
        }
        let keys: Vec<&[u8]> = records.iter().map(Fetched::key).collect();
        let body = etcd::txn_read_values(&keys);
        self.send(host, etcd::TXN_PATH, body, Pending::Fetch(records));
    }

    /// Takes or removes each fetched record that is still there, each with
    /// a receipt of its own.
    fn take_fetched<H: Host>(
        &mut self,
        host: &mut H,
        records: Vec<Fetched>,
        values: Vec<Vec<KeyValue>>,
    ) {
        let Some(lease) = self.membership.lease() else {
            return;
        };
        for (record, found) in records.into_iter().zip(values) {
            let Some(kv) = found.into_iter().next() else {
                // Gone since the read: taken or removed by another Envoy.
                continue;
            };
            self.writes = self.writes.saturating_add(1);
            let receipt = etcd::Receipt {
                key: format!("{}receipts/{}/{}", self.prefix(), self.owner, self.writes)
                    .into_bytes(),
                value: kv.value,
                lease,
            };
            let taking = match record {
                Fetched::Take { key, liveness } => Taking {
                    key,
                    mod_revision: kv.mod_revision,
                    liveness,
                    receipt,
                    removal: None,
                },
                Fetched::Remove(candidate) => {
                    let (Some(revision), Some(liveness)) =
                        (self.sweep_revision, candidate.liveness.clone())
                    else {
                        continue;
                    };
                    if kv.mod_revision != candidate.mod_revision {
                        // Changed since the sweep decided: kept.
                        continue;
                    }
                    Taking {
                        key: candidate.key.clone(),
                        mod_revision: candidate.mod_revision,
                        liveness,
                        receipt,
                        removal: Some((candidate, revision)),
                    }
                }
            };
            self.send_take(host, taking);
        }
    }

    /// Sends a take (again), its receipt under the member entry's lease.
    fn send_take<H: Host>(&mut self, host: &mut H, mut taking: Taking) {
        if let Some(lease) = self.membership.lease() {
            // A new lease since the first send: the receipt goes under it.
            taking.receipt.lease = lease;
        }
        let body = match &taking.removal {
            // Taken only if the owner is still gone when etcd applies the
            // take: an owner back since the read keeps it.
            None => etcd::txn_take_if_revision(
                &taking.key,
                taking.mod_revision,
                &taking.liveness,
                &taking.receipt,
            ),
            Some((_, revision)) => {
                let members = Membership::members_prefix(self.prefix()).into_bytes();
                etcd::txn_remove_if_unchanged(
                    &taking.key,
                    taking.mod_revision,
                    Some(&taking.liveness),
                    &members,
                    *revision,
                    Some(&taking.receipt),
                )
            }
        };
        self.send(host, etcd::TXN_PATH, body, Pending::Take(Box::new(taking)));
    }

    /// Deletes a receipt once what it receipted is made (or dead-lettered).
    fn forget<H: Host>(&mut self, host: &mut H, receipt: Vec<u8>) {
        let body = etcd::txn_write(&[], &[receipt], None);
        self.send(host, etcd::TXN_PATH, body, Pending::Forget);
    }

    fn key(&self, definition: &WebhookDefinition) -> String {
        format!(
            "{}{}/{:016x}",
            self.records_prefix(),
            definition.id,
            definition.fingerprint
        )
    }

    /// Starts a call; a call the host refuses fails at once (`false`).
    fn send<H: Host>(
        &mut self,
        host: &mut H,
        path: &'static str,
        body: Vec<u8>,
        pending: Pending,
    ) -> bool {
        self.dispatch(host, path, body, pending, false)
    }

    fn dispatch<H: Host>(
        &mut self,
        host: &mut H,
        path: &'static str,
        body: Vec<u8>,
        pending: Pending,
        retried: bool,
    ) -> bool {
        let Some(config) = self.config().cloned() else {
            return false;
        };
        let token = self.token.clone();
        let dispatched = host.dispatch(etcd::call(&config, path, &body, token.as_deref()));
        match dispatched {
            Ok(token) => {
                let call = InFlight {
                    pending,
                    path,
                    body,
                    retried,
                };
                self.calls.insert(token, call);
                true
            }
            Err(error) => {
                let why = format!("cannot call cluster '{}': {error:?}", config.cluster);
                let refused = EtcdError::Refused {
                    status: 0,
                    message: why.clone(),
                };
                match pending {
                    Pending::Journal(call) => {
                        let now = self.steady_ms(host);
                        let _ = self.journal.finished_call(call, Err(refused), now);
                        self.count_error(host, &format!("journal: {why}"));
                    }
                    Pending::Member(call) => {
                        let now = self.steady_ms(host);
                        let _ = self.membership.finished_call(call, Err(refused), now);
                        self.count_error(host, &format!("member entry: {why}"));
                    }
                    pending => self.failed(host, pending, &why),
                }
                false
            }
        }
    }

    /// The answer to one of our calls (see `owns`).
    pub fn call_finished<H: Host>(
        &mut self,
        host: &mut H,
        token: u32,
        answer: &EtcdAnswer,
        engine: &mut Engine,
    ) {
        if let Some(old) = self.retiring.as_mut().filter(|old| old.owns(token)) {
            old.call_finished(host, token, answer, engine);
            return;
        }
        let Some(call) = self.calls.remove(&token) else {
            return;
        };
        // No answer, or Envoy's or etcd's 5xx (a member just died, a leader
        // election): once more at once, which goes to another member.
        let transient = answer.status.is_none_or(|status| status >= 500);
        if transient && !call.retried {
            self.dispatch(host, call.path, call.body, call.pending, true);
            return;
        }
        let pending = call.pending;
        if let Pending::Journal(call) = pending {
            let result = etcd::answer_body(answer.status, &answer.body);
            let now = self.steady_ms(host);
            if let Err(error) = self.journal.finished_call(call, result, now) {
                self.count_error(host, &format!("journal: {error}"));
            }
            self.pump_journal(host, engine);
            return;
        }
        if let Pending::Member(call) = pending {
            let result = etcd::answer_body(answer.status, &answer.body);
            let now = self.steady_ms(host);
            if let Err(error) = self.membership.finished_call(call, result, now) {
                self.count_error(host, &format!("member entry: {error}"));
            }
            self.pump_membership(host);
            return;
        }
        let body = match answer.status {
            None => {
                let why = "no answer (etcd down, a timeout or a reset)";
                return self.failed(host, pending, why);
            }
            Some(200) => answer.body.as_slice(),
            Some(status) => {
                let error = etcd::parse_error(status, &answer.body);
                let expired = matches!(error, EtcdError::AuthExpired { .. });
                self.failed(host, pending, &error.to_string());
                if expired {
                    // Authenticate again at the next check.
                    self.token = None;
                    self.quiet_until_ms = 0;
                    self.next_round_ms = self.steady_ms(host);
                }
                return;
            }
        };
        match pending {
            Pending::Authenticate { then_range } => match etcd::parse_authenticate(body) {
                Ok(token) => {
                    self.token = Some(token);
                    self.start(host, then_range);
                }
                Err(error) => self.failed(
                    host,
                    Pending::Authenticate { then_range },
                    &error.to_string(),
                ),
            },
            Pending::Range => match etcd::parse_range(body) {
                Ok((_, records)) => {
                    let unconfigured = self.read(host, records);
                    self.note_unconfigured(&unconfigured);
                    self.write_deltas(host);
                    // Owners and records from one revision: a record written
                    // after the owners were read cannot look orphaned.
                    // A page of the journal: whatever its size, a round reads
                    // a bounded answer.
                    let owners = Journal::owners_prefix(self.prefix());
                    let records = Journal::handoff_prefix(self.prefix());
                    let body = etcd::txn_read_keys_page(
                        owners.as_bytes(),
                        records.as_bytes(),
                        &self.journal_cursor,
                        JOURNAL_PAGE_KEYS,
                    );
                    self.send(host, etcd::TXN_PATH, body, Pending::Orphans);
                }
                Err(error) => self.failed(host, Pending::Range, &error.to_string()),
            },
            Pending::Orphans => match etcd::parse_txn_ranges(body, 2) {
                Ok(mut ranges) => {
                    for taking in std::mem::take(&mut self.unsure_takes) {
                        self.send_take(host, taking);
                    }
                    let records = ranges.pop().unwrap_or_default();
                    let owners = ranges.pop().unwrap_or_default();
                    self.journal_cursor = self.next_page(&owners, &records);
                    self.adopt_orphans(host, &owners, records);
                    if self.sweep.is_due(host.now_ms()) {
                        let members = Membership::members_prefix(self.prefix());
                        let body = etcd::range_prefix_request(members.as_bytes());
                        self.send(host, etcd::RANGE_PATH, body, Pending::Members);
                    }
                }
                Err(error) => self.failed(host, Pending::Orphans, &error.to_string()),
            },
            Pending::Members => match etcd::parse_range(body) {
                Ok((revision, entries)) => self.remove_unconfigured(host, revision, &entries),
                Err(error) => self.failed(host, Pending::Members, &error.to_string()),
            },
            Pending::Fetch(records) => match etcd::parse_txn_ranges(body, records.len()) {
                Ok(values) => self.take_fetched(host, records, values),
                Err(error) => self.failed(host, Pending::Fetch(records), &error.to_string()),
            },
            Pending::Forget => {}
            Pending::Remove(candidate) => match etcd::parse_take(body) {
                Ok(Taken::Now(kv) | Taken::Earlier(kv)) => {
                    self.removed(host, engine, &candidate, &kv);
                }
                // Changed, or removed by another Envoy, or a member entry was
                // written since the read: kept.
                Ok(Taken::NotTaken) => {}
                Err(error) => self.failed(host, Pending::Remove(candidate), &error.to_string()),
            },
            Pending::Take(taking) => match etcd::parse_take(body) {
                // Taken now, or by this take sent before (its answer was
                // lost): ours either way.
                Ok(Taken::Now(kv) | Taken::Earlier(kv)) => {
                    let Taking {
                        key,
                        receipt,
                        removal,
                        ..
                    } = *taking;
                    let record = KeyValue { key, ..kv };
                    match removal {
                        Some((candidate, _)) => self.removed(host, engine, &candidate, &record),
                        None => self.adopted(host, engine, &record),
                    }
                    self.forget(host, receipt.key);
                }
                // Another Envoy took it first, its owner is back, or (a
                // removal) a member entry was written since the read.
                Ok(Taken::NotTaken) => {}
                Err(error) => self.failed(host, Pending::Take(taking), &error.to_string()),
            },
            Pending::Journal(_) | Pending::Member(_) => {}
            Pending::Write {
                index,
                delta,
                record,
                conflicts,
                write_id,
            } => match etcd::parse_txn(body) {
                Ok(TxnOutcome::Applied { revision }) => {
                    let earlier = self.known.get(&index).map(|k| k.writes.clone());
                    let writes = std::iter::once(write_id)
                        .chain(earlier.unwrap_or_default())
                        .take(WRITES_KEPT)
                        .collect();
                    self.known.insert(
                        index,
                        Known {
                            record: Some(*record.clone()),
                            revision,
                            writes,
                        },
                    );
                    self.follow(host, index, &record);
                }
                Ok(TxnOutcome::Conflict { current }) => {
                    let ours = written_by(current.as_ref(), &write_id);
                    let known = self.decode(host, index, current.as_ref());
                    let now_holds = known.record.clone();
                    self.known.insert(index, known);
                    if ours {
                        // Our own write: it applied, and its answer was lost
                        // (the call was sent again); other Envoys may have
                        // written since: the record as it is now.
                        self.follow(host, index, &now_holds.map_or(*record, |r| r));
                    } else if conflicts >= MAX_CONFLICTS {
                        self.put_back(host, index, &delta);
                    } else {
                        self.write(host, index, *delta, conflicts.saturating_add(1));
                    }
                }
                Err(error) => {
                    let pending = Pending::Write {
                        index,
                        delta,
                        record,
                        conflicts,
                        write_id,
                    };
                    self.failed(host, pending, &error.to_string());
                }
            },
        }
        if self.calls.is_empty() {
            store::publish_sync(host, &self.state);
        }
    }

    /// A complete read: every webhook's record, the local ones follow.
    /// Returns the records of webhooks not configured here.
    fn read<H: Host>(&mut self, host: &mut H, records: Vec<KeyValue>) -> Vec<KeyValue> {
        let now = host.now_ms();
        let plugin = self.plugin.clone();
        // Records found by the fingerprint their keys end with, not by a key
        // made for each webhook: a round costs what etcd holds, not a
        // formatted key per webhook (10,000 tenants' webhooks a second).
        let prefix = self.records_prefix();
        let mut by_index: HashMap<usize, KeyValue> = HashMap::new();
        let mut unconfigured = Vec::new();
        for kv in records {
            match record_index(&plugin, prefix.as_bytes(), &kv.key) {
                Some(index) => {
                    by_index.insert(index, kv);
                }
                None => unconfigured.push(kv),
            }
        }
        // Only the webhooks with a record, or with a write whose outcome is
        // unknown, have anything to do: the rest have no record and none is
        // known for them (`write` takes an absent entry as no record).
        self.known.clear();
        let unsure: Vec<usize> = self.unsure_writes.keys().copied().collect();
        for index in unsure {
            if let Some((write_id, delta)) = self.unsure_writes.remove(&index) {
                if !written_by(by_index.get(&index), &write_id) {
                    // It did not apply: written again from shared data.
                    self.put_back(host, index, &delta);
                }
            }
        }
        for (index, kv) in by_index {
            let known = self.decode(host, index, Some(&kv));
            if let Some(record) = &known.record {
                self.follow(host, index, record);
            }
            self.known.insert(index, known);
        }
        self.has_read = true;
        if let Some(since) = self.state.failing_since_ms {
            log::info!(
                "envoy-webhooks: cluster state: etcd answers again after {} s ({} error(s)); webhook status is shared again",
                now.saturating_sub(since) / 1000,
                self.state.errors
            );
        }
        self.state.failing_since_ms = None;
        self.state.synced_at_ms = Some(now);
        // Now, not when the round's last call ends: the journal's and the
        // member entry's calls may keep one in flight for a while.
        store::publish_sync(host, &self.state);
        unconfigured
    }

    /// Status records of webhooks not configured here: candidates for removal.
    fn note_unconfigured(&mut self, records: &[KeyValue]) {
        let prefix = self.records_prefix().into_bytes();
        for kv in records {
            if let Some(name) = kv.key.strip_prefix(prefix.as_slice()) {
                self.sweep.status_record(kv, name);
            }
        }
    }

    /// Removes the records no member has named for the retention.
    fn remove_unconfigured<H: Host>(&mut self, host: &mut H, revision: i64, entries: &[KeyValue]) {
        let candidates = match self.sweep.decide(host.now_ms(), entries) {
            Ok(candidates) => candidates,
            Err(key) => {
                let key = String::from_utf8_lossy(&key).into_owned();
                return self.count_error(
                    host,
                    &format!(
                        "etcd key {} is not a member entry; no record is removed while it is there",
                        Printable(&key)
                    ),
                );
            }
        };
        let members = Membership::members_prefix(self.prefix()).into_bytes();
        self.sweep_revision = Some(revision);
        let mut deliveries = Vec::new();
        for candidate in candidates {
            if candidate.is_delivery() {
                // Dead-lettered once removed: with a receipt, as a take.
                deliveries.push(Fetched::Remove(Box::new(candidate)));
                continue;
            }
            let body = etcd::txn_remove_if_unchanged(
                &candidate.key,
                candidate.mod_revision,
                candidate.liveness.as_deref(),
                &members,
                revision,
                None,
            );
            self.send(
                host,
                etcd::TXN_PATH,
                body,
                Pending::Remove(Box::new(candidate)),
            );
        }
        self.fetch(host, deliveries);
    }

    /// A record of a webhook no Envoy has, removed from etcd.
    fn removed<H: Host>(
        &mut self,
        host: &mut H,
        engine: &mut Engine,
        candidate: &Candidate,
        kv: &KeyValue,
    ) {
        let key = String::from_utf8_lossy(&kv.key).into_owned();
        let retention_s = self.config().map_or(0, |c| c.orphan_retention_s);
        if !candidate.is_delivery() {
            host.count(Counter::ClusterStateRecordsRemoved, 1);
            log::info!(
                "envoy-webhooks: cluster state: removed {}: no Envoy has had its webhook for {retention_s} s (orphan_retention_s)",
                Printable(&key)
            );
            return;
        }
        match handoff::orphan_of(&kv.value) {
            Some(delivery) => {
                let id = delivery.target.webhook().id.clone();
                host.count(Counter::Webhook(id, WebhookCounter::Orphaned), 1);
                log::info!(
                    "envoy-webhooks: cluster state: {} goes to the dead letters (orphaned): its Envoy went away and no Envoy has had its webhook for {retention_s} s",
                    Printable(&key)
                );
                engine.dead_letter_orphan(host, delivery);
            }
            None => self.count_error(
                host,
                &format!("removed {}: not a journaled delivery", Printable(&key)),
            ),
        }
    }

    /// A journaled delivery taken from an Envoy that went away: made here.
    fn adopted<H: Host>(&mut self, host: &mut H, engine: &mut Engine, record: &KeyValue) {
        match handoff::delivery_of(&record.value, &self.plugin) {
            Some(delivery) => engine.adopt(host, delivery),
            None => {
                let key = String::from_utf8_lossy(&record.key).into_owned();
                self.count_error(
                    host,
                    &format!(
                        "cannot adopt {}: not a delivery of a webhook configured here",
                        Printable(&key)
                    ),
                );
            }
        }
    }

    /// What etcd holds for the webhook at `index`, from a key-value (or its absence).
    fn decode<H: Host>(&mut self, host: &mut H, index: usize, kv: Option<&KeyValue>) -> Known {
        let Some(kv) = kv else {
            return Known {
                record: None,
                revision: 0,
                writes: Vec::new(),
            };
        };
        let fingerprint = self.plugin.definitions().get(index).map(|d| d.fingerprint);
        let record = WebhookHealth::decode(&kv.value)
            .filter(|record| Some(record.fingerprint) == fingerprint);
        if record.is_none() {
            let key = String::from_utf8_lossy(&kv.key).into_owned();
            self.count_error(
                host,
                &format!(
                    "etcd key {} does not hold a webhook record; this Envoy's state is kept and written over it",
                    Printable(&key)
                ),
            );
        }
        Known {
            record,
            revision: kv.mod_revision,
            writes: writes_of(&kv.value),
        }
    }

    /// The local record of the webhook at `index` follows `record`.
    fn follow<H: Host>(&mut self, host: &mut H, index: usize, record: &WebhookHealth) {
        let Some(definition) = self.plugin.definitions().get(index) else {
            return;
        };
        let now_s = host.now_ms() / 1000;
        let policy = &self.plugin.config.delivery;
        if let Some((_, Some(transition))) = store::adopt(host, definition, record, policy, now_s) {
            transition.log(&definition.id);
            host.set_status(&definition.id, transition.to);
        }
    }

    /// Writes the deltas of the webhooks on the dirty list (after a read:
    /// the revisions are known); now and then, of every webhook.
    fn write_deltas<H: Host>(&mut self, host: &mut H) {
        if !self.has_read {
            return;
        }
        let plugin = self.plugin.clone();
        let dirty = store::take_dirty(host);
        let indices: Vec<usize> = match dirty {
            Dirty::These(fingerprints) if self.rounds_to_full_scan > 0 => {
                self.rounds_to_full_scan -= 1;
                fingerprints
                    .iter()
                    .filter_map(|fingerprint| plugin.resolve_fingerprint(*fingerprint))
                    .map(|(index, _)| index)
                    .collect()
            }
            _ => {
                self.rounds_to_full_scan = FULL_SCAN_ROUNDS;
                (0..plugin.definitions().len()).collect()
            }
        };
        for index in indices {
            let Some(definition) = plugin.definitions().get(index) else {
                continue;
            };
            if self.unsure_writes.contains_key(&index) {
                // Written once the next read tells whether the last write
                // applied; back on the list meanwhile.
                store::mark_dirty(host, definition.fingerprint);
                continue;
            }
            let delta = store::take_delta(host, definition);
            if !delta.is_empty() {
                self.write(host, index, delta, 0);
            }
        }
    }

    /// Writes the record `delta` makes of what etcd holds, if that changes it.
    fn write<H: Host>(&mut self, host: &mut H, index: usize, delta: Delta, conflicts: u32) {
        let plugin = self.plugin.clone();
        let Some(definition) = plugin.definitions().get(index) else {
            return;
        };
        if !self.has_read {
            return self.put_back(host, index, &delta);
        }
        let known = self.known.get(&index).cloned().unwrap_or(Known {
            record: None,
            revision: 0,
            writes: Vec::new(),
        });
        let now_s = host.now_ms() / 1000;
        let policy = &plugin.config.delivery;
        let record = match &known.record {
            Some(current) => delta.apply(current, policy).0,
            // No record yet: this Envoy's own, which has the delta in it already.
            None => store::load(host, definition, now_s),
        };
        let record = WebhookHealth {
            delivered: 0,
            failed: 0,
            ..record
        };
        let unchanged = match &known.record {
            Some(current) => *current == record,
            None => {
                let initial = WebhookHealth::initial(definition, now_s);
                record.status == initial.status
                    && record.consecutive_failures == 0
                    && record.epoch == 0
            }
        };
        if unchanged {
            return;
        }
        let key = self.key(definition);
        self.writes = self.writes.saturating_add(1);
        let write_id = format!("{}-{}", self.owner, self.writes);
        let value = stamped(&record, &write_id, &known.writes);
        let body = etcd::txn_put_if_revision(key.as_bytes(), known.revision, &value);
        self.send(
            host,
            etcd::TXN_PATH,
            body,
            Pending::Write {
                index,
                delta: Box::new(delta),
                record: Box::new(record),
                conflicts,
                write_id,
            },
        );
    }

    fn put_back<H: Host>(&mut self, host: &mut H, index: usize, delta: &Delta) {
        if let Some(definition) = self.plugin.definitions().get(index) {
            // Back on the dirty list: written by a later round.
            store::restore_delta(host, definition, delta, &self.plugin.config.delivery);
        }
    }

    /// Counts an error and keeps it for `/status`.
    fn record_error<H: Host>(&mut self, host: &mut H, why: &str) {
        host.count(Counter::ClusterStateErrors, 1);
        self.state.errors = self.state.errors.saturating_add(1);
        self.state.last_error = Some(why.to_string());
    }

    /// Counts (and shows in `/status`) an error that does not stop the sync.
    fn count_error<H: Host>(&mut self, host: &mut H, why: &str) {
        self.record_error(host, why);
        let plugin = self.plugin.clone();
        plugin.warn("cluster_state", host.now_ms(), || {
            format!("cluster state: {}", Printable(why))
        });
    }

    /// A call failed: counted, logged once per outage, its delta kept.
    fn failed<H: Host>(&mut self, host: &mut H, pending: Pending, why: &str) {
        let now = host.now_ms();
        self.record_error(host, why);
        if self.state.failing_since_ms.is_none() {
            self.state.failing_since_ms = Some(now);
            log::warn!(
                "envoy-webhooks: cluster state: etcd call failed: {}; deliveries go on with this Envoy's state, changes are kept and written when etcd answers (logged once per outage; see cluster_state_errors)",
                Printable(why)
            );
        }
        match pending {
            // It may have applied (its answers lost): the next read tells.
            Pending::Write {
                index,
                delta,
                write_id,
                ..
            } => {
                self.unsure_writes.insert(index, (write_id, *delta));
            }
            // It may have applied: sent again next round, it finds its receipt.
            Pending::Take(taking) => self.unsure_takes.push(*taking),
            _ => {}
        }
        let interval = self.config().map_or(0, |c| c.sync_interval_ms);
        self.quiet_until_ms = self.steady_ms(host).saturating_add(interval);
        store::publish_sync(host, &self.state);
    }
}

/// The index of the definition whose status record `key` is
/// (`{records prefix}{id}/{fingerprint:016x}`, as `ClusterSync::key` makes
/// it); `None` for a webhook not configured here.
fn record_index(plugin: &Plugin, prefix: &[u8], key: &[u8]) -> Option<usize> {
    let name = std::str::from_utf8(key.strip_prefix(prefix)?).ok()?;
    let (id, fingerprint) = name.rsplit_once('/')?;
    if fingerprint.len() != 16 {
        return None;
    }
    let fingerprint = u64::from_str_radix(fingerprint, 16).ok()?;
    let (index, definition) = plugin.resolve_fingerprint(fingerprint)?;
    (definition.id == id).then_some(index)
}
