//! One request: answers admin calls, and feeds an event request's body (as
//! it streams past, never pausing it) to the core's `Intake`, which decides
//! everything else.

use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType};

use crate::admin::{self, AdminRequest, AdminRoute};
use crate::config::DELIVERY_MARKER;
use crate::delivery::message::QueuedEvent;
use crate::intake::{self, Intake, IntakeCounter, IntakeHost, NotQueued};

use super::host::{self, ProxySharedData};
use super::worker::Worker;

pub struct EventStream {
    worker: Option<Rc<Worker>>,
    /// This request's context id (the root context answers a stalled admin request by it).
    context_id: u32,
    /// Present for a request that carries events.
    intake: Option<Intake>,
    /// An admin request answered once its whole body is here (`deliver`),
    /// with the body's size so far.
    admin_waiting: Option<(AdminRoute, usize)>,
}

/// How long an admin request may wait for the first piece of its body.
pub const STALLED_ADMIN_MS: u64 = 3_000;
/// How often the root context looks at waiting admin requests meanwhile.
pub const STALLED_ADMIN_CHECK_MS: u64 = 500;

/// The answer to an admin request whose body Envoy does not hand over.
pub const STALLED_ADMIN_ANSWER: &str = "this Envoy does not hand the filter a request body before the request goes on: set allow_on_headers_stop_iteration: true in the Wasm filter's config (Envoy 1.35 or later; see docs/operations.md)";

/// An admin body larger than this is refused at once (413): a body holds one
/// event, or one dead-letter record of one.
fn max_admin_body(worker: &Worker) -> usize {
    worker
        .plugin
        .config
        .events
        .max_event_bytes
        .saturating_add(64 * 1024)
}

/// The intake's host: the worker's stats and delivery queue. Made for one
/// callback: dropped at its end, it adds what was counted to Envoy's stats.
struct StreamHost<'a> {
    worker: &'a Worker,
}

impl Drop for StreamHost<'_> {
    fn drop(&mut self) {
        self.worker.end_callback();
    }
}

impl IntakeHost for StreamHost<'_> {
    fn now_ms(&self) -> u64 {
        host::now_ms()
    }

    fn count(&mut self, counter: IntakeCounter, n: u64) {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        let metrics = &self.worker.metrics;
        let metric = match counter {
            IntakeCounter::EventsSeen => metrics.events_seen,
            IntakeCounter::EventsInvalid => metrics.events_invalid,
            IntakeCounter::EventsOversized => metrics.events_oversized,
            IntakeCounter::EventsOverLimit => metrics.events_over_limit,
            IntakeCounter::DeliveriesOverLimit => metrics.deliveries_over_limit,
            IntakeCounter::RegexOverBudget => metrics.regex_over_budget,
            IntakeCounter::Matched(index) => metrics.webhook(index).matched,
            IntakeCounter::Dropped(index) => metrics.webhook(index).dropped,
            IntakeCounter::Lost(index) => metrics.webhook(index).lost,
            IntakeCounter::Withheld(index) => metrics.webhook(index).withheld,
        };
        metrics.add(metric, n);
    }

    fn enqueue(&mut self, event: QueuedEvent) -> Result<(), Box<NotQueued>> {
        self.worker.hand_over(event)
    }
}

impl EventStream {
    pub fn new(worker: Option<Rc<Worker>>, context_id: u32) -> EventStream {
        EventStream {
            worker,
            context_id,
            intake: None,
            admin_waiting: None,
        }
    }

    /// The admin route of the request, if it is for the admin API.
    fn admin_route(worker: &Worker, method: &str, path: &str) -> Option<AdminRoute> {
        let plugin = &worker.plugin;
        let (Some(admin_config), Some(token)) = (&plugin.config.admin, &plugin.admin_token) else {
            return None;
        };
        let prefix = admin_config.path_prefix.as_str();
        // Authorization is read only for admin paths: it costs a host call.
        if admin::route(prefix, token, method, path, None) == AdminRoute::NotAdmin {
            return None;
        }
        let authorization = host::request_header("authorization");
        Some(admin::route(
            prefix,
            token,
            method,
            path,
            authorization.as_deref(),
        ))
    }

    /// Answers an admin request routed to `route`, with its whole `body`.
    fn answer_admin(worker: &Worker, route: &AdminRoute, body: &[u8]) {
        let plugin = &worker.plugin;
        let request = AdminRequest {
            body,
            nonce: fastrand::u64(..),
        };
        let Some(mut answer) =
            admin::answer(plugin, &mut ProxySharedData, route, request, host::now_ms())
        else {
            return;
        };
        if answer.status < 300 {
            // A pause or enable takes effect on this worker at once.
            worker.health_changed.set(true);
        }
        if let Some((index, transition)) = &answer.transition {
            worker.report(*index, Some(transition));
        }
        if let Some(event) = answer.deliver.take() {
            if let Err(not_queued) = worker.hand_over(event) {
                let why = &not_queued.why;
                answer.status = 503;
                answer.body = admin::error_body(&format!(
                    "cannot hand the event to the worker's delivery engine ({why}); try again"
                ));
            }
        }
        Self::send_admin(answer.status, &answer.body);
    }

    fn send_admin(status: u32, body: &str) {
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

    /// Waits for the body of admin request `route`; the root context
    /// answers it if Envoy never hands the body over.
    fn wait_for_admin_body(&mut self, worker: &Worker, route: AdminRoute) {
        self.admin_waiting = Some((route, 0));
        let deadline = host::now_ms().saturating_add(STALLED_ADMIN_MS);
        worker
            .admin_waiting
            .borrow_mut()
            .push((self.context_id, deadline));
        // The root context's tick (proxy-wasm sets the root's period from any context).
        worker.tick_within(STALLED_ADMIN_CHECK_MS);
        worker.tick_overridden.set(true);
    }

    /// This request no longer waits for an admin body.
    fn stop_waiting(&self, worker: &Worker) {
        worker
            .admin_waiting
            .borrow_mut()
            .retain(|(id, _)| *id != self.context_id);
    }

    /// A chunk of an admin request that waits for its body; answers at its end.
    fn admin_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(worker) = self.worker.clone() else {
            return Action::Continue;
        };
        // The body comes: the filter reads it, nothing stalls.
        self.stop_waiting(&worker);
        let Some((route, seen)) = self.admin_waiting.as_mut() else {
            return Action::Continue;
        };
        *seen = body_size;
        if body_size > max_admin_body(&worker) {
            self.admin_waiting = None;
            Self::send_admin(
                413,
                &admin::error_body(&format!(
                    "the body is larger than {} bytes: send one event, or one dead-letter record",
                    max_admin_body(&worker)
                )),
            );
            return Action::Pause;
        }
        if end_of_stream {
            let route = route.clone();
            self.admin_waiting = None;
            let body = host::buffer(BufferType::HttpRequestBody, body_size).unwrap_or_default();
            Self::answer_admin(&worker, &route, &body);
        }
        // The admin API's own request, never the platform's: it is held until answered.
        Action::Pause
    }

    /// Runs `step` on the intake, if this request carries events.
    fn with_intake(&mut self, step: impl FnOnce(&mut Intake, &Worker, &mut StreamHost<'_>)) {
        if let (Some(worker), Some(intake)) = (self.worker.clone(), self.intake.as_mut()) {
            step(intake, &worker, &mut StreamHost { worker: &worker });
        }
    }
}

impl Context for EventStream {
    fn on_done(&mut self) -> bool {
        if let (Some(worker), Some(_)) = (self.worker.clone(), self.admin_waiting.take()) {
            self.stop_waiting(&worker);
        }
        self.with_intake(|intake, worker, sink| intake.done(&worker.plugin, sink));
        true
    }
}

impl HttpContext for EventStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(worker) = self.worker.clone() else {
            return Action::Continue;
        };
        if worker.plugin.matcher.matches_nothing() && worker.plugin.config.admin.is_none() {
            // Nothing to do for any request: not even a header is read.
            return Action::Continue;
        }
        let read = |name: &str| host::request_header(name).unwrap_or_default();
        let plugin = &worker.plugin;
        let (method, path) = if plugin.config.admin.is_some() {
            (read(":method"), read(":path"))
        } else if intake::path_first(plugin) {
            let path = read(":path");
            if !intake::watches_path(plugin, &path) {
                // No events here: the method is not even read.
                return Action::Continue;
            }
            (read(":method"), path)
        } else {
            let method = read(":method");
            if !intake::watches_method(plugin, &method) {
                return Action::Continue;
            }
            (method, read(":path"))
        };
        if let Some(route) = Self::admin_route(&worker, &method, &path) {
            if route.needs_body() && !end_of_stream {
                self.wait_for_admin_body(&worker, route);
            } else {
                Self::answer_admin(&worker, &route, &[]);
            }
            return Action::Pause;
        }
        if !intake::carries_events(&worker.plugin, &method, &path) {
            return Action::Continue;
        }
        if host::request_header(DELIVERY_MARKER).is_some() {
            // One of our own calls, come back through an Envoy with this filter.
            return Action::Continue;
        }
        let content_type = host::request_header("content-type");
        let propagated = intake::propagated_headers(&worker.plugin, host::request_header_exact);
        self.intake =
            Some(Intake::start(&worker.plugin, content_type.as_deref()).propagating(propagated));
        if end_of_stream {
            // No body at all.
            self.with_intake(|intake, worker, sink| intake.end_of_body(&worker.plugin, sink));
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.admin_waiting.is_some() {
            return self.admin_body(body_size, end_of_stream);
        }
        self.with_intake(|intake, worker, sink| {
            let chunk = host::buffer(BufferType::HttpRequestBody, body_size).unwrap_or_default();
            intake.body(&worker.plugin, sink, &chunk, end_of_stream);
        });
        Action::Continue
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        if let Some((_, seen)) = self.admin_waiting {
            return self.admin_body(seen, true);
        }
        self.with_intake(|intake, worker, sink| intake.end_of_body(&worker.plugin, sink));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.with_intake(|intake, worker, sink| {
            if intake.wants_response(&worker.plugin) {
                let status = host::response_header(":status").and_then(|s| s.parse().ok());
                intake.response(&worker.plugin, sink, status);
            }
        });
        Action::Continue
    }
}
