//! The worker's root context: configuration, and every delivery call with
//! its retries and dead letters.
//!
//! Calls are made here, not in the request's context, because the SDK drops a
//! call's response when the context that made it has ended.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use hashbrown::HashMap;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, Status as HostStatus};

use crate::admin;
use crate::config::{AdminToken, PluginConfig, SecretSource};
use crate::dead_letter::{self, FailedDelivery, Reason};
use crate::delivery::{self, QueuedEvent, QueuedTarget};
use crate::held::{self, HeldBytes};
use crate::logging::Printable;
use crate::matcher::Matcher;
use crate::pending::{PendingDelivery, RetryQueue, Target};
use crate::retry::{self, AttemptOutcome, RetryDecision};
use crate::signature::{self, SigningSecret};
use crate::status::Status;

use super::health_store;
use super::host;
use super::metrics::Metrics;
use super::plugin::Plugin;
use super::stream::EventStream;

/// While deliveries wait, the tick comes at least this often (to publish the
/// queue for the admin API and to notice freed call slots).
const MAX_TICK_MS: u64 = 1_000;
const MIN_TICK_MS: u64 = 10;
/// How long successful deliveries may wait before they are added to the shared counts.
const FLUSH_TICK_MS: u64 = 200;
/// How often a worker publishes its retry queue for the admin API.
const PUBLISH_INTERVAL_MS: u64 = 250;
/// How soon a delivery that found every call slot taken tries again.
const SLOT_WAIT_MS: u64 = 50;
/// A call the host could not start for an internal reason (not an unknown
/// cluster) is started again this often, this many times, before it counts
/// as a failed attempt.
const MAX_DISPATCH_FAILURES: u32 = 5;
const DISPATCH_RETRY_MS: u64 = 200;
/// Calls started, and bytes handed to the host, in one callback at most; the
/// rest wait for the next tick. A worker serves the platform's requests between
/// callbacks: a burst of deliveries (one big event matching a thousand
/// webhooks) must not hold it for long. 4 MiB is about a millisecond of copying
/// (and of signing, where a webhook signs).
const MAX_TURN_CALLS: usize = 100;
/// A dead-letter record's size beyond its event: ids, error text, field names.
const RECORD_OVERHEAD_BYTES: usize = 1024;
const MAX_TURN_BYTES: usize = 4 * 1024 * 1024;

/// A call waiting for its answer.
struct InFlight {
    delivery: PendingDelivery,
    /// What the call counts against the held-bytes budget.
    bytes: usize,
    started_ms: u64,
    /// The CAS value of the webhook's record when the call was made, if the
    /// webhook was then ENABLED with no failures. If the record still has it
    /// when the call succeeds, the success changes nothing but the count.
    clean_version: Option<u32>,
}

pub struct WebhooksRoot {
    plugin: Option<Rc<Plugin>>,
    queue_id: Option<u32>,
    vm_number: u64,
    in_flight: HashMap<u32, InFlight>,
    retries: RetryQueue,
    /// Successful deliveries not yet added to the shared counts, by (webhook, fingerprint).
    unflushed_delivered: HashMap<(usize, u64), u64>,
    tick_ms: u64,
    published_ms: u64,
    /// The last published summary had deliveries in it.
    published_nonempty: bool,
    /// The queue changed since the last publication.
    summary_stale: bool,
    /// Held bytes of calls in flight.
    in_flight_bytes: usize,
    /// Calls started and bytes sent in the current callback.
    turn_calls: usize,
    turn_bytes: usize,
    /// What this worker last added to the `held_bytes` gauge.
    held_reported: i64,
}

impl Default for WebhooksRoot {
    fn default() -> Self {
        WebhooksRoot {
            plugin: None,
            queue_id: None,
            vm_number: 0,
            in_flight: HashMap::new(),
            unflushed_delivered: HashMap::new(),
            retries: RetryQueue::new(usize::MAX, usize::MAX),
            tick_ms: 0,
            published_ms: 0,
            published_nonempty: false,
            summary_stale: false,
            in_flight_bytes: 0,
            turn_calls: 0,
            turn_bytes: 0,
            held_reported: 0,
        }
    }
}

fn env_secrets(name: &str) -> Result<Vec<SigningSecret>, String> {
    let text = std::env::var(name).map_err(|_| {
        format!("environment variable {name} is not set in the Wasm VM (list it in vm_config.environment_variables)")
    })?;
    SigningSecret::parse_list(&text).map_err(|e| format!("environment variable {name}: {e}"))
}

impl WebhooksRoot {
    fn load(&mut self, configuration_size: usize) -> Result<Plugin, Vec<String>> {
        let bytes =
            host::buffer(BufferType::PluginConfiguration, configuration_size).unwrap_or_default();
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(vec![
                "the plugin configuration is empty: set the Wasm filter's `configuration` to the webhooks JSON".to_string(),
            ]);
        }
        let config = PluginConfig::from_json(&bytes)
            .map_err(|e| e.problems.iter().map(|p| p.to_string()).collect::<Vec<_>>())?;
        let mut problems = Vec::new();
        let admin_token = match config.admin.as_ref().map(|admin| &admin.token) {
            None => None,
            Some(AdminToken::Literal(token)) => Some(token.clone()),
            Some(AdminToken::Env(name)) => match std::env::var(name) {
                Ok(token) if !token.is_empty() => match admin::check_token(&token) {
                    Ok(()) => Some(token),
                    Err(problem) => {
                        problems.push(format!(
                            "admin: field 'token_env': environment variable {name}: {problem}"
                        ));
                        None
                    }
                },
                _ => {
                    problems.push(format!(
                        "admin: field 'token_env': environment variable {name} is not set in the Wasm VM (list it in vm_config.environment_variables)"
                    ));
                    None
                }
            },
        };
        let mut secrets = Vec::with_capacity(config.webhooks.len());
        for definition in &config.webhooks {
            secrets.push(match &definition.signing {
                None => Vec::new(),
                Some(SecretSource::Secrets(list)) => list.clone(),
                Some(SecretSource::Env(name)) => env_secrets(name).unwrap_or_else(|e| {
                    problems.push(format!(
                        "webhook \"{}\": field 'secret_env': {e}",
                        definition.id
                    ));
                    Vec::new()
                }),
            });
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let queue_id = match self.queue_id {
            Some(id) => id,
            None => {
                let number = health_store::unique_vm_number().ok_or_else(|| {
                    vec!["cannot allocate a delivery queue in shared data".to_string()]
                })?;
                let name = format!("envoy_webhooks/deliveries/{number}");
                let id = hostcalls::register_shared_queue(&name).map_err(|status| {
                    vec![format!("cannot register shared queue {name}: {status:?}")]
                })?;
                self.vm_number = number;
                self.queue_id = Some(id);
                id
            }
        };
        let metrics = Metrics::define(&config.webhooks);
        let now_s = host::now_ms() / 1000;
        for (index, definition) in config.webhooks.iter().enumerate() {
            // Creates the record, or starts it afresh when the definition changed.
            let health = health_store::update(definition, now_s, |_| None)
                .map(|(health, _)| health)
                .unwrap_or_else(|| health_store::load(definition, now_s));
            metrics.webhook(index).set_status(health.status);
        }
        let matcher = Matcher::new(config.webhooks.clone());
        Ok(Plugin {
            fields: Rc::new(matcher.field_tree()),
            matcher,
            held: HeldBytes::new(config.delivery.max_held_bytes),
            config,
            admin_token,
            secrets,
            metrics,
            queue_id,
            warnings: RefCell::default(),
        })
    }

    /// Bytes this worker's root holds: calls in flight and deliveries waiting.
    fn held_in_root(&self) -> usize {
        self.in_flight_bytes.saturating_add(self.retries.bytes())
    }

    /// Whether a delivery costing `bytes` fits the worker's budget now.
    fn fits(&self, plugin: &Plugin, bytes: usize) -> bool {
        plugin.held.set_in_root(self.held_in_root());
        plugin.held.fits(bytes)
    }

    /// Starts a callback: its work is bounded afresh.
    fn start_turn(&mut self) {
        self.turn_calls = 0;
        self.turn_bytes = 0;
    }

    /// Ends a callback: tells the requests what the root holds, and the gauge.
    fn end_turn(&mut self) {
        let Some(plugin) = self.plugin.clone() else {
            return;
        };
        let held = self.held_in_root();
        plugin.held.set_in_root(held);
        let held = i64::try_from(held).unwrap_or(i64::MAX);
        plugin
            .metrics
            .held_bytes
            .add(held.saturating_sub(self.held_reported));
        self.held_reported = held;
    }

    /// A delivery arrives from a request: its first attempt is now, if the
    /// worker's budget has room for it.
    fn accept(
        &mut self,
        plugin: &Plugin,
        queued: QueuedTarget,
        body: &Rc<[u8]>,
        request_id: &Option<String>,
    ) {
        let Ok(index) = usize::try_from(queued.webhook) else {
            return;
        };
        if plugin.definition(index, queued.fingerprint).is_none() {
            plugin.metrics.deliveries_discarded.increment();
            plugin.warn("discarded", host::now_ms(), || {
                "a delivery queued under a previous configuration was not made".to_string()
            });
            return;
        }
        let now_ms = host::now_ms();
        let delivery = PendingDelivery {
            target: Target::Webhook {
                index,
                fingerprint: queued.fingerprint,
            },
            // Computed when first needed (signing, dead letters): hashing every body costs.
            message_id: String::new(),
            body: body.clone(),
            request_id: request_id.clone(),
            attempts: 0,
            dispatch_failures: 0,
            first_attempt_at_ms: now_ms,
            last_error: None,
            epoch: 0,
        };
        if !self.fits(plugin, delivery.cost_bytes()) {
            plugin.metrics.webhook(index).dropped.increment();
            self.dead_letter(plugin, &delivery, Reason::MemoryLimit);
            return;
        }
        self.attempt(plugin, delivery);
    }

    /// Makes the next attempt of `delivery`, or parks it while every call slot is taken.
    fn attempt(&mut self, plugin: &Plugin, delivery: PendingDelivery) {
        let target = delivery.target;
        let index = target.webhook_index();
        let Some(definition) = plugin.definition(index, target.fingerprint()) else {
            plugin.metrics.deliveries_discarded.increment();
            plugin.warn("discarded", host::now_ms(), || {
                format!(
                    "delivery of request_id={} not made: its webhook changed in a configuration reload",
                    Printable(delivery.request_id.as_deref().unwrap_or("-"))
                )
            });
            return;
        };
        let now_ms = host::now_ms();
        if self.turn_calls >= MAX_TURN_CALLS || self.turn_bytes >= MAX_TURN_BYTES {
            // Enough for this callback: the next tick goes on.
            self.park(plugin, delivery, now_ms);
            return;
        }
        let mut delivery = delivery;
        let mut clean_version = None;
        if let Target::Webhook { .. } = target {
            let (health, version) = health_store::load_versioned(definition, now_ms / 1000);
            delivery.epoch = health.epoch;
            let status = health.status;
            if status == Status::Enabled && health.consecutive_failures == 0 {
                clean_version = version;
            }
            if !status.delivers() {
                plugin.metrics.webhook(index).dropped.increment();
                self.dead_letter(plugin, &delivery, Reason::WebhookFailed);
                return;
            }
        }
        let policy = &plugin.config.delivery;
        if self.in_flight.len() >= policy.max_in_flight {
            self.park(plugin, delivery, now_ms + SLOT_WAIT_MS);
            return;
        }
        let (cluster, headers, timestamp) = match target {
            Target::Webhook { .. } => (
                definition.cluster.as_str(),
                delivery::request_headers(definition),
                (now_ms / 1000).to_string(),
            ),
            Target::DeadLetter { .. } => {
                let Some(dead_letter) = &plugin.config.dead_letter else {
                    // The destination was removed by a configuration reload.
                    self.lose(
                        plugin,
                        &delivery,
                        "the dead_letter destination is no longer configured",
                    );
                    return;
                };
                let headers = delivery::destination_headers(&dead_letter.url, &dead_letter.headers);
                (dead_letter.cluster.as_str(), headers, String::new())
            }
        };
        let mut headers = headers;
        let signature_value;
        let secrets = plugin.secrets.get(index).map_or(&[][..], Vec::as_slice);
        if matches!(target, Target::Webhook { .. }) && !secrets.is_empty() {
            if delivery.message_id.is_empty() {
                delivery.message_id = signature::message_id(
                    &definition.id,
                    delivery.request_id.as_deref(),
                    &delivery.body,
                );
            }
            signature_value = signature::signature_header(
                secrets,
                &delivery.message_id,
                now_ms / 1000,
                &delivery.body,
            );
            headers.push(("webhook-id", delivery.message_id.as_str()));
            headers.push(("webhook-timestamp", timestamp.as_str()));
            headers.push(("webhook-signature", signature_value.as_str()));
        }
        let dispatched = hostcalls::dispatch_http_call(
            cluster,
            headers,
            Some(&delivery.body),
            Vec::new(),
            Duration::from_millis(policy.timeout_ms),
        );
        if let Err(HostStatus::InternalFailure) = dispatched {
            // The dynamic forward proxy fails a call from a root context to a
            // host it has not resolved yet, while it resolves it: try again soon.
            if delivery.dispatch_failures < MAX_DISPATCH_FAILURES {
                delivery.dispatch_failures += 1;
                self.park(plugin, delivery, now_ms + DISPATCH_RETRY_MS);
                return;
            }
        }
        delivery.attempts = delivery.attempts.saturating_add(1);
        self.turn_calls = self.turn_calls.saturating_add(1);
        self.turn_bytes = self.turn_bytes.saturating_add(delivery.body.len());
        if delivery.attempts > 1 && matches!(target, Target::Webhook { .. }) {
            plugin.metrics.webhook(index).retried.increment();
        }
        match dispatched {
            Ok(token) => {
                let bytes = delivery.cost_bytes();
                self.in_flight_bytes = self.in_flight_bytes.saturating_add(bytes);
                if let Some(replaced) = self.in_flight.insert(
                    token,
                    InFlight {
                        delivery,
                        bytes,
                        started_ms: now_ms,
                        clean_version,
                    },
                ) {
                    // The host reused a token still in use: never expected; keep the count right.
                    self.in_flight_bytes = self.in_flight_bytes.saturating_sub(replaced.bytes);
                }
            }
            Err(status) => {
                let id = definition.id.as_str();
                plugin.warn("cannot_call", now_ms, || {
                    format!(
                        "webhook {id}: cannot call cluster '{}' ({status:?}): define a cluster of that name in Envoy, or set the \"cluster\" field to one",
                        Printable(cluster)
                    )
                });
                let error = format!("cannot call cluster '{cluster}'");
                self.failed_attempt(plugin, delivery, error, AttemptOutcome::NoAnswer);
            }
        }
    }

    /// Queues `delivery` for `due_ms`, dead-lettering whatever that pushes out.
    fn park(&mut self, plugin: &Plugin, delivery: PendingDelivery, due_ms: u64) {
        let evicted = self.retries.push(delivery, due_ms);
        self.handle_evicted(plugin, evicted);
        self.schedule_tick();
    }

    /// Deliveries pushed out of a full retry queue go to the dead letters.
    fn handle_evicted(&mut self, plugin: &Plugin, evicted: Vec<PendingDelivery>) {
        for delivery in evicted {
            let index = delivery.target.webhook_index();
            match delivery.target {
                Target::Webhook { .. } => {
                    plugin.metrics.webhook(index).dropped.increment();
                    self.dead_letter(plugin, &delivery, Reason::PendingLimit);
                }
                Target::DeadLetter { .. } => {
                    self.lose(plugin, &delivery, "the retry queue is full")
                }
            }
        }
    }

    fn succeeded(
        &mut self,
        plugin: &Plugin,
        delivery: PendingDelivery,
        clean_version: Option<u32>,
    ) {
        let index = delivery.target.webhook_index();
        let metrics = plugin.metrics.webhook(index);
        match delivery.target {
            Target::Webhook { fingerprint, .. } => {
                metrics.delivered.increment();
                let still_clean = clean_version.is_some()
                    && plugin
                        .definition(index, fingerprint)
                        .is_some_and(|d| health_store::version(d) == clean_version);
                if still_clean {
                    // Counted in shared data by the next tick, sparing a write per delivery.
                    *self
                        .unflushed_delivered
                        .entry((index, fingerprint))
                        .or_default() += 1;
                    self.schedule_tick();
                } else if let Some(definition) = plugin.definition(index, fingerprint) {
                    let now_s = host::now_ms() / 1000;
                    let epoch = delivery.epoch;
                    if let Some((_, transition)) =
                        health_store::update(definition, now_s, |health| {
                            if health.epoch == epoch {
                                health.record_success()
                            } else {
                                // Made before an operator's enable: counted, no say in the status.
                                health.delivered = health.delivered.saturating_add(1);
                                None
                            }
                        })
                    {
                        plugin.report(index, transition.as_ref());
                    }
                }
            }
            Target::DeadLetter { .. } => metrics.dead_lettered.increment(),
        }
    }

    fn failed_attempt(
        &mut self,
        plugin: &Plugin,
        mut delivery: PendingDelivery,
        error: String,
        outcome: AttemptOutcome<'_>,
    ) {
        let now_ms = host::now_ms();
        let decision = retry::after_failure(
            &plugin.config.delivery.retry_schedule_s,
            delivery.attempts,
            outcome,
            fastrand::f64(),
            retry::system_time(now_ms),
        );
        log::debug!(
            "envoy-webhooks: attempt {} of request_id={} failed: {error}",
            delivery.attempts,
            delivery.request_id.as_deref().unwrap_or("-")
        );
        delivery.last_error = Some(error);
        let index = delivery.target.webhook_index();
        match (decision, delivery.target) {
            (RetryDecision::RetryIn(delay_ms), _) => self.park(plugin, delivery, now_ms + delay_ms),
            (_, Target::DeadLetter { .. }) => self.lose(
                plugin,
                &delivery,
                "the dead-letter destination kept failing",
            ),
            (
                RetryDecision::Exhausted | RetryDecision::Gone,
                Target::Webhook { fingerprint, .. },
            ) => {
                plugin.metrics.webhook(index).failed.increment();
                let gone = decision == RetryDecision::Gone;
                if let Some(definition) = plugin.definition(index, fingerprint) {
                    let error = delivery.last_error.clone().unwrap_or_default();
                    let policy = &plugin.config.delivery;
                    let now_s = now_ms / 1000;
                    let epoch = delivery.epoch;
                    let updated = health_store::update(definition, now_s, |health| {
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
                    if let Some((health, transition)) = updated {
                        plugin.report(index, transition.as_ref());
                        if health.status == Status::Failed {
                            self.flush_failed_webhook(plugin, index);
                        }
                    }
                }
                let reason = if gone {
                    Reason::Gone
                } else {
                    Reason::RetriesExhausted
                };
                self.dead_letter(plugin, &delivery, reason);
            }
        }
    }

    /// A webhook became `FAILED`: its waiting retries stop and go to the dead letters.
    fn flush_failed_webhook(&mut self, plugin: &Plugin, index: usize) {
        let stopped = self
            .retries
            .remove_where(|d| matches!(d.target, Target::Webhook { index: i, .. } if i == index));
        for delivery in stopped {
            plugin.metrics.webhook(index).dropped.increment();
            self.dead_letter(plugin, &delivery, Reason::WebhookFailed);
        }
        self.schedule_tick();
    }

    /// Sends a delivery that could not be made to the dead-letter destination,
    /// or counts and logs it when there is none.
    fn dead_letter(&mut self, plugin: &Plugin, delivery: &PendingDelivery, reason: Reason) {
        let Target::Webhook { index, fingerprint } = delivery.target else {
            return;
        };
        if plugin.config.dead_letter.is_none() {
            self.lose(
                plugin,
                delivery,
                &format!(
                    "{} and no dead_letter destination is configured",
                    reason.as_str()
                ),
            );
            return;
        }
        // Checked before the record is built: under pressure, building (and
        // hashing) records that cannot be held would only stall the worker.
        if !self.fits(
            plugin,
            held::delivery_cost(delivery.body.len().saturating_add(RECORD_OVERHEAD_BYTES)),
        ) {
            self.lose(
                plugin,
                delivery,
                &format!(
                    "{}, and its dead letter does not fit delivery.max_held_bytes",
                    reason.as_str()
                ),
            );
            return;
        }
        let webhook_id = plugin
            .definitions()
            .get(index)
            .map_or("", |d| d.id.as_str());
        let message_id = if delivery.message_id.is_empty() {
            signature::message_id(webhook_id, delivery.request_id.as_deref(), &delivery.body)
        } else {
            delivery.message_id.clone()
        };
        let record = dead_letter::record(&FailedDelivery {
            webhook_id,
            message_id: &message_id,
            request_id: delivery.request_id.as_deref(),
            event: &delivery.body,
            attempts: delivery.attempts,
            last_error: delivery.last_error.as_deref(),
            first_attempt_at_ms: delivery.first_attempt_at_ms,
            reason,
        });
        let letter = PendingDelivery {
            target: Target::DeadLetter { index, fingerprint },
            body: record.into(),
            message_id,
            request_id: delivery.request_id.clone(),
            attempts: 0,
            dispatch_failures: 0,
            first_attempt_at_ms: host::now_ms(),
            last_error: None,
            epoch: 0,
        };
        self.attempt(plugin, letter);
    }

    /// Counts and logs a delivery that reached neither its webhook nor a dead-letter destination.
    fn lose(&self, plugin: &Plugin, delivery: &PendingDelivery, why: &str) {
        let index = delivery.target.webhook_index();
        plugin.metrics.webhook(index).lost.increment();
        let webhook_id = plugin
            .definitions()
            .get(index)
            .map_or("?", |d| d.id.as_str());
        plugin.warn("lost", host::now_ms(), || {
            format!(
                "webhook {webhook_id}: event request_id={} not delivered ({why}); last error: {}",
                Printable(delivery.request_id.as_deref().unwrap_or("-")),
                Printable(delivery.last_error.as_deref().unwrap_or("-"))
            )
        });
    }

    /// Adds the buffered successful deliveries to the shared counts.
    fn flush_delivered(&mut self) {
        let Some(plugin) = self.plugin.clone() else {
            self.unflushed_delivered.clear();
            return;
        };
        let now_s = host::now_ms() / 1000;
        for ((index, fingerprint), count) in self.unflushed_delivered.drain() {
            if let Some(definition) = plugin.definition(index, fingerprint) {
                health_store::update(definition, now_s, |health| {
                    health.delivered += count;
                    None
                });
            }
        }
    }

    /// Flushes counts and makes the attempts that are due, as many as the
    /// call slots and this callback's budget allow.
    fn run_due(&mut self) {
        if !self.unflushed_delivered.is_empty() {
            self.flush_delivered();
        }
        if let Some(plugin) = self.plugin.clone() {
            let now_ms = host::now_ms();
            while self.in_flight.len() < plugin.config.delivery.max_in_flight
                && self.turn_calls < MAX_TURN_CALLS
                && self.turn_bytes < MAX_TURN_BYTES
            {
                let Some(delivery) = self.retries.pop_due(now_ms) else {
                    break;
                };
                self.attempt(&plugin, delivery);
            }
        }
        if !self.retries.is_empty() || self.summary_stale {
            self.publish_pending(host::now_ms(), true);
        }
        self.schedule_tick();
    }

    /// Keeps one tick running while deliveries wait, counts are to be flushed
    /// or the queue's summary is to be published, and none otherwise.
    fn schedule_tick(&mut self) {
        let now_ms = host::now_ms();
        self.publish_pending(now_ms, false);
        let mut wanted = match self.retries.next_due_ms() {
            Some(due) => due.saturating_sub(now_ms).clamp(MIN_TICK_MS, MAX_TICK_MS),
            None => 0,
        };
        for (needed, soon) in [
            (!self.unflushed_delivered.is_empty(), FLUSH_TICK_MS),
            (self.summary_stale, PUBLISH_INTERVAL_MS),
        ] {
            if needed {
                wanted = if wanted == 0 { soon } else { wanted.min(soon) };
            }
        }
        if wanted != self.tick_ms
            && hostcalls::set_tick_period(Duration::from_millis(wanted)).is_ok()
        {
            self.tick_ms = wanted;
        }
    }

    /// Publishes this worker's queue for the admin API: at most every 250 ms
    /// (a skipped publication is made by the next tick), and once more when
    /// the queue becomes empty.
    fn publish_pending(&mut self, now_ms: u64, force: bool) {
        let Some(plugin) = self.plugin.clone() else {
            return;
        };
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
            .filter_map(|(index, summary)| {
                plugin
                    .definitions()
                    .get(index)
                    .map(|d| (d.id.clone(), summary))
            });
        health_store::publish_pending(self.vm_number, &admin::pending_summary(now_ms, entries));
        self.published_ms = now_ms;
        self.published_nonempty = !self.retries.is_empty();
        self.summary_stale = false;
    }
}

impl Context for WebhooksRoot {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let Some(call) = self.in_flight.remove(&token_id) else {
            return;
        };
        self.in_flight_bytes = self.in_flight_bytes.saturating_sub(call.bytes);
        let Some(plugin) = self.plugin.clone() else {
            return;
        };
        self.start_turn();
        let status = host::call_response_header(num_headers, ":status");
        let elapsed_ms = host::now_ms().saturating_sub(call.started_ms);
        // Enough of the body to recognise Envoy's own answers; none without an answer.
        let body = if num_headers == 0 {
            Vec::new()
        } else {
            host::buffer(BufferType::HttpCallResponseBody, body_size.min(256)).unwrap_or_default()
        };
        match delivery::outcome(
            status.as_deref(),
            &body,
            elapsed_ms,
            plugin.config.delivery.timeout_ms,
        ) {
            Ok(()) => self.succeeded(&plugin, call.delivery, call.clean_version),
            Err(error) => {
                let retry_after = host::call_response_header(num_headers, "retry-after");
                let outcome = match status.as_deref().and_then(|s| s.parse::<u16>().ok()) {
                    Some(code) => AttemptOutcome::Status {
                        code,
                        retry_after: retry_after.as_deref(),
                    },
                    None => AttemptOutcome::NoAnswer,
                };
                self.failed_attempt(&plugin, call.delivery, error, outcome);
            }
        }
        // A freed call slot may let a parked delivery go.
        if !self.retries.is_empty() {
            self.run_due();
        }
        self.end_turn();
    }
}

impl RootContext for WebhooksRoot {
    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        // Log only what Envoy would print: formatting dropped messages costs.
        if let Ok(level) = hostcalls::get_log_level() {
            proxy_wasm::set_log_level(level);
        }
        match self.load(plugin_configuration_size) {
            Ok(plugin) => {
                log::info!(
                    "envoy-webhooks {}: loaded {} webhook definition(s)",
                    env!("CARGO_PKG_VERSION"),
                    plugin.definitions().len()
                );
                let policy = &plugin.config.delivery;
                let evicted = self
                    .retries
                    .set_bounds(policy.max_pending, policy.max_pending_bytes);
                let plugin = Rc::new(plugin);
                self.plugin = Some(plugin.clone());
                self.handle_evicted(&plugin, evicted);
                true
            }
            Err(problems) => {
                log::error!(
                    "envoy-webhooks: invalid configuration ({} problem{}), refusing it:",
                    problems.len(),
                    if problems.len() == 1 { "" } else { "s" }
                );
                for problem in &problems {
                    log::error!("envoy-webhooks: invalid configuration: {problem}");
                }
                false
            }
        }
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        let Some(plugin) = self.plugin.clone() else {
            return;
        };
        self.start_turn();
        while let Ok(Some(bytes)) = hostcalls::dequeue_shared_queue(queue_id) {
            match QueuedEvent::decode(&bytes) {
                Some(event) => {
                    let body: Rc<[u8]> = event.body.into();
                    for target in event.targets {
                        self.accept(&plugin, target, &body, &event.request_id);
                    }
                }
                None => log::warn!("envoy-webhooks: ignoring a malformed queued delivery"),
            }
        }
        self.end_turn();
    }

    fn on_tick(&mut self) {
        self.start_turn();
        self.run_due();
        self.end_turn();
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(EventStream::new(self.plugin.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
