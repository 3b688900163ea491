//! One request: answer admin calls, or copy an event body as it streams past
//! (never pausing it), match its events and queue their deliveries.

use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType};

use crate::admin::{self, AdminRoute};
use crate::config::DeliverOn;
use crate::delivery::QueuedDelivery;
use crate::events::{BodyCollector, BodyFormat, Event, NotAnEvent};

use super::health_store;
use super::host;
use super::plugin::Plugin;

pub struct EventStream {
    plugin: Option<Rc<Plugin>>,
    /// Present while an event body is being copied.
    collector: Option<BodyCollector>,
    /// Deliveries waiting for the upstream's answer (`deliver_on: response_2xx`).
    held: Vec<QueuedDelivery>,
    /// The upstream's `:status`, once known.
    response_status: Option<u16>,
    matches: Vec<usize>,
}

impl EventStream {
    pub fn new(plugin: Option<Rc<Plugin>>) -> EventStream {
        EventStream {
            plugin,
            collector: None,
            held: Vec::new(),
            response_status: None,
            matches: Vec::new(),
        }
    }

    fn is_event_request(plugin: &Plugin, method: &str, path: &str) -> bool {
        let events = &plugin.config.events;
        events
            .methods
            .iter()
            .any(|m| m.eq_ignore_ascii_case(method))
            && events
                .path_prefixes
                .iter()
                .any(|p| path.starts_with(p.as_str()))
    }

    fn answer_admin(&self, plugin: &Plugin, route: AdminRoute) {
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
                let webhooks: Vec<_> = plugin
                    .definitions()
                    .iter()
                    .map(|d| admin::status_entry(d, &health_store::load(d, now_s)))
                    .collect();
                (200, serde_json::json!({ "webhooks": webhooks }).to_string())
            }
            AdminRoute::Pending => (
                200,
                admin::pending_body(
                    plugin.definitions(),
                    &health_store::read_pending(),
                    host::now_ms(),
                ),
            ),
            AdminRoute::Enable(id) => self.enable(plugin, &id),
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

    fn enable(&self, plugin: &Plugin, id: &str) -> (u32, String) {
        let Some((index, definition)) = plugin
            .definitions()
            .iter()
            .enumerate()
            .find(|(_, d)| d.id == id)
        else {
            return (404, admin::error_body(&format!("no webhook with id {id}")));
        };
        let now_s = host::now_ms() / 1000;
        match health_store::update(definition, now_s, |health| health.enable()) {
            Some((health, transition)) => {
                plugin.report(index, transition.as_ref());
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

    /// Matches finished events and queues (or holds) their deliveries.
    fn handle(&mut self, plugin: &Plugin, events: Vec<Result<Event, NotAnEvent>>) {
        let metrics = &plugin.metrics;
        for event in events {
            let event = match event {
                Ok(event) => event,
                Err(NotAnEvent::Oversized { limit }) => {
                    metrics.events_oversized.increment();
                    log::info!("envoy-webhooks: event skipped: larger than events.max_event_bytes ({limit} bytes)");
                    continue;
                }
                Err(problem) => {
                    metrics.events_invalid.increment();
                    log::debug!(
                        "envoy-webhooks: not an event, passed through untouched: {problem}"
                    );
                    continue;
                }
            };
            metrics.events_seen.increment();
            self.matches.clear();
            plugin.matcher.matching(&event.value, &mut self.matches);
            if self.matches.is_empty() {
                continue;
            }
            let request_id = event
                .value
                .get("request_id")
                .and_then(|id| id.as_str())
                .map(str::to_string);
            let body = event.json.into_bytes();
            for &index in &self.matches {
                let Some(definition) = plugin.definitions().get(index) else {
                    continue;
                };
                metrics.webhook(index).matched.increment();
                let delivery = QueuedDelivery {
                    webhook: index as u32,
                    fingerprint: definition.fingerprint,
                    request_id: request_id.clone(),
                    body: body.clone(),
                };
                self.held.push(delivery);
            }
        }
        self.release(plugin);
    }

    /// Queues held deliveries once their time has come.
    fn release(&mut self, plugin: &Plugin) {
        if self.held.is_empty() {
            return;
        }
        match (plugin.config.events.deliver_on, self.response_status) {
            (DeliverOn::Request, _) => {}
            (DeliverOn::Response2xx, None) => return,
            (DeliverOn::Response2xx, Some(status)) if (200..300).contains(&status) => {}
            (DeliverOn::Response2xx, Some(status)) => {
                log::debug!(
                    "envoy-webhooks: upstream answered {status}: {} delivery(ies) not made",
                    self.held.len()
                );
                self.withhold(plugin);
                return;
            }
        }
        for delivery in self.held.drain(..) {
            if let Err(status) =
                hostcalls::enqueue_shared_queue(plugin.queue_id, Some(&delivery.encode()))
            {
                plugin
                    .metrics
                    .webhook(delivery.webhook as usize)
                    .dropped
                    .increment();
                log::warn!("envoy-webhooks: delivery dropped: cannot queue it ({status:?})");
            }
        }
    }

    /// Counts and drops the held deliveries: the platform's request did not succeed.
    fn withhold(&mut self, plugin: &Plugin) {
        for delivery in self.held.drain(..) {
            plugin
                .metrics
                .webhook(delivery.webhook as usize)
                .withheld
                .increment();
        }
    }

    fn finish_body(&mut self, plugin: &Plugin) {
        if let Some(mut collector) = self.collector.take() {
            let mut events = Vec::new();
            collector.finish(&mut events);
            self.handle(plugin, events);
        }
    }
}

impl Context for EventStream {
    fn on_done(&mut self) -> bool {
        // The request ended without an answer from the upstream (a reset).
        if !self.held.is_empty() {
            if let Some(plugin) = self.plugin.clone() {
                self.withhold(&plugin);
            }
        }
        true
    }
}

impl HttpContext for EventStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(plugin) = self.plugin.clone() else {
            return Action::Continue;
        };
        let method = host::request_header(":method").unwrap_or_default();
        let path = host::request_header(":path").unwrap_or_default();
        if let (Some(admin_config), Some(token)) = (&plugin.config.admin, &plugin.admin_token) {
            let authorization = if path.starts_with(admin_config.path_prefix.as_str()) {
                host::request_header("authorization")
            } else {
                None
            };
            let route = admin::route(
                &admin_config.path_prefix,
                token,
                &method,
                &path,
                authorization.as_deref(),
            );
            if route != AdminRoute::NotAdmin {
                self.answer_admin(&plugin, route);
                return Action::Pause;
            }
        }
        if !Self::is_event_request(&plugin, &method, &path) {
            return Action::Continue;
        }
        let format = BodyFormat::from_content_type(host::request_header("content-type").as_deref());
        let mut collector = BodyCollector::new(format, plugin.config.events.max_event_bytes)
            .with_fields(plugin.fields.clone());
        if end_of_stream {
            // No body at all.
            let mut events = Vec::new();
            collector.finish(&mut events);
            self.handle(&plugin, events);
        } else {
            self.collector = Some(collector);
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(plugin) = self.plugin.clone() else {
            return Action::Continue;
        };
        if let Some(collector) = self.collector.as_mut() {
            let mut events = Vec::new();
            let chunk = if body_size > 0 {
                host::buffer(BufferType::HttpRequestBody, body_size).unwrap_or_default()
            } else {
                Vec::new()
            };
            if end_of_stream {
                collector.finish_with(&chunk, &mut events);
                self.collector = None;
            } else {
                collector.push(&chunk, &mut events);
            }
            if !events.is_empty() {
                self.handle(&plugin, events);
            }
        }
        Action::Continue
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        if let Some(plugin) = self.plugin.clone() {
            self.finish_body(&plugin);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(plugin) = self.plugin.clone() {
            if plugin.config.events.deliver_on == DeliverOn::Response2xx {
                self.response_status = host::response_header(":status")
                    .and_then(|s| s.parse().ok())
                    .or(Some(0));
                self.release(&plugin);
            }
        }
        Action::Continue
    }
}
