//! The worker's root context: loads the configuration, owns the worker's
//! delivery queue, and forwards every callback to the delivery engine.
//!
//! Calls are made here, not in the request's context, because the SDK drops a
//! call's response when the context that made it has ended.

use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType};

use crate::api::tenants::{Outcome, Tenants};
use crate::body_wait;
use crate::cluster::etcd::{self, EtcdError};
use crate::cluster::{ClusterSync, EtcdAnswer, CHECK_INTERVAL_MS};
use crate::config::WebhookDefinition;
use crate::delivery::call::{needs_body, Answer, ANSWER_BODY_BYTES};
use crate::delivery::engine::Engine;
use crate::host::Host;
use crate::plugin::Plugin;
use crate::webhook::store;

use super::host::{self, ProxyHost, ProxySharedData};
use super::metrics::Metrics;
use super::stream::EventStream;
use super::worker::Worker;

/// etcd's answers are read whole, up to this (a larger one fails to decode).
const ETCD_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// The answer to a call to etcd (the cluster sync's or the tenants' read).
fn etcd_answer(num_headers: usize, body_size: usize) -> EtcdAnswer {
    EtcdAnswer {
        status: host::call_response_header(num_headers, ":status")
            .and_then(|status| status.parse().ok()),
        body: host::buffer(
            BufferType::HttpCallResponseBody,
            body_size.min(ETCD_ANSWER_BYTES),
        )
        .unwrap_or_default(),
    }
}

pub struct WebhooksRoot {
    /// This root context's id (the effective context again after answering
    /// a stalled admin request through its own).
    context_id: u32,
    worker: Option<Rc<Worker>>,
    engine: Engine,
    /// This VM's delivery queue, once registered: (VM number, queue id).
    queue: Option<(u64, u32)>,
    /// With `cluster_state`: the link to etcd.
    sync: Option<ClusterSync>,
    /// With `api`: the tenants' webhooks, and the call reading them.
    tenants: Option<Tenants>,
    tenants_call: Option<u32>,
    /// `on_done` came and returned false: `done()` once the last call ended.
    stopping: bool,
    /// What this root context added to the `held_bytes_limit` gauge.
    held_limit_reported: i64,
    /// What this root context added to the `api_webhooks.loaded` gauge.
    tenants_reported: i64,
}

impl WebhooksRoot {
    pub fn new(context_id: u32) -> WebhooksRoot {
        WebhooksRoot {
            context_id,
            worker: None,
            engine: Engine::default(),
            queue: None,
            sync: None,
            tenants: None,
            tenants_call: None,
            stopping: false,
            held_limit_reported: 0,
            tenants_reported: 0,
        }
    }

    /// Answers the admin requests that waited too long for their body (an
    /// Envoy without `allow_on_headers_stop_iteration` never hands it over).
    fn answer_stalled_admin(&mut self, worker: &Worker) {
        if worker.tick_overridden.replace(false) {
            // The engine sets its own tick period again.
            self.engine.forget_tick();
        }
        let stalled = match worker.admin_waiting.try_borrow_mut() {
            Ok(mut waiting) => waiting.stalled(host::now_ms()),
            Err(_) => Vec::new(),
        };
        if stalled.is_empty() {
            return;
        }
        for (id, status, body) in stalled {
            if hostcalls::set_effective_context(id).is_ok() {
                let headers = vec![
                    ("content-type", "application/json"),
                    ("cache-control", "no-store"),
                ];
                let sent = hostcalls::send_http_response(
                    u32::from(status),
                    headers,
                    Some(body.as_bytes()),
                );
                if let Err(e) = sent {
                    log::warn!("envoy-webhooks: cannot answer an admin request: {e:?}");
                }
                log::warn!(
                    "envoy-webhooks: an admin or API request got no body: {}",
                    body_wait::STALLED_ANSWER
                );
            }
        }
        // What follows in this callback is the root context's own.
        let _ = hostcalls::set_effective_context(self.context_id);
        self.engine.forget_tick();
    }

    /// What an admin request of this worker changed, the engine reads afresh.
    fn see_health_changes(&mut self, worker: &Worker) {
        if worker.health_changed.replace(false) {
            self.engine.forget_health();
        }
    }

    /// Gives the engine the events requests handed over.
    fn take_handed_over(&mut self, worker: &Worker) {
        self.see_health_changes(worker);
        let events = worker.take_handed_over();
        if events.is_empty() {
            return;
        }
        let mut host = self.host(worker);
        for event in events {
            self.engine.accept(&mut host, event);
        }
    }

    /// No call in flight, nothing waiting, the journal flushed.
    fn is_finished(&self) -> bool {
        self.engine.is_idle()
            && self.sync.as_ref().is_none_or(ClusterSync::is_finished)
            && self.tenants_call.is_none()
    }

    /// After `on_done` returned false: tells Envoy once this root context is finished.
    fn done_if_stopped(&mut self) {
        if self.stopping && self.is_finished() {
            self.stopping = false;
            if let Some(worker) = self.worker.clone() {
                self.release_gauges(&worker);
            }
            if let Err(status) = hostcalls::done() {
                log::debug!("envoy-webhooks: done() refused: {status:?}");
            }
        }
    }

    /// Finished: what it added to the gauges leaves them.
    fn release_gauges(&mut self, worker: &Worker) {
        worker.metrics.add(
            worker.metrics.held_bytes_limit,
            self.held_limit_reported.saturating_neg(),
        );
        self.held_limit_reported = 0;
        self.report_tenants(worker, 0);
        worker.metrics.flush();
    }

    /// This root context now holds `count` tenants' webhooks.
    fn report_tenants(&mut self, worker: &Worker, count: usize) {
        let count = i64::try_from(count).unwrap_or(i64::MAX);
        worker.metrics.add(
            worker.metrics.api_webhooks_loaded,
            count.saturating_sub(self.tenants_reported),
        );
        self.tenants_reported = count;
    }

    fn host<'a>(&self, worker: &'a Worker) -> ProxyHost<'a> {
        let admin_floor = if worker
            .admin_waiting
            .try_borrow()
            .is_ok_and(|w| w.is_empty())
        {
            0
        } else {
            body_wait::CHECK_MS
        };
        let sync_floor = if self.sync.is_some() {
            CHECK_INTERVAL_MS
        } else {
            0
        };
        ProxyHost {
            worker,
            tick_floor_ms: match (sync_floor, admin_floor) {
                (0, floor) | (floor, 0) => floor,
                (a, b) => a.min(b),
            },
            clock: std::cell::Cell::new(None),
        }
    }

    /// This VM's delivery queue, registered on first use.
    fn queue(&mut self) -> Result<(u64, u32), String> {
        if let Some(queue) = self.queue {
            return Ok(queue);
        }
        let number = store::unique_vm_number(&mut ProxySharedData)
            .ok_or("cannot allocate a delivery queue in shared data")?;
        let name = store::queue_name(number);
        let id = hostcalls::register_shared_queue(&name)
            .map_err(|status| format!("cannot register shared queue {name}: {status:?}"))?;
        self.queue = Some((number, id));
        Ok((number, id))
    }

    /// Reads the tenants' webhooks when due (with `api`).
    fn poll_tenants(&mut self, worker: &Worker) {
        let mut host = self.host(worker);
        let (Some(tenants), None) = (self.tenants.as_mut(), self.tenants_call) else {
            return;
        };
        if worker.etcd_auth_expired.replace(false) {
            tenants.token_expired();
        }
        let Some(plugin) = worker.plugin() else {
            return;
        };
        let Some(config) = plugin.config.cluster_state.as_ref() else {
            return;
        };
        let now = host::now_ms();
        let Some((path, body)) = tenants.next(now) else {
            return;
        };
        let token = tenants.token().map(str::to_string);
        let call = etcd::call(config, path, &body, token.as_deref());
        match host.dispatch(call) {
            Ok(token) => self.tenants_call = Some(token),
            Err(error) => {
                let why = format!("cannot call cluster '{}': {error:?}", config.cluster);
                let _ = tenants.finished(
                    Err(EtcdError::Refused {
                        status: 0,
                        message: why.clone(),
                    }),
                    now,
                );
                plugin.warn("tenants", now, || {
                    format!("reading the tenants' webhooks: {why}")
                });
            }
        }
    }

    /// The answer to the tenants' read.
    fn tenants_answered(&mut self, worker: &Worker, answer: &EtcdAnswer) {
        let Some(tenants) = self.tenants.as_mut() else {
            return;
        };
        let now = host::now_ms();
        let outcome = tenants.finished(etcd::answer_body(answer.status, &answer.body), now);
        *worker.etcd_token.borrow_mut() = tenants.token().map(str::to_string);
        match outcome {
            Ok(Outcome::Same) => {}
            Ok(Outcome::Changed(definitions)) => self.apply_tenants(worker, definitions),
            Err(error) => {
                let metrics = &worker.metrics;
                metrics.add(metrics.cluster_state_errors, 1);
                if let Some(plugin) = worker.plugin() {
                    plugin.warn("tenants", now, || {
                        format!("reading the tenants' webhooks from etcd: {error}")
                    });
                }
            }
        }
    }

    /// The tenants' webhooks changed: one new plugin for the worker, its
    /// engine and its sync (deliveries waiting follow their webhook by id).
    fn apply_tenants(&mut self, worker: &Worker, definitions: Vec<WebhookDefinition>) {
        let Some(current) = worker.plugin() else {
            return;
        };
        let count = definitions.len();
        let plugin = Rc::new(current.with_tenants(definitions));
        self.report_tenants(worker, count);
        worker.set_plugin(plugin.clone());
        let mut host = self.host(worker);
        self.engine.configure(&mut host, plugin.clone());
        if let Some(sync) = self.sync.as_mut() {
            sync.carry_on(plugin);
        }
        log::debug!("envoy-webhooks: {count} tenant webhook(s) now");
    }

    fn load(&mut self, configuration_size: usize) -> Result<(), Vec<String>> {
        let bytes =
            host::buffer(BufferType::PluginConfiguration, configuration_size).unwrap_or_default();
        let loaded = Plugin::load(&bytes, |name| std::env::var(name).ok())?;
        // The tenants' webhooks: kept across a new configuration of the same
        // etcd (the new one has them at once), read anew otherwise.
        let same_etcd = self
            .worker
            .as_ref()
            .and_then(|w| w.plugin())
            .is_some_and(|old| {
                old.config.cluster_state == loaded.config.cluster_state && old.config.api.is_some()
            });
        let plugin = match (
            loaded.config.api.is_some(),
            loaded.config.cluster_state.as_ref(),
        ) {
            (true, Some(etcd)) => {
                if !same_etcd {
                    self.tenants = Some(Tenants::new(etcd, loaded.cluster_credentials.clone()));
                    self.tenants_call = None;
                }
                let now = host::now_ms();
                let current = self
                    .tenants
                    .as_mut()
                    .map(|tenants| tenants.definitions_now(now))
                    .unwrap_or_default();
                Rc::new(loaded.with_tenants(current))
            }
            _ => {
                self.tenants = None;
                self.tenants_call = None;
                Rc::new(loaded)
            }
        };
        let (vm_number, queue_id) = self.queue().map_err(|problem| vec![problem])?;
        let metrics = Metrics::define(plugin.definitions());
        // A name no other root context of any Envoy has: its journal's owner in etcd.
        let owner = format!("{vm_number}-{:x}", fastrand::u64(..));
        // A second configuration of this root context: the old sync's journal
        // goes on (same cluster_state) or retires (see `reconfigure`).
        self.sync = ClusterSync::reconfigure(self.sync.take(), plugin.clone(), vm_number, owner);
        self.engine
            .set_journaling(plugin.config.cluster_state.is_some());
        let worker = Rc::new(Worker::new(plugin.clone(), metrics, queue_id));
        if let Some(replaced) = self.worker.take() {
            // Its stats reach Envoy now; the tick is this root's, and goes on.
            worker.take_tick_from(&replaced);
            replaced.retire();
        }
        {
            let limit = i64::try_from(plugin.config.delivery.max_held_bytes).unwrap_or(i64::MAX);
            worker.metrics.add(
                worker.metrics.held_bytes_limit,
                limit.saturating_sub(self.held_limit_reported),
            );
            self.held_limit_reported = limit;
            self.report_tenants(&worker, plugin.tenant_count());
            let mut host = self.host(&worker);
            self.engine.set_vm_number(vm_number);
            self.engine.configure(&mut host, plugin);
            if self.sync.is_some() {
                // The poller's checks; the engine's own ticks come on top.
                host.set_tick_period_ms(0);
            }
        }
        self.worker = Some(worker);
        Ok(())
    }
}

impl Context for WebhooksRoot {
    /// Envoy removes this root context: a configuration replaced it (the VM
    /// lives on, and so does this context until `done()`), or Envoy stops
    /// (the VM is destroyed about a millisecond later, whatever we return).
    fn on_done(&mut self) -> bool {
        let Some(worker) = self.worker.clone() else {
            return true;
        };
        // No tick may come any more: stats reach Envoy as they are counted.
        worker.retire();
        let mut host = self.host(&worker);
        if let Some(sync) = self.sync.as_mut() {
            sync.stop(&mut host);
        }
        self.engine.stop(&mut host);
        if let Some(sync) = self.sync.as_mut() {
            // The journal's last deletes and the lease's revocation.
            sync.tick(&mut host, &mut self.engine);
        }
        let idle = self.is_finished();
        if idle {
            self.release_gauges(&worker);
        } else {
            if self.sync.is_some() {
                log::info!(
                    "envoy-webhooks: stopping: deliveries that waited for a retry are handed off to another Envoy once etcd holds them, the rest go to the dead-letter destination (reason shutdown); waiting for the calls in flight"
                );
            } else {
                log::info!(
                    "envoy-webhooks: stopping: deliveries that waited for a retry went to the dead-letter destination (reason shutdown); waiting for the calls in flight"
                );
            }
        }
        self.stopping = !idle;
        idle
    }

    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let Some(worker) = self.worker.clone() else {
            return;
        };
        self.see_health_changes(&worker);
        if self.tenants_call == Some(token_id) {
            self.tenants_call = None;
            let answer = etcd_answer(num_headers, body_size);
            self.tenants_answered(&worker, &answer);
            self.done_if_stopped();
            return;
        }
        let mut host = self.host(&worker);
        if let Some(sync) = self.sync.as_mut().filter(|sync| sync.owns(token_id)) {
            let answer = etcd_answer(num_headers, body_size);
            sync.call_finished(&mut host, token_id, &answer, &mut self.engine);
            self.done_if_stopped();
            return;
        }
        // No headers: the call ended without an answer, and the host has no
        // answer to read (the SDK would panic asking for it).
        let answer = (num_headers > 0).then(|| {
            let status = host::call_response_header(num_headers, ":status");
            // Only a failed attempt's delay can follow it: no header read on success.
            let failed = status.as_deref().is_none_or(|s| !s.starts_with('2'));
            // Nor a body read, unless it can be Envoy's own answer.
            let body_start = if needs_body(status.as_deref()) {
                host::buffer(
                    BufferType::HttpCallResponseBody,
                    body_size.min(ANSWER_BODY_BYTES),
                )
                .unwrap_or_default()
            } else {
                Vec::new()
            };
            Answer {
                retry_after: failed
                    .then(|| host::call_response_header(num_headers, "retry-after"))
                    .flatten(),
                status,
                body_start,
            }
        });
        self.engine
            .call_finished(&mut host, token_id, answer.as_ref());
        if self.stopping {
            // No tick comes any more: a delivery that failed again leaves
            // through the journal now (handed off once written, or
            // dead-lettered), and the lease is revoked once all are out.
            if let Some(sync) = self.sync.as_mut() {
                sync.tick(&mut host, &mut self.engine);
            }
        }
        self.done_if_stopped();
    }
}

impl RootContext for WebhooksRoot {
    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        // Log only what Envoy would print: formatting dropped messages costs.
        if let Ok(level) = hostcalls::get_log_level() {
            proxy_wasm::set_log_level(level);
        }
        match self.load(plugin_configuration_size) {
            Ok(()) => {
                log::info!(
                    "envoy-webhooks {}: loaded {} webhook definition(s)",
                    env!("CARGO_PKG_VERSION"),
                    self.worker
                        .as_ref()
                        .and_then(|w| w.plugin())
                        .map_or(0, |p| p.definitions().len())
                );
                let notes = self
                    .worker
                    .as_ref()
                    .and_then(|w| w.plugin())
                    .map(|p| p.config.notes())
                    .unwrap_or_default();
                for note in notes {
                    log::warn!("envoy-webhooks: {note}");
                }
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
        let Some(worker) = self.worker.clone() else {
            return;
        };
        // Wake-ups only: what they announce is in the worker's memory. The
        // host announces each enqueued wake-up once, and one waits at a time
        // (`Worker::hand_over`): one dequeue takes the one announced (an empty
        // value reads as `None`, like an empty queue).
        let _ = hostcalls::dequeue_shared_queue(queue_id);
        worker.woken();
        self.take_handed_over(&worker);
    }

    fn on_tick(&mut self) {
        if let Some(worker) = self.worker.clone() {
            if worker.flush_on_tick() {
                // No tick needed for the stats any more: the engine's own period.
                self.engine.forget_tick();
            }
            self.answer_stalled_admin(&worker);
            // Events handed over also go to the engine here: were a wake-up's
            // notice ever lost, none would wait longer than the stats' next
            // tick (which every request that counted something arms). A
            // wake-up still queued stays announced: no second one is queued.
            self.take_handed_over(&worker);
            if !self.stopping {
                self.poll_tenants(&worker);
            }
            // Until the tenants' webhooks are read, deliveries adopted from
            // other Envoys could not find theirs: the sync waits.
            let tenants_ready = self.tenants.as_ref().is_none_or(Tenants::has_read);
            let mut host = self.host(&worker);
            self.engine.tick(&mut host);
            if let (Some(sync), true) = (self.sync.as_mut(), tenants_ready || self.stopping) {
                sync.tick(&mut host, &mut self.engine);
            }
            self.done_if_stopped();
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(EventStream::new(self.worker.clone(), context_id)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
