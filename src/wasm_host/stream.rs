//! One request: answer admin calls, or copy an event body as it streams past
//! (never pausing it), match its events and queue their deliveries.

use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType};

use crate::admin::{self, AdminRoute};
use crate::config::DeliverOn;
use crate::delivery::budget;
use crate::delivery::call::DELIVERY_MARKER;
use crate::delivery::message::{QueuedEvent, QueuedTarget};
use crate::event::{BodyCollector, BodyFormat, Event, NotAnEvent};

use super::host;
use super::host::ProxySharedData;
use super::worker::Worker;
use crate::logging::Printable;
use crate::webhook::store;

pub struct EventStream {
    worker: Option<Rc<Worker>>,
    /// Present while an event body is being copied.
    collector: Option<BodyCollector>,
    /// Matched events waiting for the end of the body, or for the upstream's
    /// answer (`deliver_on: response_2xx`).
    held: Vec<QueuedEvent>,
    /// Bytes reserved in the worker's budget for `held`.
    held_bytes: usize,
    /// The whole request body has been read.
    body_complete: bool,
    /// The upstream's `:status`, once known.
    response_status: Option<u16>,
    /// Deliveries this request has made or holds (`max_deliveries_per_request`).
    deliveries: usize,
    matches: Vec<usize>,
    /// Definitions whose query ran out of regex budget on the current event.
    over_budget: Vec<usize>,
}

impl EventStream {
    pub fn new(worker: Option<Rc<Worker>>) -> EventStream {
        EventStream {
            worker,
            collector: None,
            held: Vec::new(),
            held_bytes: 0,
            body_complete: false,
            response_status: None,
            deliveries: 0,
            matches: Vec::new(),
            over_budget: Vec::new(),
        }
    }

    fn is_event_request(worker: &Worker, method: &str, path: &str) -> bool {
        let events = &worker.plugin.config.events;
        events
            .methods
            .iter()
            .any(|m| m.eq_ignore_ascii_case(method))
            && events
                .path_prefixes
                .iter()
                .any(|p| path.starts_with(p.as_str()))
    }

    fn answer_admin(&self, worker: &Worker, route: AdminRoute) {
        let (status, body) = match route {
            AdminRoute::NotAdmin => return,
            AdminRoute::Unauthorized => (401, admin::error_body("unauthorized")),
            AdminRoute::NotFound => (404, admin::error_body("not found")),
            AdminRoute::MethodNotAllowed { allow } => (
                405,
                admin::error_body(&format!("method not allowed; use {allow}")),
            ),
            AdminRoute::Status => {
                let now_s = host::now_ms() / 1000;
                let webhooks: Vec<_> = worker
                    .plugin
                    .definitions()
                    .iter()
                    .map(|d| admin::status_entry(d, &store::load(&ProxySharedData, d, now_s)))
                    .collect();
                (200, serde_json::json!({ "webhooks": webhooks }).to_string())
            }
            AdminRoute::Pending => (
                200,
                admin::pending_body(
                    worker.plugin.definitions(),
                    &store::read_pending(&ProxySharedData),
                    host::now_ms(),
                ),
            ),
            AdminRoute::Enable(id) => self.enable(worker, &id),
        };
        let mut headers = vec![
            ("content-type", "application/json"),
            ("cache-control", "no-store"),
        ];
        if status == 401 {
            headers.push(("www-authenticate", "Bearer"));
        }
        if let Err(e) = hostcalls::send_http_response(status, headers, Some(body.as_bytes())) {
            log::warn!("envoy-webhooks: cannot answer an admin request: {e:?}");
        }
    }

    fn enable(&self, worker: &Worker, id: &str) -> (u32, String) {
        let Some((index, definition)) = worker
            .plugin
            .definitions()
            .iter()
            .enumerate()
            .find(|(_, d)| d.id == id)
        else {
            return (404, admin::error_body(&format!("no webhook with id {id}")));
        };
        let now_s = host::now_ms() / 1000;
        match store::update(&mut ProxySharedData, definition, now_s, |health| {
            health.enable()
        }) {
            Some((health, transition)) => {
                worker.report(index, transition.as_ref());
                if health.status == crate::status::Status::Disabled {
                    return (
                        409,
                        admin::error_body(&format!(
                            "webhook {id} is DISABLED in the configuration; change its status there"
                        )),
                    );
                }
                (200, admin::status_entry(definition, &health).to_string())
            }
            None => (
                503,
                admin::error_body("could not update the webhook's status; try again"),
            ),
        }
    }

    /// Matches finished events and holds their deliveries until they may go.
    fn handle(&mut self, worker: &Worker, events: Vec<Result<Event, NotAnEvent>>) {
        let metrics = &worker.metrics;
        let max_deliveries = worker.plugin.config.events.max_deliveries_per_request;
        for event in events {
            let event = match event {
                Ok(event) => event,
                Err(NotAnEvent::Oversized { limit }) => {
                    metrics.events_oversized.increment();
                    worker.plugin.warn("event_oversized", host::now_ms(), || {
                        format!("event skipped: larger than events.max_event_bytes ({limit} bytes)")
                    });
                    continue;
                }
                Err(problem) => {
                    metrics.events_invalid.increment();
                    log::debug!(
                        "envoy-webhooks: not an event, passed through untouched: {}",
                        Printable(&problem.to_string())
                    );
                    continue;
                }
            };
            metrics.events_seen.increment();
            self.matches.clear();
            self.over_budget.clear();
            worker.plugin.matcher.matching_with_budget(
                &event.value,
                &mut self.matches,
                &mut self.over_budget,
            );
            if !self.over_budget.is_empty() {
                let count = self.over_budget.len();
                metrics
                    .regex_over_budget
                    .add(i64::try_from(count).unwrap_or(i64::MAX));
                worker.plugin.warn("regex_over_budget", host::now_ms(), || {
                    format!("{count} webhook query(ies) not matched: their regexes would take too long on this event")
                });
            }
            if self.matches.is_empty() {
                continue;
            }
            let room = max_deliveries.saturating_sub(self.deliveries);
            let over = self.matches.len().saturating_sub(room);
            if over > 0 {
                self.matches.truncate(room);
                metrics
                    .deliveries_over_limit
                    .add(i64::try_from(over).unwrap_or(i64::MAX));
                worker.plugin.warn("deliveries_over_limit", host::now_ms(), || {
                    format!("{over} delivery(ies) of a request not made: over events.max_deliveries_per_request ({max_deliveries})")
                });
                if self.matches.is_empty() {
                    continue;
                }
            }
            let body = event.json.into_bytes();
            // Every delivery of the event counts: each call holds its own copy in Envoy.
            let each = budget::delivery_cost(body.len());
            let fitting = worker.plugin.held.room_for(each).min(self.matches.len());
            if fitting < self.matches.len() {
                // Matched, but the worker cannot hold them: dropped, and lost
                // (a dead letter would need the room there is not).
                let count = self.matches.len().saturating_sub(fitting);
                for &index in self.matches.get(fitting..).unwrap_or_default() {
                    let webhook = worker.metrics.webhook(index);
                    webhook.matched.increment();
                    webhook.dropped.increment();
                    webhook.lost.increment();
                }
                self.matches.truncate(fitting);
                worker.plugin.warn("held_bytes_full", host::now_ms(), || {
                    format!("{count} delivery(ies) not made (dropped, lost): the worker holds delivery.max_held_bytes ({} bytes) already", worker.plugin.held.limit())
                });
                if self.matches.is_empty() {
                    continue;
                }
            }
            let cost = each.saturating_mul(self.matches.len());
            if !worker.plugin.held.reserve_in_request(cost) {
                continue;
            }
            self.held_bytes = self.held_bytes.saturating_add(cost);
            self.deliveries = self.deliveries.saturating_add(self.matches.len());
            let request_id = event
                .value
                .get("request_id")
                .and_then(|id| id.as_str())
                .map(str::to_string);
            let mut targets = Vec::with_capacity(self.matches.len());
            for &index in &self.matches {
                let Some(definition) = worker.plugin.definitions().get(index) else {
                    continue;
                };
                let Ok(webhook) = u32::try_from(index) else {
                    continue;
                };
                metrics.webhook(index).matched.increment();
                targets.push(QueuedTarget {
                    webhook,
                    fingerprint: definition.fingerprint,
                });
            }
            self.held.push(QueuedEvent {
                targets,
                request_id,
                body,
            });
        }
        self.release(worker);
    }

    /// Queues held deliveries once their time has come: the body is complete
    /// (`deliver_on: request`), or the upstream answered 2xx (`response_2xx`).
    fn release(&mut self, worker: &Worker) {
        if self.held.is_empty() {
            return;
        }
        match (worker.plugin.config.events.deliver_on, self.response_status) {
            (DeliverOn::Request, _) if !self.body_complete => return,
            (DeliverOn::Request, _) => {}
            (DeliverOn::Response2xx, None) => return,
            (DeliverOn::Response2xx, Some(status)) if (200..300).contains(&status) => {}
            (DeliverOn::Response2xx, Some(status)) => {
                log::debug!(
                    "envoy-webhooks: upstream answered {status}: {} event(s) not delivered",
                    self.held.len()
                );
                self.withhold(worker);
                return;
            }
        }
        worker
            .plugin
            .held
            .release_in_request(std::mem::take(&mut self.held_bytes));
        for event in self.held.drain(..) {
            if let Err(status) =
                hostcalls::enqueue_shared_queue(worker.queue_id, Some(&event.encode()))
            {
                for target in &event.targets {
                    let metrics = worker
                        .metrics
                        .webhook(usize::try_from(target.webhook).unwrap_or(usize::MAX));
                    metrics.dropped.increment();
                    metrics.lost.increment();
                }
                worker.plugin.warn("queue_failed", host::now_ms(), || {
                    format!(
                        "event request_id={} not delivered: cannot queue it ({status:?})",
                        Printable(event.request_id.as_deref().unwrap_or("-"))
                    )
                });
            }
        }
    }

    /// Counts and drops the held deliveries: the platform's request did not
    /// succeed, or ended before its body was complete.
    fn withhold(&mut self, worker: &Worker) {
        worker
            .plugin
            .held
            .release_in_request(std::mem::take(&mut self.held_bytes));
        for event in self.held.drain(..) {
            for target in &event.targets {
                worker
                    .metrics
                    .webhook(usize::try_from(target.webhook).unwrap_or(usize::MAX))
                    .withheld
                    .increment();
            }
        }
    }

    /// Counts the events the collector skipped past `max_events_per_request`.
    fn count_skipped(worker: &Worker, collector: &BodyCollector) {
        let skipped = collector.events_over_limit();
        if skipped > 0 {
            worker
                .metrics
                .events_over_limit
                .add(i64::try_from(skipped).unwrap_or(i64::MAX));
            let max = worker.plugin.config.events.max_events_per_request;
            worker.plugin.warn("events_over_limit", host::now_ms(), || {
                format!("{skipped} event(s) of a request skipped: over events.max_events_per_request ({max})")
            });
        }
    }

    fn finish_body(&mut self, worker: &Worker) {
        self.body_complete = true;
        if let Some(mut collector) = self.collector.take() {
            let mut events = Vec::new();
            collector.finish(&mut events);
            Self::count_skipped(worker, &collector);
            self.handle(worker, events);
        }
        self.release(worker);
    }
}

impl Context for EventStream {
    fn on_done(&mut self) -> bool {
        // The request ended before its body was complete or before the
        // upstream answered (a reset): its deliveries are not made.
        if !self.held.is_empty() {
            if let Some(worker) = self.worker.clone() {
                self.withhold(&worker);
            }
        }
        true
    }
}

impl HttpContext for EventStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(worker) = self.worker.clone() else {
            return Action::Continue;
        };
        if host::request_header(DELIVERY_MARKER).is_some() {
            // One of our own calls, come back through an Envoy with this filter.
            return Action::Continue;
        }
        let method = host::request_header(":method").unwrap_or_default();
        let path = host::request_header(":path").unwrap_or_default();
        if let (Some(admin_config), Some(token)) =
            (&worker.plugin.config.admin, &worker.plugin.admin_token)
        {
            let prefix = admin_config.path_prefix.as_str();
            // Authorization is read only for admin paths: it costs a host call.
            if admin::route(prefix, token, &method, &path, None) != AdminRoute::NotAdmin {
                let authorization = host::request_header("authorization");
                let route = admin::route(prefix, token, &method, &path, authorization.as_deref());
                self.answer_admin(&worker, route);
                return Action::Pause;
            }
        }
        if !Self::is_event_request(&worker, &method, &path) {
            return Action::Continue;
        }
        let format = BodyFormat::from_content_type(host::request_header("content-type").as_deref());
        let collector = BodyCollector::new(format, worker.plugin.config.events.max_event_bytes)
            .with_fields(worker.plugin.fields.clone())
            .with_max_events(worker.plugin.config.events.max_events_per_request);
        self.collector = Some(collector);
        if end_of_stream {
            // No body at all.
            self.finish_body(&worker);
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(worker) = self.worker.clone() else {
            return Action::Continue;
        };
        if let Some(collector) = self.collector.as_mut() {
            let mut events = Vec::new();
            let chunk = host::buffer(BufferType::HttpRequestBody, body_size).unwrap_or_default();
            if end_of_stream {
                collector.finish_with(&chunk, &mut events);
                Self::count_skipped(&worker, collector);
                self.collector = None;
                self.body_complete = true;
            } else {
                collector.push(&chunk, &mut events);
            }
            if !events.is_empty() || end_of_stream {
                self.handle(&worker, events);
            }
        }
        Action::Continue
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        if let Some(worker) = self.worker.clone() {
            self.finish_body(&worker);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(worker) = self.worker.clone() {
            if worker.plugin.config.events.deliver_on == DeliverOn::Response2xx {
                self.response_status = host::response_header(":status")
                    .and_then(|s| s.parse().ok())
                    .or(Some(0));
                self.release(&worker);
            }
        }
        Action::Continue
    }
}
