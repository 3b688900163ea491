//! One request: answers admin and API calls (`crate::serve` routes them), and feeds an event request's
//! body (as it streams past, never pausing it) to the core's `Intake`,
//! which decides everything else.

use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType};

use crate::admin::{self, AdminRequest, AdminRoute};
use crate::api::exchange::{Answer, Operation};
use crate::api::ApiRoute;
use crate::body_wait;
use crate::config::{Caller, DELIVERY_MARKER};
use crate::delivery::message::QueuedEvent;
use crate::intake::{self, Intake, IntakeCounter, IntakeHost, NotQueued};
use crate::plugin::Plugin;
use crate::serve::caller::Refusal;
use crate::serve::{self, Entrance, Served};

use super::api::{self, Waiting};
use super::host::{self, ProxySharedData};
use super::worker::Worker;

/// A request answered once its whole body is here.
enum BodyFor {
    /// An admin `deliver`.
    Admin(AdminRoute),
    /// An API create or change.
    Api(Operation, Caller),
}

pub struct EventStream {
    worker: Option<Rc<Worker>>,
    /// The plugin this request started with (tenant changes swap the
    /// worker's; a request keeps its own, so its indices stay valid).
    plugin: Option<Rc<Plugin>>,
    /// This request's context id (the root context answers a stalled admin request by it).
    context_id: u32,
    /// Present for a request that carries events.
    intake: Option<Intake>,
    /// A request answered once its whole body is here, with the body's size so far.
    admin_waiting: Option<(BodyFor, usize)>,
    /// An API request waiting for etcd's answer to its call.
    api_call: Option<Waiting>,
    /// The request is the admin API's or the API's: it never goes on to the
    /// upstream (it carries a token), whatever callback comes next.
    ours: bool,
}

/// A body larger than this is refused at once (413): an admin body holds
/// one event, or one dead-letter record of one; an API body, one webhook.
fn max_body(plugin: &Plugin, waiting: &BodyFor) -> usize {
    match waiting {
        BodyFor::Admin(_) => plugin
            .config
            .events
            .max_event_bytes
            .saturating_add(64 * 1024),
        BodyFor::Api(..) => plugin
            .config
            .api
            .as_ref()
            .map_or(0, |api| api.max_body_bytes),
    }
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
            plugin: None,
            context_id,
            intake: None,
            admin_waiting: None,
            api_call: None,
            ours: false,
        }
    }

    /// Answers an admin request routed to `route`, with its whole `body`.
    fn answer_admin(worker: &Worker, plugin: &Plugin, route: &AdminRoute, body: &[u8]) {
        let request = AdminRequest {
            body,
            nonce: fastrand::u128(..),
        };
        let mut answer =
            admin::answer(plugin, &mut ProxySharedData, route, request, host::now_ms());
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

    /// Waits for the body of an admin or API request; the root context
    /// answers it if Envoy never hands the body over.
    fn wait_for_body(&mut self, worker: &Worker, waiting: BodyFor) {
        let api = match waiting {
            BodyFor::Admin(_) => body_wait::Api::Admin,
            BodyFor::Api(..) => body_wait::Api::Webhooks,
        };
        self.admin_waiting = Some((waiting, 0));
        if let Ok(mut waiting) = worker.admin_waiting.try_borrow_mut() {
            waiting.add(self.context_id, api, host::now_ms());
        }
        // The root context's tick (proxy-wasm sets the root's period from any context).
        worker.tick_within(body_wait::CHECK_MS);
        worker.tick_overridden.set(true);
    }

    /// This request no longer waits for an admin body.
    fn stop_waiting(&self, worker: &Worker) {
        if let Ok(mut waiting) = worker.admin_waiting.try_borrow_mut() {
            waiting.remove(self.context_id);
        }
    }

    /// A chunk of an admin or API request that waits for its body; answers at its end.
    fn admin_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let (Some(worker), Some(plugin)) = (self.worker.clone(), self.plugin.clone()) else {
            // Never the case for a request that waits for its body; were it, it goes nowhere.
            return Action::Pause;
        };
        // The body comes: the filter reads it, nothing stalls.
        self.stop_waiting(&worker);
        let Some((waiting, seen)) = self.admin_waiting.as_mut() else {
            return Action::Continue;
        };
        *seen = body_size;
        let limit = max_body(&plugin, waiting);
        if body_size > limit {
            let is_api = matches!(waiting, BodyFor::Api(..));
            self.admin_waiting = None;
            if is_api {
                api::send(
                    &Answer::error(
                        413,
                        "body",
                        format!("is larger than {limit} bytes (api.max_body_bytes)"),
                    ),
                    None,
                );
            } else {
                Self::send_admin(
                    413,
                    &admin::error_body(&format!(
                        "the body is larger than {limit} bytes: send one event, or one dead-letter record"
                    )),
                );
            }
            return Action::Pause;
        }
        if end_of_stream {
            let body = host::buffer(BufferType::HttpRequestBody, body_size).unwrap_or_default();
            match self.admin_waiting.take().map(|(waiting, _)| waiting) {
                Some(BodyFor::Admin(route)) => Self::answer_admin(&worker, &plugin, &route, &body),
                Some(BodyFor::Api(operation, caller)) => {
                    self.api_call = api::start(&worker, &plugin, operation, caller, body);
                }
                None => {}
            }
        }
        // The admin API's or the API's own request, never the platform's: it is held until answered.
        Action::Pause
    }

    /// Answers a request the filter serves itself (admin or API), or waits
    /// for its body; the request never goes on to the upstream.
    fn serve(&mut self, worker: &Worker, plugin: &Plugin, served: Served, end_of_stream: bool) {
        self.ours = true;
        let waits = served.needs_body() && !end_of_stream;
        match served {
            Served::Refused(Entrance::Admin, Refusal(why)) => {
                Self::send_admin(401, &admin::error_body(&format!("unauthorized: {why}")));
            }
            Served::Refused(Entrance::Api, Refusal(why)) => {
                api::send(&Answer::error(401, "authorization", why), None);
            }
            Served::Admin(route) if waits => self.wait_for_body(worker, BodyFor::Admin(route)),
            Served::Admin(route) => Self::answer_admin(worker, plugin, &route, &[]),
            Served::Api(ApiRoute::NotFound, _) => api::send(
                &Answer::error(404, "path", "no such API path (see docs/api.md)"),
                None,
            ),
            Served::Api(ApiRoute::MethodNotAllowed { allow }, _) => api::send(
                &Answer::error(405, "method", format!("use {allow}")),
                Some(allow),
            ),
            Served::Api(ApiRoute::Operation(operation), caller) if waits => {
                self.wait_for_body(worker, BodyFor::Api(operation, caller));
            }
            Served::Api(ApiRoute::Operation(operation), caller) => {
                self.api_call = api::start(worker, plugin, operation, caller, Vec::new());
            }
        }
    }

    /// Runs `step` on the intake, if this request carries events.
    fn with_intake(&mut self, step: impl FnOnce(&mut Intake, &Plugin, &mut StreamHost<'_>)) {
        if let (Some(worker), Some(plugin), Some(intake)) = (
            self.worker.clone(),
            self.plugin.clone(),
            self.intake.as_mut(),
        ) {
            step(intake, &plugin, &mut StreamHost { worker: &worker });
        }
    }
}

/// What a request is to the filter.
enum Request {
    /// The admin API's or the API's: answered here.
    Served(Served),
    /// It carries events.
    Events,
    /// Anything else: not looked at further.
    Passes,
}

impl EventStream {
    /// What the request is, from as few header reads as it takes (each read
    /// that returns a value costs Envoy a call back into the VM).
    fn what_is(plugin: &Plugin, serves: bool, end_of_stream: bool) -> Request {
        let read = |name: &str| host::request_header(name).unwrap_or_default();
        if plugin.config.events.selected_by_routes {
            // Envoy's routes chose this request: it carries events unless it
            // is the admin API's or the API's. Only those need the path.
            if serves {
                let path = read(":path");
                if serve::serves_path(plugin, &path) {
                    let served =
                        serve::route(plugin, &read(":method"), &path, &host::request_header);
                    return served.map_or(Request::Passes, Request::Served);
                }
            }
            if end_of_stream || plugin.matcher.matches_nothing() {
                // No body (a route that takes GETs too): no events.
                return Request::Passes;
            }
            return Request::Events;
        }
        let (method, path) = if serves {
            (read(":method"), read(":path"))
        } else if intake::path_first(plugin) {
            let path = read(":path");
            if !intake::watches_path(plugin, &path) {
                // No events here: the method is not even read.
                return Request::Passes;
            }
            (read(":method"), path)
        } else {
            let method = read(":method");
            if !intake::watches_method(plugin, &method) {
                return Request::Passes;
            }
            (method, read(":path"))
        };
        if serves {
            if let Some(served) = serve::route(plugin, &method, &path, &host::request_header) {
                return Request::Served(served);
            }
        }
        if intake::carries_events(plugin, &method, &path) {
            Request::Events
        } else {
            Request::Passes
        }
    }
}

impl Context for EventStream {
    fn on_done(&mut self) -> bool {
        if let (Some(worker), Some(_)) = (self.worker.clone(), self.admin_waiting.take()) {
            self.stop_waiting(&worker);
        }
        self.with_intake(|intake, plugin, sink| intake.done(plugin, sink));
        true
    }

    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let (Some(worker), Some(plugin)) = (self.worker.clone(), self.plugin.clone()) else {
            return;
        };
        match self.api_call.take() {
            Some(waiting) if waiting.token == token_id => {
                self.api_call = api::answered(&worker, &plugin, waiting, num_headers, body_size);
            }
            other => self.api_call = other,
        }
    }
}

impl HttpContext for EventStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(worker) = self.worker.clone() else {
            return Action::Continue;
        };
        let Some(plugin) = worker.plugin() else {
            return Action::Continue;
        };
        let serves = plugin.config.admin.is_some() || plugin.config.api.is_some();
        if plugin.matcher.matches_nothing() && !serves {
            // Nothing to do for any request: not even a header is read.
            return Action::Continue;
        }
        self.plugin = Some(plugin.clone());
        match Self::what_is(&plugin, serves, end_of_stream) {
            Request::Served(served) => {
                self.serve(&worker, &plugin, served, end_of_stream);
                return Action::Pause;
            }
            Request::Passes => return Action::Continue,
            Request::Events => {}
        }
        if host::request_header(DELIVERY_MARKER).is_some() {
            // One of our own calls, come back through an Envoy with this filter.
            return Action::Continue;
        }
        let content_type = host::request_header("content-type");
        let propagated = intake::propagated_headers(&plugin, host::request_header_exact);
        self.intake = Some(Intake::start(&plugin, content_type.as_deref()).propagating(propagated));
        if end_of_stream {
            // No body at all.
            self.with_intake(|intake, plugin, sink| intake.end_of_body(plugin, sink));
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.admin_waiting.is_some() {
            return self.admin_body(body_size, end_of_stream);
        }
        if self.ours {
            // Answered, or being answered (an API request waits for etcd):
            // its body is not needed, and the request goes nowhere.
            return Action::Pause;
        }
        self.with_intake(|intake, plugin, sink| {
            let chunk = host::buffer(BufferType::HttpRequestBody, body_size).unwrap_or_default();
            intake.body(plugin, sink, &chunk, end_of_stream);
        });
        Action::Continue
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        if let Some((_, seen)) = self.admin_waiting {
            return self.admin_body(seen, true);
        }
        if self.ours {
            return Action::Pause;
        }
        self.with_intake(|intake, plugin, sink| intake.end_of_body(plugin, sink));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.with_intake(|intake, plugin, sink| {
            if intake.wants_response(plugin) {
                let status = host::response_header(":status").and_then(|s| s.parse().ok());
                intake.response(plugin, sink, status);
            }
        });
        Action::Continue
    }
}
