//! A tenant's webhook in iconik's shape (Notifications OpenAPI 2.0.0): what
//! a request may say, the record kept in etcd, and what answers show.
//!
//! A request is checked against the same rules as the plugin configuration:
//! the record is turned into a configuration definition and read by
//! `config`'s own parser, so a webhook made through the API means exactly
//! what the same lines in the configuration would.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::config::{kind_of, parse_tenant_definition, Problem, WebhookDefinition};
use crate::status::Status;
use crate::webhook::health::WebhookHealth;

/// Longest `name`, in characters.
pub const MAX_NAME_CHARS: usize = 256;
/// Longest `description`, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 4096;
/// Longest `url`, in bytes.
pub const MAX_URL_BYTES: usize = 2048;
/// Longest `query`, in bytes.
pub const MAX_QUERY_BYTES: usize = 4096;
/// Most `headers`.
pub const MAX_HEADERS: usize = 32;
/// Most bytes of all `headers`' names and values together.
pub const MAX_HEADERS_BYTES: usize = 8192;

/// The fields a request may set.
const WRITABLE: [&str; 10] = [
    "name",
    "description",
    "event_type",
    "realm",
    "operation",
    "object_id",
    "url",
    "status",
    "query",
    "headers",
];

/// The fields answers show that a request may send back unchanged (iconik's
/// clients send a webhook as they read it): ignored.
const READ_ONLY: [&str; 9] = [
    "id",
    "date_created",
    "date_modified",
    "deleted_at",
    "first_failed_at",
    "last_error",
    "last_payload",
    "secret",
    "delivery",
];

/// The status a tenant asked for. iconik's `FAILING` is the filter's to
/// set, `DELETED` is what `DELETE` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Requested {
    Enabled,
    Disabled,
}

/// One Standard Webhooks secret of a webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSecret {
    /// `whsec_` and the base64 of the key.
    pub secret: String,
    /// Unix ms after which it no longer signs (a rotated-out secret); `None`: current.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
}

/// A tenant's webhook as kept in etcd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredWebhook {
    pub id: String,
    /// The tenant it belongs to: it sees only this domain's events.
    pub system_domain_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub event_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_id: Option<String>,
    pub url: String,
    pub status: Requested,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The current secret last; rotated-out ones before it until they expire.
    pub secrets: Vec<StoredSecret>,
    pub date_created_ms: u64,
    pub date_modified_ms: u64,
}

/// Every problem with a request, by field (`""`: the body as a whole).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldErrors(BTreeMap<String, Vec<String>>);

impl FieldErrors {
    pub fn add(&mut self, field: &str, message: impl Into<String>) {
        self.0
            .entry(field.to_string())
            .or_default()
            .push(message.into());
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The fields at fault.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// iconik's error body: `{"errors": {"field": "message; message"}}`; a
    /// problem of the body as a whole is under `"body"`.
    pub fn body(&self) -> Value {
        let errors: Map<String, Value> = self
            .0
            .iter()
            .map(|(field, messages)| {
                let field = if field.is_empty() { "body" } else { field };
                (field.to_string(), Value::from(messages.join("; ")))
            })
            .collect();
        json!({ "errors": errors })
    }
}

/// What the server makes for a new webhook.
pub struct Fresh {
    pub id: String,
    pub secret: String,
    pub now_ms: u64,
}

/// What a request's body applies to.
pub enum Target<'a> {
    /// `POST`: a new webhook of `system_domain_id`.
    Create {
        system_domain_id: &'a str,
        fresh: &'a Fresh,
    },
    /// `PUT`: the fields given replace `current`'s; `null` clears one.
    Change {
        current: &'a StoredWebhook,
        now_ms: u64,
    },
}

/// Checks `body` and returns the webhook it makes, with every problem at
/// once. `check_url` is the tenant URL policy; it is asked only about a URL
/// the request changes, so that a stricter policy does not lock webhooks
/// made before it.
pub fn apply(
    body: &[u8],
    target: Target<'_>,
    check_url: &dyn Fn(&str) -> Result<(), String>,
) -> Result<(StoredWebhook, WebhookDefinition), FieldErrors> {
    let mut errors = FieldErrors::default();
    let value: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(e) => {
            errors.add("", format!("is not valid JSON: {e}"));
            return Err(errors);
        }
    };
    let Some(object) = value.as_object() else {
        errors.add(
            "",
            format!("expected a JSON object, found {}", kind_of(&value)),
        );
        return Err(errors);
    };
    for key in object.keys() {
        if !WRITABLE.contains(&key.as_str()) && !READ_ONLY.contains(&key.as_str()) {
            errors.add(
                key,
                format!(
                    "unknown field (fields: {}; read-only and ignored: {})",
                    WRITABLE.join(", "),
                    READ_ONLY.join(", ")
                ),
            );
        }
    }
    let creating = matches!(target, Target::Create { .. });
    let mut webhook = match target {
        Target::Change { current, now_ms } => StoredWebhook {
            date_modified_ms: now_ms,
            ..current.clone()
        },
        Target::Create {
            system_domain_id,
            fresh,
        } => StoredWebhook {
            id: fresh.id.clone(),
            system_domain_id: system_domain_id.to_string(),
            name: None,
            description: None,
            event_type: String::new(),
            realm: None,
            operation: None,
            object_id: None,
            url: String::new(),
            status: Requested::Enabled,
            query: None,
            headers: BTreeMap::new(),
            secrets: vec![StoredSecret {
                secret: fresh.secret.clone(),
                expires_at_ms: None,
            }],
            date_created_ms: fresh.now_ms,
            date_modified_ms: fresh.now_ms,
        },
    };
    let given = |field: &str| object.get(field);

    if let Some(name) = text(object, "name", Some(MAX_NAME_CHARS), true, &mut errors) {
        webhook.name = name;
    }
    if let Some(description) = text(
        object,
        "description",
        Some(MAX_DESCRIPTION_CHARS),
        true,
        &mut errors,
    ) {
        webhook.description = description;
    }
    if let Some(realm) = text(object, "realm", Some(MAX_NAME_CHARS), true, &mut errors) {
        webhook.realm = realm;
    }
    if let Some(operation) = text(object, "operation", Some(MAX_NAME_CHARS), true, &mut errors) {
        webhook.operation = operation;
    }
    if let Some(query) = text(object, "query", Some(MAX_QUERY_BYTES), false, &mut errors) {
        webhook.query = query.filter(|q| !q.trim().is_empty());
    }
    if let Some(event_type) = text(
        object,
        "event_type",
        Some(MAX_NAME_CHARS),
        true,
        &mut errors,
    ) {
        match event_type {
            Some(event_type) => webhook.event_type = event_type,
            None => errors.add("event_type", "is required"),
        }
    } else if creating && given("event_type").is_none() {
        errors.add(
            "event_type",
            "is required (e.g. \"assets\", \"collections\")",
        );
    }
    if let Some(object_id) = text(object, "object_id", None, false, &mut errors) {
        match object_id {
            None => webhook.object_id = None,
            Some(text) => match uuid::Uuid::try_parse(&text) {
                // iconik's object ids are UUIDs; its clients read them as such.
                Ok(id) => webhook.object_id = Some(id.hyphenated().to_string()),
                Err(_) => errors.add(
                    "object_id",
                    format!("\"{}\" is not a UUID", text.escape_debug()),
                ),
            },
        }
    }
    if let Some(url) = text(object, "url", Some(MAX_URL_BYTES), false, &mut errors) {
        match url {
            None => errors.add("url", "is required"),
            Some(url) if !creating && url == webhook.url => {}
            Some(url) => match check_url(&url) {
                Ok(()) => webhook.url = url,
                Err(message) => errors.add("url", message),
            },
        }
    } else if creating && given("url").is_none() {
        errors.add("url", "is required (an https:// URL)");
    }
    match given("status") {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) => match text.to_ascii_uppercase().as_str() {
            "ENABLED" => webhook.status = Requested::Enabled,
            "DISABLED" => webhook.status = Requested::Disabled,
            // Sent back as read: it stays enabled (the filter clears FAILING).
            "FAILING" if !creating => {}
            "FAILING" => errors.add(
                "status",
                "a new webhook cannot be FAILING: give ENABLED or DISABLED",
            ),
            "DELETED" => errors.add("status", "to delete a webhook, send DELETE to its URL"),
            _ => errors.add(
                "status",
                format!(
                    "unknown status \"{}\" (expected ENABLED or DISABLED)",
                    text.escape_debug()
                ),
            ),
        },
        Some(other) => errors.add(
            "status",
            format!("expected a string, found {}", kind_of(other)),
        ),
    }
    match given("headers") {
        None => {}
        Some(Value::Null) => webhook.headers.clear(),
        Some(Value::Object(headers)) => {
            let bytes: usize = headers
                .iter()
                .map(|(name, value)| name.len() + value.as_str().map_or(0, str::len))
                .sum();
            if headers.len() > MAX_HEADERS {
                errors.add(
                    "headers",
                    format!("has {} headers; the limit is {MAX_HEADERS}", headers.len()),
                );
            } else if bytes > MAX_HEADERS_BYTES {
                errors.add(
                    "headers",
                    format!(
                        "holds {bytes} bytes of names and values; the limit is {MAX_HEADERS_BYTES}"
                    ),
                );
            } else {
                // Checked (names, values, duplicates) by the configuration's
                // parser below; strings only here.
                let mut kept = BTreeMap::new();
                for (name, value) in headers {
                    match value.as_str() {
                        Some(value) => {
                            kept.insert(name.clone(), value.to_string());
                        }
                        None => errors.add(
                            "headers",
                            format!("the value of \"{}\" must be a string", name.escape_debug()),
                        ),
                    }
                }
                webhook.headers = kept;
            }
        }
        Some(other) => errors.add(
            "headers",
            format!(
                "expected an object of header names to values, found {}",
                kind_of(other)
            ),
        ),
    }
    // The configuration's rules, also when a field is already at fault, so
    // that every problem is reported; a field's own problems come first and
    // its value was not taken, so the parser's say nothing new about it.
    let at_fault: Vec<String> = errors.fields().map(str::to_string).collect();
    match definition_of(&webhook, 0) {
        Ok(definition) if errors.is_empty() => Ok((webhook, definition)),
        Ok(_) => Err(errors),
        Err(problems) => {
            for problem in problems {
                if !at_fault.contains(&problem.field) {
                    errors.add(&problem.field, problem.message);
                }
            }
            Err(errors)
        }
    }
}

/// The definition the matcher and the delivery engine use, read by the
/// configuration's parser; secrets expired at `now_ms` are left out.
pub fn definition_of(
    webhook: &StoredWebhook,
    now_ms: u64,
) -> Result<WebhookDefinition, Vec<Problem>> {
    let secrets: Vec<&str> = webhook
        .secrets
        .iter()
        .filter(|s| s.expires_at_ms.is_none_or(|at| at > now_ms))
        .map(|s| s.secret.as_str())
        .collect();
    let mut value = json!({
        "id": webhook.id,
        "event_type": webhook.event_type,
        "url": webhook.url,
        "status": match webhook.status {
            Requested::Enabled => "ENABLED",
            Requested::Disabled => "DISABLED",
        },
        "headers": webhook.headers,
    });
    let optional = [
        ("name", &webhook.name),
        ("description", &webhook.description),
        ("realm", &webhook.realm),
        ("operation", &webhook.operation),
        ("object_id", &webhook.object_id),
        ("query", &webhook.query),
    ];
    if let Some(object) = value.as_object_mut() {
        for (field, text) in optional {
            if let Some(text) = text {
                object.insert(field.to_string(), Value::from(text.as_str()));
            }
        }
        if !secrets.is_empty() {
            object.insert("secret".to_string(), Value::from(secrets.join(" ")));
        }
    }
    let mut definition = parse_tenant_definition(&value, &webhook.system_domain_id)?;
    definition.fingerprint = health_fingerprint(webhook);
    Ok(definition)
}

/// What identifies a webhook's health record: where and how it is called.
/// A new name, description or filter keeps the status and counts; a new
/// URL, headers or secret starts afresh.
fn health_fingerprint(webhook: &StoredWebhook) -> u64 {
    let current: Vec<&str> = webhook
        .secrets
        .iter()
        .filter(|s| s.expires_at_ms.is_none())
        .map(|s| s.secret.as_str())
        .collect();
    crate::config::fingerprint_of(&json!({
        "id": webhook.id,
        "url": webhook.url,
        "headers": webhook.headers,
        "secrets": current,
    }))
}

/// The answer's view of a webhook: iconik's fields, its status as iconik
/// names it, and the filter's own counts under `delivery`. Never its secrets.
pub fn render(webhook: &StoredWebhook, health: Option<&WebhookHealth>) -> Value {
    let failing = health.filter(|h| matches!(h.status, Status::Failing | Status::Failed));
    let status = match (webhook.status, health.map(|h| h.status)) {
        (Requested::Disabled, _) | (_, Some(Status::Disabled)) => "DISABLED",
        // No longer called: iconik's FAILING. A webhook still called while
        // it fails stays ENABLED there, with its last error.
        (_, Some(Status::Failed)) => "FAILING",
        _ => "ENABLED",
    };
    json!({
        "id": webhook.id,
        "name": webhook.name,
        "description": webhook.description,
        "event_type": webhook.event_type,
        "realm": webhook.realm,
        "operation": webhook.operation,
        "object_id": webhook.object_id,
        "url": webhook.url,
        "status": status,
        "query": webhook.query,
        "headers": webhook.headers,
        "last_error": failing.and_then(|h| h.last_error.clone()),
        "first_failed_at": failing
            .and_then(|h| h.first_failed_at)
            .map(|s| rfc3339_ms(s.saturating_mul(1000))),
        "date_created": rfc3339_ms(webhook.date_created_ms),
        "date_modified": rfc3339_ms(webhook.date_modified_ms),
        "delivery": {
            "status": health.map_or("ENABLED", |h| h.status.as_str()),
            "delivered": health.map_or(0, |h| h.delivered),
            "failed": health.map_or(0, |h| h.failed),
            "consecutive_failures": health.map_or(0, |h| h.consecutive_failures),
        },
    })
}

/// Unix milliseconds as RFC 3339 in UTC (`2026-12-07T16:20:00.123Z`).
pub fn rfc3339_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// A string field that may be `null` (cleared): `None` if not given or at
/// fault (recorded), `Some(None)` for `null`.
fn text(
    object: &Map<String, Value>,
    field: &str,
    limit: Option<usize>,
    chars: bool,
    errors: &mut FieldErrors,
) -> Option<Option<String>> {
    match object.get(field)? {
        Value::Null => Some(None),
        Value::String(text) => {
            let length = if chars {
                text.chars().count()
            } else {
                text.len()
            };
            match limit {
                Some(limit) if length > limit => {
                    let unit = if chars { "characters" } else { "bytes" };
                    errors.add(
                        field,
                        format!("is {length} {unit} long; the limit is {limit}"),
                    );
                    None
                }
                _ => Some(Some(text.clone())),
            }
        }
        other => {
            errors.add(
                field,
                format!("expected a string or null, found {}", kind_of(other)),
            );
            None
        }
    }
}
