//! One request's events: read from the body as it streams past, matched,
//! bounded, and held until they may go to the worker's delivery engine (the
//! body is complete; with `deliver_on: response_2xx`, the upstream answered
//! 2xx). Every decision on the request side is here; the proxy-wasm adapter
//! only feeds it the request's callbacks.
//!
//! Nothing here can delay or change the platform's request: the intake only
//! reads copies of its body.

use std::rc::Rc;

use serde_json::Value;

use crate::config::header_value_refusal;
use crate::config::DeliverOn;
use crate::delivery::budget;
use crate::delivery::message::{QueuedEvent, QueuedTarget, MAX_PROPAGATED_BYTES};
use crate::event::view::{Viewed, REQUEST_ID};
use crate::event::{BodyCollector, BodyFormat, EventSink, NotAnEvent};
use crate::logging::Printable;
use crate::plugin::Plugin;

/// What a request's intake counts (docs/operations.md's metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IntakeCounter {
    EventsSeen,
    EventsInvalid,
    EventsOversized,
    EventsOverLimit,
    DeliveriesOverLimit,
    RegexOverBudget,
    Matched(usize),
    Dropped(usize),
    Lost(usize),
    Withheld(usize),
}

/// What the intake needs of its host.
pub trait IntakeHost {
    fn now_ms(&self) -> u64;
    fn count(&mut self, counter: IntakeCounter, n: u64);
    /// Hands a matched event to the worker's delivery engine; gives it back,
    /// with why, if it cannot.
    fn enqueue(&mut self, event: QueuedEvent) -> Result<(), Box<NotQueued>>;
}

/// An event the worker's delivery engine could not be handed, and why.
#[derive(Debug)]
pub struct NotQueued {
    pub event: QueuedEvent,
    pub why: String,
}

/// Whether a request carries events: its method and path are configured,
/// and some definition can match at all (else its body is not even read).
pub fn carries_events(plugin: &Plugin, method: &str, path: &str) -> bool {
    watches_method(plugin, method) && watches_path(plugin, path)
}

/// Whether a request with `method` can carry events, whatever its path.
pub fn watches_method(plugin: &Plugin, method: &str) -> bool {
    !plugin.matcher.matches_nothing()
        && plugin
            .config
            .events
            .methods
            .iter()
            .any(|m| m.eq_ignore_ascii_case(method))
}

/// Whether a request to `path` can carry events, whatever its method.
pub fn watches_path(plugin: &Plugin, path: &str) -> bool {
    !plugin.matcher.matches_nothing()
        && plugin
            .config
            .events
            .path_prefixes
            .iter()
            .any(|p| path.starts_with(p.as_str()))
}

/// Which of a request's method and path to read first, so that most of the
/// platform's other traffic costs one header read, not two (a read that
/// returns a value costs Envoy a call back into the VM to allocate it, some
/// 10,000 instructions): the path when some prefix leaves paths out, else
/// the method (with every path watched, only it can tell).
pub fn path_first(plugin: &Plugin) -> bool {
    !plugin
        .config
        .events
        .path_prefixes
        .iter()
        .any(|p| "/".starts_with(p.as_str()))
}

/// The request's `delivery.propagate_headers` (read by `read`), to copy into
/// its calls: values that could not be sent as they are (control characters,
/// surrounding whitespace) are left out, and so is what goes past
/// `MAX_PROPAGATED_BYTES`. When `traceparent` is configured too, `tracestate`
/// goes only with it and is not even read without it (W3C Trace Context: no
/// `tracestate` without a valid `traceparent`): one host call less on every
/// untraced request.
pub fn propagated_headers(
    plugin: &Plugin,
    mut read: impl FnMut(&str) -> Option<String>,
) -> Vec<(String, String)> {
    let names = &plugin.config.delivery.propagate_headers;
    let paired = names.iter().any(|n| n == TRACEPARENT);
    let mut bytes = 0usize;
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut take = |name: &String, headers: &mut Vec<(String, String)>| {
        let Some(value) = read(name) else {
            return;
        };
        let fits = bytes.saturating_add(value.len()) <= MAX_PROPAGATED_BYTES;
        if fits && header_value_refusal(&value).is_none() {
            bytes = bytes.saturating_add(value.len());
            headers.push((name.clone(), value));
        }
    };
    for name in names {
        if !(paired && name == TRACESTATE) {
            take(name, &mut headers);
        }
    }
    if paired && headers.iter().any(|(n, _)| n == TRACEPARENT) {
        if let Some(name) = names.iter().find(|n| *n == TRACESTATE) {
            take(name, &mut headers);
        }
    }
    headers
}

const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

/// The body's events, matched as the collector completes them.
struct Matching<'a, H> {
    intake: &'a mut Intake,
    plugin: &'a Plugin,
    host: &'a mut H,
}

impl<H: IntakeHost> EventSink for Matching<'_, H> {
    fn event(&mut self, text: &str, value: Value) {
        self.host.count(IntakeCounter::EventsSeen, 1);
        self.intake
            .match_event(self.plugin, self.host, text, Read::Parsed(&value));
    }

    fn scanned(&mut self, event: &Viewed<'_>) {
        self.host.count(IntakeCounter::EventsSeen, 1);
        self.intake
            .match_event(self.plugin, self.host, event.text, Read::Scanned(event));
    }

    fn not_an_event(&mut self, why: NotAnEvent) {
        let (plugin, host) = (self.plugin, &mut *self.host);
        if let NotAnEvent::Oversized { limit } = why {
            host.count(IntakeCounter::EventsOversized, 1);
            plugin.warn("event_oversized", host.now_ms(), || {
                format!("event skipped: larger than events.max_event_bytes ({limit} bytes)")
            });
            return;
        }
        host.count(IntakeCounter::EventsInvalid, 1);
        log::debug!(
            "envoy-webhooks: not an event, passed through untouched: {}",
            Printable(&why.to_string())
        );
    }
}

/// An event as the collector read it.
#[derive(Clone, Copy)]
enum Read<'a> {
    /// Parsed (pruned) into a value: what the scan was unsure of.
    Parsed(&'a Value),
    Scanned(&'a Viewed<'a>),
}

impl Read<'_> {
    fn matching(self, plugin: &Plugin, out: &mut Vec<usize>, over_budget: &mut Vec<usize>) {
        match self {
            Read::Parsed(value) => plugin.matcher.matching_with_budget(value, out, over_budget),
            Read::Scanned(event) => plugin.matcher.matching_view(event, out, over_budget),
        }
    }

    fn request_id(self) -> Option<String> {
        match self {
            Read::Parsed(value) => value.get("request_id").and_then(Value::as_str),
            Read::Scanned(event) => event.top_str(REQUEST_ID),
        }
        .map(str::to_string)
    }
}

pub struct Intake {
    /// Present until the body is complete.
    collector: Option<BodyCollector>,
    /// Matched events waiting for their time.
    held: Vec<QueuedEvent>,
    /// Bytes reserved in the worker's budget for `held`.
    held_bytes: usize,
    body_complete: bool,
    /// The upstream's `:status`, once known (0: not a number).
    response_status: Option<u16>,
    /// Deliveries this request made or holds (`max_deliveries_per_request`).
    deliveries: usize,
    matches: Vec<usize>,
    /// Definitions whose query ran out of regex budget on the current event.
    over_budget: Vec<usize>,
    /// The request's headers to copy into every call its events cause.
    propagated: Vec<(String, String)>,
    /// The same, shared by the request's matched events: made at the first.
    propagated_shared: Option<Rc<[(String, String)]>>,
}

impl Intake {
    /// A request that carries events, with its `content-type`.
    pub fn start(plugin: &Plugin, content_type: Option<&str>) -> Intake {
        let events = &plugin.config.events;
        let collector = BodyCollector::new(
            BodyFormat::from_content_type(content_type),
            events.max_event_bytes,
        )
        .with_scanner(plugin.scanner.clone())
        .with_max_events(events.max_events_per_request);
        Intake {
            collector: Some(collector),
            held: Vec::new(),
            held_bytes: 0,
            body_complete: false,
            response_status: None,
            deliveries: 0,
            matches: Vec::new(),
            over_budget: Vec::new(),
            propagated: Vec::new(),
            propagated_shared: None,
        }
    }

    /// The request's `delivery.propagate_headers`, as (name, value). Read
    /// with the request's headers: Envoy lets a filter read them only then.
    pub fn propagating(mut self, headers: Vec<(String, String)>) -> Intake {
        self.propagated = headers;
        self
    }

    /// A chunk of the body (`end`: the last one).
    pub fn body<H: IntakeHost>(&mut self, plugin: &Plugin, host: &mut H, chunk: &[u8], end: bool) {
        // Out while the events it completes are matched (they borrow `self`).
        let Some(mut collector) = self.collector.take() else {
            return;
        };
        let mut sink = Matching {
            intake: self,
            plugin,
            host,
        };
        if end {
            collector.finish_with(chunk, &mut sink);
        } else {
            collector.push(chunk, &mut sink);
        }
        self.collector = Some(collector);
        if end {
            self.finish(plugin, host);
        }
    }

    /// The body ended without a last chunk (trailers, or no body at all).
    pub fn end_of_body<H: IntakeHost>(&mut self, plugin: &Plugin, host: &mut H) {
        if let Some(mut collector) = self.collector.take() {
            collector.finish(&mut Matching {
                intake: self,
                plugin,
                host,
            });
            self.collector = Some(collector);
        }
        self.finish(plugin, host);
    }

    /// Whether the upstream's `:status` matters (`deliver_on: response_2xx`):
    /// else it is not even read.
    pub fn wants_response(&self, plugin: &Plugin) -> bool {
        plugin.config.events.deliver_on == DeliverOn::Response2xx
    }

    /// The upstream's answer began (`status`: its `:status`, if a number).
    pub fn response<H: IntakeHost>(&mut self, plugin: &Plugin, host: &mut H, status: Option<u16>) {
        if plugin.config.events.deliver_on == DeliverOn::Response2xx {
            self.response_status = Some(status.unwrap_or(0));
            self.release(plugin, host);
        }
    }

    /// The request is over. Whatever is still held was not to be delivered:
    /// the body never completed (an abort) or the upstream never answered.
    pub fn done<H: IntakeHost>(&mut self, plugin: &Plugin, host: &mut H) {
        self.withhold(plugin, host);
    }

    fn finish<H: IntakeHost>(&mut self, plugin: &Plugin, host: &mut H) {
        if let Some(collector) = self.collector.take() {
            let skipped = collector.events_over_limit();
            if skipped > 0 {
                host.count(IntakeCounter::EventsOverLimit, skipped);
                let max = plugin.config.events.max_events_per_request;
                plugin.warn("events_over_limit", host.now_ms(), || {
                    format!("{skipped} event(s) of a request skipped: over events.max_events_per_request ({max})")
                });
            }
        }
        self.body_complete = true;
        self.release(plugin, host);
    }

    /// Matches an event and holds its deliveries until they may go; its text
    /// is copied only when it is to be delivered.
    fn match_event<H: IntakeHost>(
        &mut self,
        plugin: &Plugin,
        host: &mut H,
        text: &str,
        event: Read<'_>,
    ) {
        self.matches.clear();
        self.over_budget.clear();
        event.matching(plugin, &mut self.matches, &mut self.over_budget);
        if !self.over_budget.is_empty() {
            let count = self.over_budget.len();
            host.count(IntakeCounter::RegexOverBudget, as_count(count));
            plugin.warn("regex_over_budget", host.now_ms(), || {
                format!("{count} webhook query(ies) not matched: their regexes would take too long on this event")
            });
        }
        if self.matches.is_empty() {
            return;
        }
        let max = plugin.config.events.max_deliveries_per_request;
        let room = max.saturating_sub(self.deliveries);
        if self.matches.len() > room {
            let over = self.matches.len().saturating_sub(room);
            self.matches.truncate(room);
            host.count(IntakeCounter::DeliveriesOverLimit, as_count(over));
            plugin.warn("deliveries_over_limit", host.now_ms(), || {
                format!("{over} delivery(ies) of a request not made: over events.max_deliveries_per_request ({max})")
            });
        }
        if self.matches.is_empty() {
            return;
        }
        for &index in &self.matches {
            host.count(IntakeCounter::Matched(index), 1);
        }
        let body: Rc<[u8]> = Rc::from(text.as_bytes());
        // Each delivery counts in full: Envoy copies the body into each call.
        let each = budget::delivery_cost(body.len());
        let fitting = plugin.held.room_for(each).min(self.matches.len());
        if fitting < self.matches.len() {
            // Matched, but the worker cannot hold them: dropped, and lost (a
            // dead letter would need the room there is not).
            let count = self.matches.len().saturating_sub(fitting);
            for &index in self.matches.get(fitting..).unwrap_or_default() {
                host.count(IntakeCounter::Dropped(index), 1);
                host.count(IntakeCounter::Lost(index), 1);
            }
            self.matches.truncate(fitting);
            plugin.warn("held_bytes_full", host.now_ms(), || {
                format!(
                    "{count} delivery(ies) not made (dropped, lost): the worker holds delivery.max_held_bytes ({} bytes) already",
                    plugin.held.limit()
                )
            });
        }
        if self.matches.is_empty() {
            return;
        }
        let cost = each.saturating_mul(self.matches.len());
        if !plugin.held.reserve_in_request(cost) {
            // `room_for` said it fits: never expected; counted all the same.
            for &index in &self.matches {
                host.count(IntakeCounter::Dropped(index), 1);
                host.count(IntakeCounter::Lost(index), 1);
            }
            return;
        }
        self.held_bytes = self.held_bytes.saturating_add(cost);
        self.deliveries = self.deliveries.saturating_add(self.matches.len());
        let targets = self
            .matches
            .iter()
            .filter_map(|&index| {
                Some(QueuedTarget {
                    webhook: u32::try_from(index).ok()?,
                    fingerprint: plugin.definitions().get(index)?.fingerprint,
                })
            })
            .collect();
        let request_id = event.request_id();
        self.held.push(QueuedEvent {
            targets,
            request_id,
            headers: self
                .propagated_shared
                .get_or_insert_with(|| Rc::from(std::mem::take(&mut self.propagated)))
                .clone(),
            message_id: None,
            body,
        });
    }

    /// Queues held deliveries once their time has come.
    fn release<H: IntakeHost>(&mut self, plugin: &Plugin, host: &mut H) {
        if self.held.is_empty() {
            return;
        }
        match (plugin.config.events.deliver_on, self.response_status) {
            (DeliverOn::Request, _) if !self.body_complete => return,
            (DeliverOn::Request, _) => {}
            (DeliverOn::Response2xx, None) => return,
            (DeliverOn::Response2xx, Some(status)) if (200..300).contains(&status) => {}
            (DeliverOn::Response2xx, Some(status)) => {
                log::debug!(
                    "envoy-webhooks: upstream answered {status}: {} event(s) not delivered",
                    self.held.len()
                );
                self.withhold(plugin, host);
                return;
            }
        }
        plugin
            .held
            .release_in_request(std::mem::take(&mut self.held_bytes));
        for event in std::mem::take(&mut self.held) {
            if let Err(not_queued) = host.enqueue(event) {
                let NotQueued {
                    event,
                    why: problem,
                } = *not_queued;
                for target in &event.targets {
                    if let Ok(index) = usize::try_from(target.webhook) {
                        host.count(IntakeCounter::Dropped(index), 1);
                        host.count(IntakeCounter::Lost(index), 1);
                    }
                }
                plugin.warn("queue_failed", host.now_ms(), || {
                    format!(
                        "event request_id={} not delivered: cannot queue it ({})",
                        Printable(event.request_id.as_deref().unwrap_or("-")),
                        Printable(&problem)
                    )
                });
            }
        }
    }

    /// Counts and drops the held deliveries: not to be made.
    fn withhold<H: IntakeHost>(&mut self, plugin: &Plugin, host: &mut H) {
        plugin
            .held
            .release_in_request(std::mem::take(&mut self.held_bytes));
        for event in std::mem::take(&mut self.held) {
            for target in &event.targets {
                if let Ok(index) = usize::try_from(target.webhook) {
                    host.count(IntakeCounter::Withheld(index), 1);
                }
            }
        }
    }
}

fn as_count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}
