//! The filter's admin API: what each path below its prefix asks for, and the
//! answers (`crate::serve` routes to it and checks the token).

use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::config::{header_value_refusal, EtcdConfig, WebhookDefinition};
use crate::delivery::attempts;
use crate::delivery::message::{QueuedEvent, QueuedTarget};
use crate::delivery::signature;
use crate::host::SharedData;
use crate::plugin::Plugin;
use crate::status::Status;
use crate::webhook::delta::Outcome;
use crate::webhook::health::{Transition, WebhookHealth};
use crate::webhook::store::{self as webhook_store, SyncState};

/// What an admin request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminRoute {
    Status,
    /// Deliveries waiting for a retry, per webhook, across all workers.
    Pending,
    Enable(String),
    /// Pause the webhook until `Enable`.
    Disable(String),
    /// The webhook's latest attempts.
    Attempts(String),
    /// Deliver the request's body (an event, or a dead-letter record) to the webhook.
    Deliver(String),
    NotFound,
    MethodNotAllowed {
        allow: &'static str,
    },
}

/// Routes an admin request from the operator: `segments` are the normalised
/// path's below `admin.path_prefix` (`crate::serve` has checked the token).
pub fn route(method: &str, segments: &[&str]) -> AdminRoute {
    match segments {
        ["status"] if method == "GET" => AdminRoute::Status,
        ["status"] => AdminRoute::MethodNotAllowed { allow: "GET" },
        ["pending"] if method == "GET" => AdminRoute::Pending,
        ["pending"] => AdminRoute::MethodNotAllowed { allow: "GET" },
        ["webhooks", id, "enable"] if method == "POST" => AdminRoute::Enable(id.to_string()),
        ["webhooks", _, "enable"] => AdminRoute::MethodNotAllowed { allow: "POST" },
        ["webhooks", id, "disable"] if method == "POST" => AdminRoute::Disable(id.to_string()),
        ["webhooks", _, "disable"] => AdminRoute::MethodNotAllowed { allow: "POST" },
        ["webhooks", id, "attempts"] if method == "GET" => AdminRoute::Attempts(id.to_string()),
        ["webhooks", _, "attempts"] => AdminRoute::MethodNotAllowed { allow: "GET" },
        ["webhooks", id, "deliver"] if method == "POST" => AdminRoute::Deliver(id.to_string()),
        ["webhooks", _, "deliver"] => AdminRoute::MethodNotAllowed { allow: "POST" },
        _ => AdminRoute::NotFound,
    }
}

impl AdminRoute {
    /// The answer needs the request's body (read whole first).
    pub fn needs_body(&self) -> bool {
        matches!(self, AdminRoute::Deliver(_))
    }
}

/// One webhook's entry in `GET {prefix}/status`.
pub fn status_entry(definition: &WebhookDefinition, health: &WebhookHealth) -> Value {
    json!({
        "id": definition.id,
        "name": definition.name,
        "status": health.status.as_str(),
        "configured_status": definition.status.as_str(),
        "consecutive_failures": health.consecutive_failures,
        "first_failed_at": health.first_failed_at,
        "last_error": health.last_error,
        "delivered": health.delivered,
        "failed": health.failed,
        "paused_at_ms": health.paused_at_ms,
    })
}

/// A JSON error body: `{"error": "..."}`.
pub fn error_body(message: &str) -> String {
    json!({ "error": message }).to_string()
}

/// Summaries older than this come from VMs that are gone.
const STALE_SUMMARY_MS: u64 = 30_000;

/// `GET {prefix}/pending`: every worker's summaries (`published`, each as
/// `webhook::store::pending_record` wrote it) added up, per webhook in
/// configuration order: `{"webhooks":[{"id","pending","dead_letters_pending","next_due_at"}],
/// "workers_with_backlog":N}`.
pub fn pending_body(
    definitions: &[WebhookDefinition],
    published: &[Vec<u8>],
    now_ms: u64,
) -> String {
    let fresh: Vec<Value> = published
        .iter()
        .filter_map(|bytes| serde_json::from_slice::<Value>(bytes).ok())
        .filter(|summary| {
            summary
                .get("updated_at_ms")
                .and_then(Value::as_u64)
                .is_some_and(|at| now_ms.saturating_sub(at) <= STALE_SUMMARY_MS)
        })
        .collect();
    let webhooks: Vec<Value> = definitions
        .iter()
        .map(|definition| {
            let mut pending = 0;
            let mut dead_letters = 0;
            let mut next_due_ms: Option<u64> = None;
            for summary in &fresh {
                let Some(entry) = summary.get("webhooks").and_then(|w| w.get(&definition.id))
                else {
                    continue;
                };
                let count = |name: &str| entry.get(name).and_then(Value::as_u64).unwrap_or(0);
                pending += count("deliveries");
                dead_letters += count("dead_letters");
                if let Some(due) = entry.get("next_due_ms").and_then(Value::as_u64) {
                    next_due_ms = Some(next_due_ms.map_or(due, |d| d.min(due)));
                }
            }
            json!({
                "id": definition.id,
                "pending": pending,
                "dead_letters_pending": dead_letters,
                "next_due_at": next_due_ms.map(|ms| ms / 1000),
            })
        })
        .collect();
    let with_backlog = fresh
        .iter()
        .filter(|summary| {
            summary
                .get("webhooks")
                .and_then(Value::as_object)
                .is_some_and(|w| !w.is_empty())
        })
        .count();
    json!({ "webhooks": webhooks, "workers_with_backlog": with_backlog }).to_string()
}

/// The answer to an admin request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminAnswer {
    pub status: u32,
    /// JSON.
    pub body: String,
    /// A status change the request made: (webhook index, transition), to be
    /// logged and shown in the gauge.
    pub transition: Option<(usize, Transition)>,
    /// An event to hand to the worker's delivery engine (`deliver`); if that
    /// fails, the answer is to be a 503 instead.
    pub deliver: Option<QueuedEvent>,
}

impl AdminAnswer {
    fn plain(status: u32, body: String) -> AdminAnswer {
        AdminAnswer {
            status,
            body,
            transition: None,
            deliver: None,
        }
    }
}

/// What `answer` needs of the request beyond its route.
#[derive(Debug, Clone, Copy, Default)]
pub struct AdminRequest<'a> {
    /// The whole body (routes that `need_body`), else empty.
    pub body: &'a [u8],
    /// Random: the injected delivery's `message_id` (a record without one too).
    pub nonce: u128,
}

/// Answers an admin request routed to `route`, reading and updating webhook
/// health in `store`.
pub fn answer<S: SharedData + ?Sized>(
    plugin: &Plugin,
    store: &mut S,
    route: &AdminRoute,
    request: AdminRequest<'_>,
    now_ms: u64,
) -> AdminAnswer {
    let now_s = now_ms / 1000;
    match route {
        AdminRoute::NotFound => AdminAnswer::plain(404, error_body("not found")),
        AdminRoute::MethodNotAllowed { allow } => {
            AdminAnswer::plain(405, error_body(&format!("method not allowed; use {allow}")))
        }
        AdminRoute::Status => {
            let webhooks: Vec<Value> = plugin
                .definitions()
                .iter()
                .map(|d| status_entry(d, &webhook_store::load(store, d, now_s)))
                .collect();
            let mut body = json!({ "webhooks": webhooks });
            if let Some(etcd) = &plugin.config.cluster_state {
                body["cluster_state"] =
                    cluster_state_entry(etcd, &webhook_store::read_sync(store), now_ms);
            }
            AdminAnswer::plain(200, body.to_string())
        }
        AdminRoute::Pending => AdminAnswer::plain(
            200,
            pending_body(
                plugin.definitions(),
                &webhook_store::read_pending(store),
                now_ms,
            ),
        ),
        AdminRoute::Enable(id) => enable(plugin, store, id, now_s),
        AdminRoute::Disable(id) => disable(plugin, store, id, now_ms),
        AdminRoute::Attempts(id) => match find(plugin, id) {
            Some(_) => AdminAnswer::plain(
                200,
                attempts::merged_body(&webhook_store::read_attempts(store, id)),
            ),
            None => no_such_webhook(id),
        },
        AdminRoute::Deliver(id) => deliver(plugin, store, id, request, now_ms),
    }
}

/// The webhook `id` and its index.
fn find<'p>(plugin: &'p Plugin, id: &str) -> Option<(usize, &'p WebhookDefinition)> {
    plugin
        .definitions()
        .iter()
        .enumerate()
        .find(|(_, d)| d.id == id)
}

fn no_such_webhook(id: &str) -> AdminAnswer {
    AdminAnswer::plain(404, error_body(&format!("no webhook with id {id}")))
}

/// Longest `message_id` taken from a dead-letter record (ours are 36 bytes).
const MAX_MESSAGE_ID_BYTES: usize = 256;

/// What a `deliver` body hands in: the event, its request_id, its `webhook-id`.
struct Injected {
    event: Vec<u8>,
    request_id: Option<String>,
    message_id: String,
}

/// Reads a `deliver` body: a dead-letter record as the filter sends them
/// (its `event` is delivered again with its `message_id`), or an event.
fn injected(
    plugin: &Plugin,
    id: &str,
    request: AdminRequest<'_>,
) -> Result<Injected, (u32, String)> {
    let bad = |why: String| (400, why);
    let max = plugin.config.events.max_event_bytes;
    let fields: serde_json::Map<String, Value> = match serde_json::from_slice::<Value>(request.body)
    {
        Ok(Value::Object(fields)) => fields,
        Ok(other) => {
            return Err(bad(format!(
                "the body is JSON {}, not an event (an object) or a dead-letter record",
                json_kind(&other)
            )))
        }
        Err(e) => {
            return Err(bad(format!(
                "the body is not JSON ({e}): send one event, or one dead-letter record"
            )))
        }
    };
    if !(fields.contains_key("webhook_id") && fields.contains_key("event")) {
        // An event, delivered as a test: a new message_id each time.
        if request.body.len() > max {
            return Err((
                413,
                format!("the event is larger than events.max_event_bytes ({max} bytes)"),
            ));
        }
        let request_id = fields
            .get("request_id")
            .and_then(Value::as_str)
            .map(str::to_string);
        return Ok(Injected {
            message_id: signature::message_id(request.nonce),
            event: request.body.trim_ascii().to_vec(),
            request_id,
        });
    }
    // A dead-letter record: its event is taken byte for byte.
    #[derive(serde::Deserialize)]
    struct Record<'a> {
        webhook_id: Value,
        #[serde(borrow)]
        event: &'a RawValue,
        message_id: Option<Value>,
        request_id: Option<Value>,
    }
    let record: Record<'_> = serde_json::from_slice(request.body)
        .map_err(|e| bad(format!("the dead-letter record does not read: {e}")))?;
    match record.webhook_id.as_str() {
        Some(for_id) if for_id == id => {}
        Some(for_id) => {
            return Err(bad(format!(
                "the dead-letter record is for webhook {:?}, not {id}: post it to that webhook's deliver",
                for_id
            )))
        }
        None => return Err(bad("the record's webhook_id is not a string".to_string())),
    }
    let event = record.event.get().as_bytes();
    if !event.trim_ascii_start().starts_with(b"{") {
        return Err(bad(
            "the record's event is not a JSON object: it was not an event (nothing to deliver)"
                .to_string(),
        ));
    }
    if event.len() > max {
        return Err((
            413,
            format!("the record's event is larger than events.max_event_bytes ({max} bytes)"),
        ));
    }
    let message_id = match record.message_id {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(text),
        Some(_) => return Err(bad("the record's message_id is not a string".to_string())),
    };
    if let Some(text) = &message_id {
        if text.is_empty()
            || text.len() > MAX_MESSAGE_ID_BYTES
            || header_value_refusal(text).is_some()
        {
            return Err(bad(format!(
                "the record's message_id must be 1 to {MAX_MESSAGE_ID_BYTES} bytes with no control characters or surrounding whitespace (it is sent as webhook-id)"
            )));
        }
    }
    let request_id = match record.request_id {
        Some(Value::String(text)) => Some(text),
        _ => None,
    };
    Ok(Injected {
        message_id: message_id.unwrap_or_else(|| signature::message_id(request.nonce)),
        event: event.to_vec(),
        request_id,
    })
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `POST .../deliver`: the body's event goes to the webhook as if it had
/// matched, unless the webhook is not called now (409).
fn deliver<S: SharedData + ?Sized>(
    plugin: &Plugin,
    store: &mut S,
    id: &str,
    request: AdminRequest<'_>,
    now_ms: u64,
) -> AdminAnswer {
    let Some((index, definition)) = find(plugin, id) else {
        return no_such_webhook(id);
    };
    let health = webhook_store::load(store, definition, now_ms / 1000);
    let refusal = match health.status {
        Status::Failed => Some(format!(
            "webhook {id} is FAILED (last error: {}); enable it first: POST .../webhooks/{id}/enable",
            health.last_error.as_deref().unwrap_or("-")
        )),
        Status::Disabled if health.is_paused() => Some(format!(
            "webhook {id} is DISABLED: paused through the admin API at {} ms; enable it first: POST .../webhooks/{id}/enable",
            health.paused_at_ms.unwrap_or_default()
        )),
        Status::Disabled => Some(format!(
            "webhook {id} is DISABLED in the configuration; change its status there"
        )),
        Status::Enabled | Status::Failing => None,
    };
    if let Some(why) = refusal {
        return AdminAnswer::plain(409, error_body(&why));
    }
    let injected = match injected(plugin, id, request) {
        Ok(injected) => injected,
        Err((status, why)) => return AdminAnswer::plain(status, error_body(&why)),
    };
    let Ok(webhook) = u32::try_from(index) else {
        return AdminAnswer::plain(500, error_body("too many webhooks"));
    };
    AdminAnswer {
        status: 202,
        body: json!({ "message_id": injected.message_id }).to_string(),
        transition: None,
        deliver: Some(QueuedEvent {
            targets: vec![QueuedTarget {
                webhook,
                fingerprint: definition.fingerprint,
            }],
            request_id: injected.request_id,
            headers: Vec::new().into(),
            message_id: Some(injected.message_id),
            body: injected.event.into(),
        }),
    }
}

/// `POST .../disable`: the webhook is paused (`DISABLED`) on every worker,
/// and with `cluster_state` on every Envoy, until `enable`.
fn disable<S: SharedData + ?Sized>(
    plugin: &Plugin,
    store: &mut S,
    id: &str,
    now_ms: u64,
) -> AdminAnswer {
    let Some((index, definition)) = find(plugin, id) else {
        return no_such_webhook(id);
    };
    let updated = webhook_store::update(store, definition, now_ms / 1000, |health| {
        health.pause(now_ms)
    });
    match updated {
        Some((health, transition)) => {
            if transition.is_some() && plugin.config.cluster_state.is_some() {
                let policy = &plugin.config.delivery;
                webhook_store::record_outcome(
                    store,
                    definition,
                    &Outcome::Pause { at_ms: now_ms },
                    health.epoch,
                    policy,
                );
            }
            AdminAnswer {
                status: 200,
                body: status_entry(definition, &health).to_string(),
                transition: transition.map(|t| (index, t)),
                deliver: None,
            }
        }
        None => AdminAnswer::plain(
            503,
            error_body("could not update the webhook's status; try again"),
        ),
    }
}

/// How current the cluster-wide status shown is: `stale` when etcd has not
/// been read for three sync intervals (or fails since `stale_since`).
fn cluster_state_entry(etcd: &EtcdConfig, sync: &SyncState, now_ms: u64) -> Value {
    let limit_ms = etcd.sync_interval_ms.saturating_mul(3);
    let too_old = |at: &u64| now_ms.saturating_sub(*at) > limit_ms;
    let stale_since = sync.failing_since_ms.or(sync.synced_at_ms.filter(too_old));
    json!({
        "store": "etcd",
        "prefix": etcd.prefix,
        "synced_at_ms": sync.synced_at_ms,
        "stale": stale_since.is_some() || sync.synced_at_ms.is_none(),
        "stale_since_ms": stale_since,
        "errors": sync.errors,
        "last_error": sync.last_error,
    })
}

fn enable<S: SharedData + ?Sized>(
    plugin: &Plugin,
    store: &mut S,
    id: &str,
    now_s: u64,
) -> AdminAnswer {
    let Some((index, definition)) = find(plugin, id) else {
        return no_such_webhook(id);
    };
    let shared = plugin.config.cluster_state.is_some();
    let updated = webhook_store::enable(store, definition, &plugin.config.delivery, shared, now_s);
    match updated {
        Some((health, transition)) => {
            let transition = transition.map(|t| (index, t));
            if health.status == Status::Disabled {
                return AdminAnswer {
                    status: 409,
                    body: error_body(&format!(
                        "webhook {id} is DISABLED in the configuration; change its status there"
                    )),
                    transition,
                    deliver: None,
                };
            }
            AdminAnswer {
                status: 200,
                body: status_entry(definition, &health).to_string(),
                transition,
                deliver: None,
            }
        }
        None => AdminAnswer::plain(
            503,
            error_body("could not update the webhook's status; try again"),
        ),
    }
}
