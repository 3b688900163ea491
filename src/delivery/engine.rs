//! The delivery engine: every decision between "this event matched these
//! webhooks" and "the delivery succeeded, was dead-lettered or was lost":
//! attempts, retries, the bounds (call slots, retry queue, held bytes, work per
//! callback), dead letters, the webhooks' health, the counts and the pending
//! view for the admin API.
//!
//! It is plain Rust over a small [`Host`]: the proxy-wasm root context only
//! forwards its callbacks here, and tests drive it with a fake host.
//!
//! The paths a delivery can take, each bounded:
//! - `accept` → `attempt` (once; or `dead_letter` when the budget is full)
//! - `attempt` → a call in flight, or `park` (slots or this callback's budget
//!   used up), or `dead_letter` (the webhook is `FAILED`), or `failed`
//!   (the call could not be started)
//! - `park` → the retry queue; what that pushes out goes to `dead_letter`
//! - `dead_letter` → `attempt` of a new dead-letter delivery, or `lose`.
//!   A dead-letter delivery is never dead-lettered again: it is lost
//!   instead, so `attempt → park → dead_letter → attempt` ends after one turn.

use std::rc::Rc;

use hashbrown::HashMap;

use super::attempts::{self, Attempt, AttemptLog};
use super::budget::{self, HeldBytes};
use super::call::{self, Answer, CallOutcome};
use super::dead_letter::{self, FailedDelivery, Reason};
use super::message::QueuedEvent;
use super::queue::{Delivery, RetryQueue, Target, WebhookRef};
use super::rate_limit;
use super::retry::{self, RetryDecision};
use super::signature;
use crate::config::{WebhookDefinition, WebhookUrl};
use crate::host::{Call, Counter, DispatchError, Host, WebhookCounter};
use crate::logging::Printable;
use crate::plugin::Plugin;
use crate::status::Status;
use crate::webhook::delta::Outcome;
use crate::webhook::health::{Transition, WebhookHealth};
use crate::webhook::store;

/// While deliveries wait, the tick comes at least this often (to publish the
/// queue for the admin API and to notice freed call slots).
const MAX_TICK_MS: u64 = 1_000;
pub const MIN_TICK_MS: u64 = 10;
/// A webhook's health read from shared data in the last this many ms, and
/// clean then (enabled, no failure, not paused), is taken as it was: the
/// happy path reads nothing. A pause, or failures recorded by another worker,
/// are seen here within this time; a webhook coming back is seen at once (its
/// health was not clean, so it is read).
const HEALTH_FRESH_MS: u64 = 100;
/// How long successful deliveries may wait before they are added to the shared counts.
const FLUSH_TICK_MS: u64 = 200;
/// How often a worker publishes its retry queue for the admin API.
const PUBLISH_INTERVAL_MS: u64 = 250;
/// How soon a delivery that found every call slot taken tries again.
const SLOT_WAIT_MS: u64 = 50;
/// How often a retry that came due while its webhook is paused looks again.
const PAUSED_WAIT_MS: u64 = 1_000;
/// A call the host could not start for now (not an unknown cluster) is
/// started again this often, this many times, before it counts as a failed
/// attempt.
const MAX_DISPATCH_FAILURES: u32 = 5;
const DISPATCH_RETRY_MS: u64 = 200;
/// Calls started, and bytes handed to the host, in one callback at most; the
/// rest wait for the next tick. A worker serves the platform's requests between
/// callbacks: a burst of deliveries (one big event matching a thousand
/// webhooks) must not hold it for long. 4 MiB is about a millisecond of copying
/// (and of signing, where a webhook signs).
pub const MAX_TURN_CALLS: usize = 100;
pub const MAX_TURN_BYTES: usize = 4 * 1024 * 1024;
/// A dead-letter record's size beyond its event: ids, error text, field names.
const RECORD_OVERHEAD_BYTES: usize = 1024;

/// A call waiting for its answer.
struct InFlight {
    delivery: Delivery,
    /// What the call counts against the held-bytes budget.
    bytes: usize,
    started_ms: u64,
    /// The CAS value of the webhook's record when the call was made, if the
    /// webhook was then ENABLED with no failures. If the record still has it
    /// when the call succeeds, the success changes nothing but the count.
    clean_version: Option<u32>,
}

/// What the deliveries of one event to several webhooks share: one copy each.
struct SharedEvent {
    body: Rc<[u8]>,
    headers: Rc<[(String, String)]>,
    request_id: Option<String>,
    /// Handed in by an operator, with this `webhook-id`.
    injected: Option<String>,
}

/// One worker's deliveries.
pub struct Engine {
    plugin: Option<Rc<Plugin>>,
    /// This VM's number, naming its published pending view.
    vm_number: u64,
    in_flight: HashMap<u32, InFlight>,
    in_flight_bytes: usize,
    retries: RetryQueue,
    /// Successful deliveries not yet added to the shared counts, by webhook.
    unflushed_delivered: HashMap<WebhookRef, u64>,
    tick_ms: u64,
    published_ms: u64,
    /// The last published summary had deliveries in it.
    published_nonempty: bool,
    /// The queue changed since the last publication.
    summary_stale: bool,
    /// Calls started and bytes sent in the current callback.
    turn_calls: usize,
    turn_bytes: usize,
    /// What this worker last added to the `held_bytes` gauge.
    held_reported: i64,
    /// Envoy is removing this root context (`stop`): nothing waits any more.
    stopping: bool,
    /// With `cluster_state`: waiting deliveries are journaled in etcd.
    journaling: bool,
    journal_next: u64,
    /// Journaled deliveries that were waiting (or failed again) after the
    /// filter stopped: handed off only once the journal says etcd holds their
    /// record (`hand_off`), dead-lettered otherwise.
    leaving: Vec<Delivery>,
    /// Each webhook's health as last read, by fingerprint.
    health_cache: HashMap<u64, CachedHealth>,
    attempt_log: AttemptLog,
    /// Per rate-limited webhook (by fingerprint): the next free slot, Unix ms,
    /// so that throttled deliveries wait in line, one interval apart, instead
    /// of all waking at once.
    throttle_next_ms: HashMap<u64, u64>,
}

/// A webhook's health as this worker last read it from shared data.
#[derive(Default)]
struct CachedHealth {
    /// As decoded, with its CAS value.
    record: Option<(u32, WebhookHealth)>,
    /// Unix ms of the read; 0 once this worker wrote the record since.
    read_ms: u64,
}

impl CachedHealth {
    /// The record, if it was read within `HEALTH_FRESH_MS` and was clean then.
    fn fresh_clean(&self, now_ms: u64, fingerprint: u64) -> Option<&(u32, WebhookHealth)> {
        // A clock that stepped back makes no read fresh for longer.
        let fresh = self.read_ms != 0
            && now_ms
                .checked_sub(self.read_ms)
                .is_some_and(|age| age < HEALTH_FRESH_MS);
        self.record.as_ref().filter(|(_, health)| {
            fresh
                && health.fingerprint == fingerprint
                && health.status == Status::Enabled
                && health.consecutive_failures == 0
                && !health.is_paused()
        })
    }
}

impl Default for Engine {
    fn default() -> Self {
        Engine::new(0)
    }
}

impl Engine {
    pub fn new(vm_number: u64) -> Engine {
        Engine {
            plugin: None,
            vm_number,
            in_flight: HashMap::new(),
            in_flight_bytes: 0,
            retries: RetryQueue::new(usize::MAX, usize::MAX),
            unflushed_delivered: HashMap::new(),
            tick_ms: 0,
            published_ms: 0,
            published_nonempty: false,
            summary_stale: false,
            turn_calls: 0,
            turn_bytes: 0,
            stopping: false,
            journaling: false,
            journal_next: 0,
            leaving: Vec::new(),
            health_cache: HashMap::new(),
            held_reported: 0,
            attempt_log: AttemptLog::default(),
            throttle_next_ms: HashMap::new(),
        }
    }

    /// The VM's number, once its delivery queue is registered.
    pub fn set_vm_number(&mut self, vm_number: u64) {
        self.vm_number = vm_number;
    }

    pub fn plugin(&self) -> Option<&Rc<Plugin>> {
        self.plugin.as_ref()
    }

    /// Webhook records were changed on this worker outside the engine (an
    /// operator's pause or enable): the next attempts read them.
    pub fn forget_health(&mut self) {
        for cache in self.health_cache.values_mut() {
            cache.read_ms = 0;
        }
    }

    /// The tick period was set by someone else: the next `schedule_tick` sets it again.
    pub fn forget_tick(&mut self) {
        self.tick_ms = u64::MAX;
    }

    /// Deliveries waiting for a retry.
    pub fn pending(&self) -> usize {
        self.retries.len()
    }

    /// Calls waiting for their answer.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Bytes this worker's root holds: calls in flight and deliveries waiting.
    pub fn held_bytes(&self) -> usize {
        self.in_flight_bytes.saturating_add(self.retries.bytes())
    }

    /// A configuration was loaded: health records are created (or started
    /// afresh for changed definitions), gauges set, the queue's bounds applied.
    pub fn configure<H: Host>(&mut self, host: &mut H, plugin: Rc<Plugin>) {
        let now_s = host.now_ms() / 1000;
        self.health_cache.clear();
        // A tenant's webhook whose fingerprint the last plugin had already has
        // its record (a record changes only with its fingerprint): a tenant
        // change reads and writes the changed ones, not every tenant's.
        let before: hashbrown::HashSet<u64> = self
            .plugin
            .as_ref()
            .map(|old| {
                let tenants = old.definitions().iter().enumerate();
                tenants
                    .filter(|(index, _)| old.is_tenants(*index))
                    .map(|(_, d)| d.fingerprint)
                    .collect()
            })
            .unwrap_or_default();
        for (index, definition) in plugin.definitions().iter().enumerate() {
            if plugin.is_tenants(index) && before.contains(&definition.fingerprint) {
                continue;
            }
            let health = store::update(host, definition, now_s, |_| None)
                .map(|(health, _)| health)
                .unwrap_or_else(|| store::load(host, definition, now_s));
            host.set_status(&definition.id, health.status);
        }
        let policy = &plugin.config.delivery;
        let evicted = self
            .retries
            .set_bounds(policy.max_pending, policy.max_pending_bytes);
        self.plugin = Some(plugin.clone());
        self.start_turn();
        self.handle_evicted(host, &plugin, evicted);
        self.end_turn(host);
    }

    /// A matched event arrives from a request: its deliveries start now.
    pub fn accept<H: Host>(&mut self, host: &mut H, event: QueuedEvent) {
        let Some(plugin) = self.plugin.clone() else {
            return;
        };
        self.start_turn();
        let shared = SharedEvent {
            body: event.body,
            headers: event.headers,
            request_id: event.request_id,
            injected: event.message_id,
        };
        for target in event.targets {
            self.accept_one(host, &plugin, target.fingerprint, &shared);
        }
        self.end_turn(host);
    }

    /// The answer to call `token`: `None` when the call ended without one
    /// (reset, timeout, an answer the host would not hand over).
    pub fn call_finished<H: Host>(&mut self, host: &mut H, token: u32, answer: Option<&Answer>) {
        let Some(call) = self.in_flight.remove(&token) else {
            return;
        };
        self.in_flight_bytes = self.in_flight_bytes.saturating_sub(call.bytes);
        let Some(plugin) = self.plugin.clone() else {
            return;
        };
        self.start_turn();
        let elapsed_ms = host.now_ms().saturating_sub(call.started_ms);
        let mut outcome =
            CallOutcome::from_answer(answer, elapsed_ms, plugin.config.delivery.timeout_ms);
        // Only a receiver Envoy could not reach needs its destination looked up.
        if matches!(outcome, CallOutcome::NotReached(_)) {
            if let Some((url, cluster)) = Self::destination(&plugin, &call.delivery) {
                if url.https {
                    outcome = outcome.over_tls(cluster);
                }
            }
        }
        if !call.delivery.target.is_dead_letter() {
            let status = match outcome {
                CallOutcome::Delivered | CallOutcome::Status { .. } => answer
                    .and_then(|a| a.status.as_deref())
                    .and_then(|s| s.parse().ok()),
                _ => None,
            };
            self.record_attempt(
                &call.delivery,
                call.started_ms,
                status,
                elapsed_ms,
                &outcome,
            );
        }
        if outcome == CallOutcome::Delivered {
            self.succeeded(host, &plugin, call.delivery, call.clean_version);
        } else {
            self.failed(host, &plugin, call.delivery, outcome);
        }
        // A freed call slot may let a parked delivery go.
        if !self.retries.is_empty() {
            self.run_due(host);
        }
        self.end_turn(host);
    }

    /// Envoy is removing this root context (`on_done`): every delivery
    /// waiting for a retry goes to the dead letters now, with reason
    /// `shutdown` (dead letters waiting for a retry get one last attempt),
    /// and a failed attempt from now on is not retried. Journaled ones wait
    /// for the journal's last write (`hand_off`).
    pub fn stop<H: Host>(&mut self, host: &mut H) {
        let Some(plugin) = self.plugin.clone() else {
            return;
        };
        self.stopping = true;
        self.start_turn();
        let waiting = self.retries.remove_where(|_| true);
        for delivery in waiting {
            if delivery.journal.is_some() {
                // Handed off or dead-lettered once the journal wrote what it can.
                self.leaving.push(delivery);
            } else if delivery.target.is_dead_letter() {
                self.attempt(host, &plugin, delivery);
            } else {
                Self::count_for(host, &delivery, WebhookCounter::Dropped);
                self.dead_letter(host, &plugin, &delivery, Reason::Shutdown);
            }
        }
        let now_ms = host.now_ms();
        self.publish_attempts(host, now_ms, true);
        self.end_turn(host);
    }

    /// Journal waiting deliveries for the cluster state (see `journaled`).
    pub fn set_journaling(&mut self, on: bool) {
        self.journaling = on;
    }

    /// Every journaled delivery this worker still holds (waiting, in flight,
    /// or leaving a stopped filter), by journal number.
    pub fn journaled(&self) -> impl Iterator<Item = (u64, &Delivery)> {
        let waiting = self.retries.iter();
        let flying = self.in_flight.values().map(|call| &call.delivery);
        waiting
            .chain(flying)
            .chain(self.leaving.iter())
            .filter_map(|delivery| Some((delivery.journal?, delivery)))
    }

    /// The filter stopped and the journal wrote what it could: the leaving
    /// deliveries whose record etcd holds (`in_etcd`) are handed off to
    /// another Envoy, the rest go to the dead letters (reason `shutdown`),
    /// or are counted lost. Returns the journal numbers handed off.
    pub fn hand_off<H: Host>(&mut self, host: &mut H, in_etcd: impl Fn(u64) -> bool) -> Vec<u64> {
        let leaving = std::mem::take(&mut self.leaving);
        let Some(plugin) = self.plugin.clone() else {
            return Vec::new();
        };
        let mut handed = Vec::new();
        self.start_turn();
        for delivery in leaving {
            match delivery.journal {
                Some(number) if in_etcd(number) => {
                    Self::count_for(host, &delivery, WebhookCounter::HandedOff);
                    handed.push(number);
                }
                _ => {
                    Self::count_for(host, &delivery, WebhookCounter::Dropped);
                    self.dead_letter(host, &plugin, &delivery, Reason::Shutdown);
                }
            }
        }
        self.end_turn(host);
        handed
    }

    /// Deliveries of a stopped filter waiting for `hand_off`.
    pub fn is_leaving(&self) -> bool {
        !self.leaving.is_empty()
    }

    /// A delivery an Envoy that went away left waiting: made here now.
    pub fn adopt<H: Host>(&mut self, host: &mut H, mut delivery: Delivery) {
        let Some(plugin) = self.plugin.clone() else {
            return;
        };
        delivery.journal = None;
        Self::count_for(host, &delivery, WebhookCounter::Adopted);
        self.start_turn();
        if self.stopping {
            self.park(host, &plugin, delivery, 0);
        } else {
            self.attempt(host, &plugin, delivery);
        }
        self.end_turn(host);
    }

    /// A journaled delivery of a webhook no Envoy has any more: to the dead
    /// letters, with reason `orphaned` (its webhook is not configured here).
    pub fn dead_letter_orphan<H: Host>(&mut self, host: &mut H, delivery: Delivery) {
        let Some(plugin) = self.plugin.clone() else {
            return;
        };
        self.start_turn();
        self.dead_letter(host, &plugin, &delivery, Reason::Orphaned);
        self.end_turn(host);
    }

    /// No call in flight and nothing waiting (nor leaving).
    pub fn is_idle(&self) -> bool {
        self.in_flight.is_empty() && self.retries.is_empty() && self.leaving.is_empty()
    }

    pub fn tick<H: Host>(&mut self, host: &mut H) {
        self.start_turn();
        self.run_due(host);
        self.end_turn(host);
    }

    fn start_turn(&mut self) {
        self.turn_calls = 0;
        self.turn_bytes = 0;
    }

    /// Tells the requests what the root holds, and the gauge.
    fn end_turn<H: Host>(&mut self, host: &mut H) {
        let held = self.held_bytes();
        let mut warnings_held = false;
        if let Some(plugin) = &self.plugin {
            plugin.held.set_in_root(held);
            warnings_held = plugin.holds_back_warnings();
        }
        if (warnings_held || self.attempt_log.has_changes()) && self.tick_ms == 0 {
            // The held-back warnings are summed up, and the attempt log
            // published, by a later tick.
            self.schedule_tick(host);
        }
        let held = i64::try_from(held).unwrap_or(i64::MAX);
        host.add_held_bytes(held.saturating_sub(self.held_reported));
        self.held_reported = held;
    }

    /// Whether a delivery costing `bytes` fits the worker's budget now.
    fn fits(&self, held: &HeldBytes, bytes: usize) -> bool {
        held.set_in_root(self.held_bytes());
        held.fits(bytes)
    }

    fn accept_one<H: Host>(
        &mut self,
        host: &mut H,
        plugin: &Plugin,
        fingerprint: u64,
        event: &SharedEvent,
    ) {
        let now_ms = host.now_ms();
        let Some(webhook) = plugin
            .resolve_fingerprint(fingerprint)
            .and_then(|(index, _)| plugin.webhook_ref(index))
            .cloned()
        else {
            host.count(Counter::DeliveriesDiscarded, 1);
            plugin.warn("discarded", now_ms, || {
                "a delivery queued under a previous configuration was not made".to_string()
            });
            return;
        };
        let delivery = Delivery {
            target: Target::Webhook(webhook),
            // Computed when first needed (signing, dead letters): hashing every body costs.
            message_id: event.injected.clone().unwrap_or_default(),
            body: event.body.clone(),
            request_id: event.request_id.clone(),
            headers: event.headers.clone(),
            attempts: 0,
            dispatch_failures: 0,
            first_attempt_at_ms: now_ms,
            last_error: None,
            epoch: 0,
            journal: None,
            throttled: false,
        };
        if event.injected.is_some() {
            Self::count_for(host, &delivery, WebhookCounter::Injected);
        }
        if !self.fits(&plugin.held, delivery.cost_bytes()) {
            Self::count_for(host, &delivery, WebhookCounter::Dropped);
            self.dead_letter(host, plugin, &delivery, Reason::MemoryLimit);
            return;
        }
        self.attempt(host, plugin, delivery);
    }

    /// Where `delivery` was sent: its URL and cluster.
    fn destination<'p>(
        plugin: &'p Plugin,
        delivery: &Delivery,
    ) -> Option<(&'p WebhookUrl, &'p str)> {
        match &delivery.target {
            Target::Webhook(webhook) => plugin
                .resolve(webhook)
                .map(|(_, definition)| (&definition.url, definition.cluster.as_str())),
            Target::DeadLetter(_) => plugin
                .config
                .dead_letter
                .as_ref()
                .map(|destination| (&destination.url, destination.cluster.as_str())),
        }
    }

    /// Counts for the webhook `delivery` is for.
    fn count_for<H: Host>(host: &mut H, delivery: &Delivery, counter: WebhookCounter) {
        host.count(
            Counter::Webhook(delivery.target.webhook().id.clone(), counter),
            1,
        );
    }

    /// Makes the next attempt of `delivery`, or parks it while every call
    /// slot (or this callback's budget) is taken.
    fn attempt<H: Host>(&mut self, host: &mut H, plugin: &Plugin, mut delivery: Delivery) {
        let now_ms = host.now_ms();
        // A dead letter carries its whole record: it goes out even when its
        // webhook is not (or no longer) configured here.
        let resolved = plugin.resolve(delivery.target.webhook());
        if resolved.is_none() && !delivery.target.is_dead_letter() {
            host.count(Counter::DeliveriesDiscarded, 1);
            plugin.warn("discarded", now_ms, || {
                format!(
                    "delivery of request_id={} not made: its webhook changed in a configuration reload",
                    Printable(delivery.request_id.as_deref().unwrap_or("-"))
                )
            });
            return;
        }
        let budget_used = self.turn_calls >= MAX_TURN_CALLS || self.turn_bytes >= MAX_TURN_BYTES;
        if budget_used && !self.stopping {
            // Enough for this callback: the next tick goes on.
            self.park(host, plugin, delivery, now_ms);
            return;
        }
        let mut clean_version = None;
        let webhook = match (&delivery.target, resolved) {
            (Target::Webhook(_), Some(resolved)) => Some(resolved),
            _ => None,
        };
        if let Some((_, definition)) = webhook {
            let cache = self.health_cache.entry(definition.fingerprint).or_default();
            let (health, version) = match cache.fresh_clean(now_ms, definition.fingerprint) {
                Some((version, health)) => (health.clone(), Some(*version)),
                None => {
                    cache.read_ms = now_ms;
                    store::load_versioned(host, definition, now_ms / 1000, &mut cache.record)
                }
            };
            delivery.epoch = health.epoch;
            if health.status == Status::Enabled && health.consecutive_failures == 0 {
                clean_version = version;
            }
            if health.is_paused() {
                if delivery.attempts == 0 {
                    // A paused receiver is not called, and must not flood the dead letters.
                    Self::count_for(host, &delivery, WebhookCounter::Paused);
                } else {
                    // Its retry waits for the end of the pause.
                    self.park(
                        host,
                        plugin,
                        delivery,
                        now_ms.saturating_add(PAUSED_WAIT_MS),
                    );
                }
                return;
            }
            if !health.status.delivers() {
                Self::count_for(host, &delivery, WebhookCounter::Dropped);
                self.dead_letter(host, plugin, &delivery, Reason::WebhookFailed);
                return;
            }
        }
        let policy = &plugin.config.delivery;
        if self.in_flight.len() >= policy.max_in_flight && !self.stopping {
            self.park(host, plugin, delivery, now_ms.saturating_add(SLOT_WAIT_MS));
            return;
        }
        if let Some((_, definition)) = webhook.filter(|_| !self.stopping) {
            if let Some(limit) = definition.rate_limit {
                if let Err(wait_ms) = rate_limit::take(host, &definition.id, limit, now_ms) {
                    if !delivery.throttled {
                        delivery.throttled = true;
                        Self::count_for(host, &delivery, WebhookCounter::Throttled);
                    }
                    // In line behind this worker's other throttled deliveries.
                    let next = self
                        .throttle_next_ms
                        .entry(definition.fingerprint)
                        .or_default();
                    let due = now_ms.saturating_add(wait_ms).max(*next);
                    *next = due.saturating_add(rate_limit::interval_ms(limit));
                    self.park(host, plugin, delivery, due);
                    return;
                }
            }
        }
        let propagated = delivery.headers.clone();
        let (cluster, mut headers) = match webhook {
            Some((_, definition)) => (
                definition.cluster.as_str(),
                call::request_headers(definition),
            ),
            None => {
                let Some(destination) = &plugin.config.dead_letter else {
                    self.lose(
                        host,
                        plugin,
                        &delivery,
                        "the dead_letter destination is no longer configured",
                    );
                    return;
                };
                (
                    destination.cluster.as_str(),
                    call::destination_headers(&destination.url, &destination.headers),
                )
            }
        };
        // The trace context of the platform's request; a header the
        // operator configured for the destination keeps its value.
        for (name, value) in propagated.iter() {
            if !headers.iter().any(|(configured, _)| configured == name) {
                headers.push((name.as_str(), value.as_str()));
            }
        }
        let secrets = webhook.map_or(&[][..], |(index, _)| plugin.secrets(index));
        // Every delivery to a webhook carries its `webhook-id`, signed or
        // not: receivers (and a redrive) de-duplicate on it.
        let identified = !secrets.is_empty() || !delivery.target.is_dead_letter();
        if identified && delivery.message_id.is_empty() {
            delivery.message_id = signature::message_id(host.random_id());
        }
        if identified {
            headers.push(("webhook-id", delivery.message_id.as_str()));
        }
        let timestamp;
        let signature_value;
        if !secrets.is_empty() {
            timestamp = (now_ms / 1000).to_string();
            signature_value = signature::signature_header(
                secrets,
                &delivery.message_id,
                now_ms / 1000,
                &delivery.body,
            );
            headers.push(("webhook-timestamp", timestamp.as_str()));
            headers.push(("webhook-signature", signature_value.as_str()));
        }
        let dispatched = host.dispatch(Call {
            cluster,
            headers,
            body: &delivery.body,
            timeout_ms: policy.timeout_ms,
        });
        if let Err(DispatchError::Busy) = dispatched {
            // The dynamic forward proxy fails a call from a root context to a
            // host it has not resolved yet, while it resolves it: try again soon.
            if delivery.dispatch_failures < MAX_DISPATCH_FAILURES {
                delivery.dispatch_failures = delivery.dispatch_failures.saturating_add(1);
                self.park(
                    host,
                    plugin,
                    delivery,
                    now_ms.saturating_add(DISPATCH_RETRY_MS),
                );
                return;
            }
        }
        delivery.attempts = delivery.attempts.saturating_add(1);
        self.turn_calls = self.turn_calls.saturating_add(1);
        self.turn_bytes = self.turn_bytes.saturating_add(delivery.body.len());
        if delivery.attempts > 1 && !delivery.target.is_dead_letter() {
            Self::count_for(host, &delivery, WebhookCounter::Retried);
        }
        match dispatched {
            Ok(token) => {
                let bytes = delivery.cost_bytes();
                self.in_flight_bytes = self.in_flight_bytes.saturating_add(bytes);
                let call = InFlight {
                    delivery,
                    bytes,
                    started_ms: now_ms,
                    clean_version,
                };
                if let Some(replaced) = self.in_flight.insert(token, call) {
                    // The host reused a token still in use: never expected; its
                    // call's outcome is lost, so the delivery is counted as lost.
                    self.in_flight_bytes = self.in_flight_bytes.saturating_sub(replaced.bytes);
                    self.lose(
                        host,
                        plugin,
                        &replaced.delivery,
                        "the host reused its call's token",
                    );
                }
            }
            Err(error) => {
                let cluster = cluster.to_string();
                let id = delivery.target.webhook().id.clone();
                plugin.warn("cannot_call", now_ms, || {
                    let why = match &error {
                        DispatchError::Busy => "busy".to_string(),
                        DispatchError::Refused(why) => why.clone(),
                    };
                    format!(
                        "webhook {id}: cannot call cluster '{}' ({}): define a cluster of that name in Envoy, or set the \"cluster\" field to one",
                        Printable(&cluster),
                        Printable(&why)
                    )
                });
                let outcome = CallOutcome::CannotCall { cluster };
                if !delivery.target.is_dead_letter() {
                    self.record_attempt(&delivery, now_ms, None, 0, &outcome);
                }
                self.failed(host, plugin, delivery, outcome);
            }
        }
    }

    /// Adds an attempt of `delivery` (to its webhook) to the attempt log.
    fn record_attempt(
        &mut self,
        delivery: &Delivery,
        started_ms: u64,
        status: Option<u16>,
        latency_ms: u64,
        outcome: &CallOutcome,
    ) {
        let error = (*outcome != CallOutcome::Delivered).then(|| outcome.to_string());
        self.attempt_log.record(
            &delivery.target.webhook().id,
            &Attempt {
                at_ms: started_ms,
                attempt: delivery.attempts,
                status,
                latency_ms,
                error: error.as_deref(),
                message_id: Some(delivery.message_id.as_str()).filter(|id| !id.is_empty()),
                request_id: delivery.request_id.as_deref(),
            },
        );
    }

    /// Publishes the attempt logs that changed (at most every 250 ms unless `force`).
    fn publish_attempts<H: Host>(&mut self, host: &mut H, now_ms: u64, force: bool) {
        for (id, log) in self.attempt_log.take_changes(now_ms, force) {
            store::publish_attempts(host, self.vm_number, &id, &log);
        }
    }

    /// Queues `delivery` for `due_ms`, dead-lettering whatever that pushes out.
    fn park<H: Host>(
        &mut self,
        host: &mut H,
        plugin: &Plugin,
        mut delivery: Delivery,
        due_ms: u64,
    ) {
        if self.stopping {
            // Nothing waits in a root context that is going away.
            if delivery.journal.is_some() {
                // Handed off once the journal has written it (`hand_off`).
                self.leaving.push(delivery);
            } else if delivery.target.is_dead_letter() {
                self.lose(
                    host,
                    plugin,
                    &delivery,
                    "Envoy stopped this worker's filter",
                );
            } else {
                Self::count_for(host, &delivery, WebhookCounter::Dropped);
                self.dead_letter(host, plugin, &delivery, Reason::Shutdown);
            }
            return;
        }
        if self.journaling && delivery.journal.is_none() && !delivery.target.is_dead_letter() {
            self.journal_next = self.journal_next.saturating_add(1);
            delivery.journal = Some(self.journal_next);
        }
        let evicted = self.retries.push(delivery, due_ms);
        self.handle_evicted(host, plugin, evicted);
        self.schedule_tick(host);
    }

    /// Deliveries pushed out of a full retry queue go to the dead letters.
    fn handle_evicted<H: Host>(&mut self, host: &mut H, plugin: &Plugin, evicted: Vec<Delivery>) {
        for delivery in evicted {
            if delivery.target.is_dead_letter() {
                self.lose(host, plugin, &delivery, "the retry queue is full");
            } else {
                Self::count_for(host, &delivery, WebhookCounter::Dropped);
                self.dead_letter(host, plugin, &delivery, Reason::PendingLimit);
            }
        }
    }

    fn succeeded<H: Host>(
        &mut self,
        host: &mut H,
        plugin: &Plugin,
        delivery: Delivery,
        clean_version: Option<u32>,
    ) {
        if delivery.target.is_dead_letter() {
            Self::count_for(host, &delivery, WebhookCounter::DeadLettered);
            return;
        }
        Self::count_for(host, &delivery, WebhookCounter::Delivered);
        let Some((_, definition)) = plugin.resolve(delivery.target.webhook()) else {
            // Its definition changed while the call was in flight: the new one's
            // health is not this delivery's business.
            return;
        };
        let now_ms = host.now_ms();
        let cached = self
            .health_cache
            .get(&definition.fingerprint)
            .and_then(|cache| cache.fresh_clean(now_ms, definition.fingerprint))
            .map(|(version, _)| *version);
        // Clean when the attempt started and, as far as this worker can tell
        // without a read, still the same record.
        let still_clean = clean_version.is_some()
            && (cached == clean_version || store::version(host, definition) == clean_version);
        if still_clean {
            // Counted in shared data by the next tick, sparing a write per delivery.
            let count = self
                .unflushed_delivered
                .entry(delivery.target.webhook().clone())
                .or_default();
            *count = count.saturating_add(1);
            self.schedule_tick(host);
            return;
        }
        self.health_written(definition.fingerprint);
        let epoch = delivery.epoch;
        if let Some((_, transition)) = store::update(host, definition, now_ms / 1000, |health| {
            if health.epoch == epoch {
                health.record_success()
            } else {
                // Made before an operator's enable: counted, no say in the status.
                health.delivered = health.delivered.saturating_add(1);
                None
            }
        }) {
            if transition.is_some() && plugin.config.cluster_state.is_some() {
                // It reset a run of failures: the cluster's record too.
                let policy = &plugin.config.delivery;
                store::record_outcome(host, definition, &Outcome::Success, epoch, policy);
            }
            Self::report(host, definition, transition.as_ref());
        }
    }

    /// A failed attempt: retried, or, when its retries are exhausted (or the
    /// receiver said 410), a failed delivery that counts for the status.
    fn failed<H: Host>(
        &mut self,
        host: &mut H,
        plugin: &Plugin,
        mut delivery: Delivery,
        outcome: CallOutcome,
    ) {
        let now_ms = host.now_ms();
        let decision = retry::after_failure(
            &plugin.config.delivery.retry_schedule_s,
            delivery.attempts,
            outcome.attempt(),
            host.random_unit(),
            retry::system_time(now_ms),
        );
        let error = outcome.to_string();
        log::debug!(
            "envoy-webhooks: attempt {} of request_id={} failed: {}",
            delivery.attempts,
            Printable(delivery.request_id.as_deref().unwrap_or("-")),
            Printable(&error)
        );
        delivery.last_error = Some(error);
        if let RetryDecision::RetryIn(delay_ms) = decision {
            self.park(host, plugin, delivery, now_ms.saturating_add(delay_ms));
            return;
        }
        if delivery.target.is_dead_letter() {
            self.lose(
                host,
                plugin,
                &delivery,
                "the dead-letter destination kept failing",
            );
            return;
        }
        let gone = decision == RetryDecision::Gone;
        Self::count_for(host, &delivery, WebhookCounter::Failed);
        if let Some((_, definition)) = plugin.resolve(delivery.target.webhook()) {
            let error = delivery.last_error.clone().unwrap_or_default();
            let policy = &plugin.config.delivery;
            let now_s = now_ms / 1000;
            let epoch = delivery.epoch;
            let mut counts_for_status = false;
            self.health_written(definition.fingerprint);
            let updated = store::update(host, definition, now_s, |health| {
                counts_for_status = health.epoch == epoch && health.status.delivers();
                if health.epoch != epoch {
                    // Made before an operator's enable: it must not fail the
                    // webhook again while its receiver may be fixed.
                    health.failed = health.failed.saturating_add(1);
                    None
                } else if gone {
                    health.record_gone(now_s)
                } else {
                    health.record_failure(&error, now_s, policy)
                }
            });
            if updated.is_some() && counts_for_status && plugin.config.cluster_state.is_some() {
                let outcome = if gone {
                    Outcome::Gone { at: now_s }
                } else {
                    Outcome::Failure {
                        error: &error,
                        at: now_s,
                    }
                };
                store::record_outcome(host, definition, &outcome, epoch, policy);
            }
            if let Some((health, transition)) = updated {
                Self::report(host, definition, transition.as_ref());
                if health.status == Status::Failed {
                    self.stop_waiting_retries(host, plugin, delivery.target.webhook());
                }
            }
        }
        let reason = if gone {
            Reason::Gone
        } else {
            Reason::RetriesExhausted
        };
        self.dead_letter(host, plugin, &delivery, reason);
    }

    /// A webhook became `FAILED`: its waiting retries stop and go to the dead letters.
    fn stop_waiting_retries<H: Host>(
        &mut self,
        host: &mut H,
        plugin: &Plugin,
        webhook: &WebhookRef,
    ) {
        let stopped = self
            .retries
            .remove_where(|d| matches!(&d.target, Target::Webhook(w) if w == webhook));
        for delivery in stopped {
            Self::count_for(host, &delivery, WebhookCounter::Dropped);
            self.dead_letter(host, plugin, &delivery, Reason::WebhookFailed);
        }
        self.schedule_tick(host);
    }

    /// Sends a delivery that could not be made to the dead-letter destination,
    /// or counts and logs it when there is none (or no room for it).
    fn dead_letter<H: Host>(
        &mut self,
        host: &mut H,
        plugin: &Plugin,
        delivery: &Delivery,
        reason: Reason,
    ) {
        let Target::Webhook(webhook) = &delivery.target else {
            // Dead letters are not dead-lettered again: the caller loses them.
            return;
        };
        if plugin.config.dead_letter.is_none() {
            let why = format!(
                "{} and no dead_letter destination is configured",
                reason.as_str()
            );
            self.lose(host, plugin, delivery, &why);
            return;
        }
        // Checked before the record is built: under pressure, building (and
        // hashing) records that cannot be held would only stall the worker.
        let estimate =
            budget::delivery_cost(delivery.body.len().saturating_add(RECORD_OVERHEAD_BYTES));
        if !self.fits(&plugin.held, estimate) {
            let why = format!(
                "{}, and its dead letter does not fit delivery.max_held_bytes",
                reason.as_str()
            );
            self.lose(host, plugin, delivery, &why);
            return;
        }
        let message_id = if delivery.message_id.is_empty() {
            signature::message_id(host.random_id())
        } else {
            delivery.message_id.clone()
        };
        let record = dead_letter::record(&FailedDelivery {
            webhook_id: &webhook.id,
            message_id: &message_id,
            request_id: delivery.request_id.as_deref(),
            event: &delivery.body,
            attempts: delivery.attempts,
            last_error: delivery.last_error.as_deref(),
            first_attempt_at_ms: delivery.first_attempt_at_ms,
            reason,
        });
        let letter = Delivery {
            target: Target::DeadLetter(webhook.clone()),
            body: record.into(),
            message_id,
            request_id: delivery.request_id.clone(),
            headers: delivery.headers.clone(),
            attempts: 0,
            dispatch_failures: 0,
            first_attempt_at_ms: host.now_ms(),
            last_error: None,
            epoch: 0,
            journal: None,
            throttled: false,
        };
        self.attempt(host, plugin, letter);
    }

    /// Counts and logs a delivery that reached neither its webhook nor a
    /// dead-letter destination.
    fn lose<H: Host>(&self, host: &mut H, plugin: &Plugin, delivery: &Delivery, why: &str) {
        Self::count_for(host, delivery, WebhookCounter::Lost);
        let webhook_id = delivery.target.webhook().id.clone();
        plugin.warn("lost", host.now_ms(), || {
            format!(
                "webhook {webhook_id}: event request_id={} not delivered ({why}); last error: {}",
                Printable(delivery.request_id.as_deref().unwrap_or("-")),
                Printable(delivery.last_error.as_deref().unwrap_or("-"))
            )
        });
    }

    /// Logs a status change (one info line, with the reason) and updates the gauge.
    fn report<H: Host>(
        host: &mut H,
        definition: &WebhookDefinition,
        transition: Option<&Transition>,
    ) {
        let Some(transition) = transition else {
            return;
        };
        transition.log(&definition.id);
        host.set_status(&definition.id, transition.to);
    }

    /// This worker changed the webhook's record: the next attempt reads it.
    fn health_written(&mut self, fingerprint: u64) {
        if let Some(cache) = self.health_cache.get_mut(&fingerprint) {
            cache.read_ms = 0;
        }
    }

    /// Adds the buffered successful deliveries to the shared counts.
    fn flush_delivered<H: Host>(&mut self, host: &mut H) {
        let Some(plugin) = self.plugin.clone() else {
            self.unflushed_delivered.clear();
            return;
        };
        let now_s = host.now_ms() / 1000;
        for (webhook, count) in std::mem::take(&mut self.unflushed_delivered) {
            if let Some((_, definition)) = plugin.resolve(&webhook) {
                self.health_written(definition.fingerprint);
                store::update(host, definition, now_s, |health| {
                    health.delivered = health.delivered.saturating_add(count);
                    None
                });
            }
        }
    }

    /// Flushes counts and makes the attempts that are due, as many as the
    /// call slots and this callback's budget allow.
    fn run_due<H: Host>(&mut self, host: &mut H) {
        if !self.unflushed_delivered.is_empty() {
            self.flush_delivered(host);
        }
        if let Some(plugin) = &self.plugin {
            plugin.flush_warnings(host.now_ms());
        }
        if self.attempt_log.has_changes() {
            let now_ms = host.now_ms();
            self.publish_attempts(host, now_ms, false);
        }
        if let Some(plugin) = self.plugin.clone() {
            let now_ms = host.now_ms();
            while self.in_flight.len() < plugin.config.delivery.max_in_flight
                && self.turn_calls < MAX_TURN_CALLS
                && self.turn_bytes < MAX_TURN_BYTES
            {
                let Some(delivery) = self.retries.pop_due(now_ms) else {
                    break;
                };
                self.attempt(host, &plugin, delivery);
            }
        }
        if !self.retries.is_empty() || self.summary_stale {
            let now_ms = host.now_ms();
            self.publish_pending(host, now_ms, true);
        }
        self.schedule_tick(host);
    }

    /// Keeps one tick running while deliveries wait, counts are to be flushed
    /// or the queue's summary is to be published, and none otherwise.
    fn schedule_tick<H: Host>(&mut self, host: &mut H) {
        let now_ms = host.now_ms();
        self.publish_pending(host, now_ms, false);
        let mut wanted = match self.retries.next_due_ms() {
            Some(due) => due.saturating_sub(now_ms).clamp(MIN_TICK_MS, MAX_TICK_MS),
            None => 0,
        };
        let warnings_held = self
            .plugin
            .as_ref()
            .is_some_and(|plugin| plugin.holds_back_warnings());
        for (needed, soon) in [
            (!self.unflushed_delivered.is_empty(), FLUSH_TICK_MS),
            (self.summary_stale, PUBLISH_INTERVAL_MS),
            (
                self.attempt_log.has_changes(),
                attempts::PUBLISH_INTERVAL_MS,
            ),
            (warnings_held, MAX_TICK_MS),
        ] {
            if needed {
                wanted = if wanted == 0 { soon } else { wanted.min(soon) };
            }
        }
        if wanted != self.tick_ms && host.set_tick_period_ms(wanted) {
            self.tick_ms = wanted;
        }
    }

    /// Publishes this worker's queue for the admin API: at most every 250 ms
    /// (a skipped publication is made by the next tick), and once more when
    /// the queue becomes empty.
    fn publish_pending<H: Host>(&mut self, host: &mut H, now_ms: u64, force: bool) {
        if self.plugin.is_none() {
            return;
        }
        let changed = !self.retries.is_empty() || self.published_nonempty;
        if !changed && !force {
            return;
        }
        if !force && now_ms.saturating_sub(self.published_ms) < PUBLISH_INTERVAL_MS {
            self.summary_stale = true;
            return;
        }
        let entries = self
            .retries
            .summary()
            .into_iter()
            .map(|(id, summary)| (id.to_string(), summary));
        store::publish_pending(host, self.vm_number, now_ms, entries);
        self.published_ms = now_ms;
        self.published_nonempty = !self.retries.is_empty();
        self.summary_stale = false;
    }
}
