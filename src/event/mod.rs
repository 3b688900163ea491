//! Reading events out of the platform's request bodies.
//!
//! A body is one JSON event, a JSON array of events, or NDJSON (one event a
//! line). Each event keeps its exact JSON text, which is what gets delivered.

use std::fmt;
use std::rc::Rc;

use serde_json::value::RawValue;
use serde_json::Value;

pub mod fields;
pub mod view;

use fields::{FieldTree, Router};
use view::{EventScanner, Scan, Viewed};

/// One event: its JSON text as it appeared in the body, and its parsed value.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub json: String,
    pub value: Value,
}

/// Why part of a body is not an event. Such input passes through untouched;
/// it is only counted and logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotAnEvent {
    Empty,
    /// Not JSON, invalid UTF-8, or nested beyond serde_json's limit.
    InvalidJson(String),
    /// Valid JSON, but not an object (e.g. `42`).
    NotAnObject(&'static str),
    /// Bigger than `events.max_event_bytes`.
    Oversized {
        limit: usize,
    },
}

impl fmt::Display for NotAnEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotAnEvent::Empty => f.write_str("empty body"),
            NotAnEvent::InvalidJson(reason) => write!(f, "not valid JSON: {reason}"),
            NotAnEvent::NotAnObject(kind) => write!(f, "JSON {kind} is not an event object"),
            NotAnEvent::Oversized { limit } => {
                write!(
                    f,
                    "event larger than max_event_bytes ({limit} bytes), skipped"
                )
            }
        }
    }
}

/// Parses a JSON body: one event, or an array of events.
pub fn parse_json_body(body: &[u8]) -> Vec<Result<Event, NotAnEvent>> {
    let mut events = Vec::new();
    parse_json_body_into(body, None, usize::MAX, &mut events);
    events
}

/// Hands a JSON body's events (at most `max_events` of an array) to `sink`,
/// scanned with `scanner` if given; returns how many were skipped.
fn parse_json_body_into(
    body: &[u8],
    scanner: Option<&EventScanner>,
    max_events: usize,
    sink: &mut dyn EventSink,
) -> u64 {
    let trimmed = body.trim_ascii();
    if trimmed.is_empty() {
        sink.not_an_event(NotAnEvent::Empty);
        return 0;
    }
    if trimmed.first() == Some(&b'[') {
        return match serde_json::from_slice::<Vec<&RawValue>>(trimmed) {
            Ok(items) => {
                let skipped = items.len().saturating_sub(max_events);
                for raw in items.into_iter().take(max_events) {
                    read_event_into(raw.get().as_bytes(), scanner, sink);
                }
                u64::try_from(skipped).unwrap_or(u64::MAX)
            }
            Err(e) => {
                sink.not_an_event(NotAnEvent::InvalidJson(e.to_string()));
                0
            }
        };
    }
    read_event_into(trimmed, scanner, sink);
    0
}

/// Where a body's events go as they complete, in order. A sink that keeps
/// an event's text only when it needs it (the filter's, for matched events)
/// copies nothing else.
pub trait EventSink {
    /// A valid event: its text as in the body, and its (pruned) parsed value.
    fn event(&mut self, text: &str, value: Value);
    /// A valid event read by the one-pass scan: its text and where its
    /// candidate values lie (see [`view`]).
    fn scanned(&mut self, event: &Viewed<'_>);
    /// Part of the body that is not an event.
    fn not_an_event(&mut self, why: NotAnEvent);
}

/// Keeps every event, its text copied.
impl EventSink for Vec<Result<Event, NotAnEvent>> {
    fn event(&mut self, text: &str, value: Value) {
        self.push(Ok(Event {
            json: text.to_string(),
            value,
        }));
    }

    fn scanned(&mut self, event: &Viewed<'_>) {
        // Only the filter's sink is handed scanned events; were this one, the
        // text is a valid event already.
        match serde_json::from_slice(event.text.as_bytes()) {
            Ok(value) => self.event(event.text, value),
            Err(e) => self.not_an_event(NotAnEvent::InvalidJson(e.to_string())),
        }
    }

    fn not_an_event(&mut self, why: NotAnEvent) {
        self.push(Err(why));
    }
}

/// One event: scanned when a scanner is given, parsed fully when it is not
/// or when the scan is unsure (or refuses it: the parse says why). The
/// pruned parse of [`FieldTree`] is not used here, so it is not in the filter.
fn read_event_into(text: &[u8], scanner: Option<&EventScanner>, sink: &mut dyn EventSink) {
    let text = match event_text(text) {
        Ok(text) => text,
        Err(why) => return sink.not_an_event(why),
    };
    if let Some(scanner) = scanner {
        if scanner.scan_with(text, |event| sink.scanned(event)) == Scan::Event {
            return;
        }
    }
    match event_value(serde_json::from_slice(text.as_bytes()).map_err(|e| e.to_string())) {
        Ok(value) => sink.event(text, value),
        Err(why) => sink.not_an_event(why),
    }
}

/// Parses one event's JSON text (an NDJSON line, an array element or a whole body).
pub fn parse_event(text: &[u8]) -> Result<Event, NotAnEvent> {
    parse_event_with(text, None)
}

/// Like [`parse_event`], keeping only the paths of `fields` (all when `None`).
pub fn parse_event_with(text: &[u8], fields: Option<&FieldTree>) -> Result<Event, NotAnEvent> {
    parse_event_routed(text, fields, None)
}

/// Like [`parse_event_with`], narrowing `fields` by `router` (see [`Router`]).
pub fn parse_event_routed(
    text: &[u8],
    fields: Option<&FieldTree>,
    router: Option<&dyn Router>,
) -> Result<Event, NotAnEvent> {
    parse_event_text(text, fields, router).map(|(text, value)| Event {
        json: text.to_string(),
        value,
    })
}

/// The event's text (trimmed) and its parsed value, or why it is not an event.
fn parse_event_text<'t>(
    text: &'t [u8],
    fields: Option<&FieldTree>,
    router: Option<&dyn Router>,
) -> Result<(&'t str, Value), NotAnEvent> {
    let text = event_text(text)?;
    let parsed = match (fields, router) {
        (Some(fields), Some(router)) => fields.parse_routed(text, router),
        (Some(fields), None) => fields.parse(text),
        (None, _) => serde_json::from_slice(text.as_bytes()).map_err(|e| e.to_string()),
    };
    event_value(parsed).map(|value| (text, value))
}

/// An event's text, trimmed and checked to be UTF-8.
fn event_text(text: &[u8]) -> Result<&str, NotAnEvent> {
    let text = text.trim_ascii();
    if text.is_empty() {
        return Err(NotAnEvent::Empty);
    }
    // Checked up front: a pruned parse does not look inside the strings it skips.
    std::str::from_utf8(text)
        .map_err(|e| NotAnEvent::InvalidJson(format!("invalid UTF-8 at byte {}", e.valid_up_to())))
}

/// A parsed event, if it is an object.
fn event_value(parsed: Result<Value, String>) -> Result<Value, NotAnEvent> {
    let value = parsed.map_err(NotAnEvent::InvalidJson)?;
    if !value.is_object() {
        return Err(NotAnEvent::NotAnObject(kind_of(&value)));
    }
    Ok(value)
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// How a body's events are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// One JSON event or a JSON array of events.
    Json,
    /// One event a line (`application/x-ndjson`).
    Ndjson,
}

impl BodyFormat {
    /// From the request's `content-type`.
    pub fn from_content_type(content_type: Option<&str>) -> BodyFormat {
        let is_ndjson = content_type.is_some_and(|ct| {
            let mime = ct.split(';').next().unwrap_or("").trim();
            mime.eq_ignore_ascii_case("application/x-ndjson")
                || mime.eq_ignore_ascii_case("application/ndjson")
                || mime.eq_ignore_ascii_case("application/jsonl")
        });
        if is_ndjson {
            BodyFormat::Ndjson
        } else {
            BodyFormat::Json
        }
    }
}

/// Copies a body as it streams past, keeping at most `limit` bytes of any one
/// event, and hands out events as they complete (NDJSON lines at once, a JSON
/// body at the end).
#[derive(Debug)]
pub struct BodyCollector {
    format: BodyFormat,
    limit: usize,
    /// The JSON body so far, or the current NDJSON line.
    buffer: Vec<u8>,
    /// The current event went over the limit; its remaining bytes are ignored.
    oversized: bool,
    /// Scans events instead of parsing them (see [`view`]).
    scanner: Option<Rc<EventScanner>>,
    /// Events handed out at most; later ones are only counted.
    max_events: usize,
    /// Events (valid or not) handed out so far.
    events: usize,
    /// Events past `max_events`, skipped.
    over_limit: u64,
    /// The NDJSON line being skipped has content (so it is an event to count).
    skipped_line_has_content: bool,
}

impl BodyCollector {
    pub fn new(format: BodyFormat, limit: usize) -> BodyCollector {
        BodyCollector {
            format,
            limit,
            buffer: Vec::new(),
            oversized: false,
            scanner: None,
            max_events: usize::MAX,
            events: 0,
            over_limit: 0,
            skipped_line_has_content: false,
        }
    }

    /// Hands out at most `max` events; the rest are skipped without being
    /// parsed, and counted (see [`BodyCollector::events_over_limit`]).
    pub fn with_max_events(mut self, max: usize) -> BodyCollector {
        self.max_events = max;
        self
    }

    /// Events skipped so far because of `with_max_events`.
    pub fn events_over_limit(&self) -> u64 {
        self.over_limit
    }

    fn at_limit(&self) -> bool {
        self.events >= self.max_events
    }

    /// Scans events with `scanner` (see [`view`]); those it is unsure of
    /// are parsed fully.
    pub fn with_scanner(mut self, scanner: Rc<EventScanner>) -> BodyCollector {
        self.scanner = Some(scanner);
        self
    }

    /// Takes the next chunk; events completed by it are appended to `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut dyn EventSink) {
        match self.format {
            BodyFormat::Json => self.append(chunk),
            BodyFormat::Ndjson => {
                let mut rest = chunk;
                while let Some(newline) = rest.iter().position(|&b| b == b'\n') {
                    let (line, after) = rest.split_at(newline);
                    self.append(line);
                    self.finish_line(out);
                    rest = after.get(1..).unwrap_or_default();
                }
                self.append(rest);
            }
        }
    }

    /// Takes the last chunk and finishes. A JSON body that arrives whole is
    /// parsed straight from the chunk, without copying it.
    pub fn finish_with(&mut self, chunk: &[u8], out: &mut dyn EventSink) {
        if self.format == BodyFormat::Json && self.buffer.is_empty() && !self.oversized {
            if chunk.len() > self.limit {
                out.not_an_event(NotAnEvent::Oversized { limit: self.limit });
            } else {
                self.parse_json(chunk, out);
            }
            return;
        }
        self.push(chunk, out);
        self.finish(out);
    }

    /// The body ended; remaining events are appended to `out`.
    pub fn finish(&mut self, out: &mut dyn EventSink) {
        match self.format {
            BodyFormat::Json => {
                if self.oversized {
                    out.not_an_event(NotAnEvent::Oversized { limit: self.limit });
                } else {
                    let buffer = std::mem::take(&mut self.buffer);
                    self.parse_json(&buffer, out);
                }
                self.buffer = Vec::new();
                self.oversized = false;
            }
            BodyFormat::Ndjson => self.finish_line(out),
        }
    }

    fn parse_json(&mut self, body: &[u8], out: &mut dyn EventSink) {
        let mut counted = Counted {
            inner: out,
            events: 0,
        };
        let skipped = parse_json_body_into(
            body,
            self.scanner.as_deref(),
            self.max_events.saturating_sub(self.events),
            &mut counted,
        );
        self.events = self.events.saturating_add(counted.events);
        self.over_limit = self.over_limit.saturating_add(skipped);
    }

    fn append(&mut self, bytes: &[u8]) {
        if self.format == BodyFormat::Ndjson && self.at_limit() {
            // Past the limit, lines are only counted: nothing is kept.
            self.skipped_line_has_content |= !bytes.trim_ascii().is_empty();
            return;
        }
        if self.oversized {
            return;
        }
        if self.buffer.len() + bytes.len() > self.limit {
            self.oversized = true;
            self.buffer = Vec::new();
        } else {
            self.buffer.extend_from_slice(bytes);
        }
    }

    fn finish_line(&mut self, out: &mut dyn EventSink) {
        if self.at_limit() {
            if std::mem::take(&mut self.skipped_line_has_content) {
                self.over_limit = self.over_limit.saturating_add(1);
            }
            return;
        }
        let is_event = self.oversized || !self.buffer.trim_ascii().is_empty();
        if is_event {
            self.events = self.events.saturating_add(1);
        }
        if self.oversized {
            out.not_an_event(NotAnEvent::Oversized { limit: self.limit });
        } else if !self.buffer.trim_ascii().is_empty() {
            read_event_into(&self.buffer, self.scanner.as_deref(), out);
        }
        self.buffer.clear();
        self.oversized = false;
    }
}

/// Counts what passes through to `inner` (events and not-events alike).
struct Counted<'s> {
    inner: &'s mut dyn EventSink,
    events: usize,
}

impl EventSink for Counted<'_> {
    fn event(&mut self, text: &str, value: Value) {
        self.events = self.events.saturating_add(1);
        self.inner.event(text, value);
    }

    fn scanned(&mut self, event: &Viewed<'_>) {
        self.events = self.events.saturating_add(1);
        self.inner.scanned(event);
    }

    fn not_an_event(&mut self, why: NotAnEvent) {
        self.events = self.events.saturating_add(1);
        self.inner.not_an_event(why);
    }
}
