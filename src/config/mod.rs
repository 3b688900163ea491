//! The plugin configuration: webhook definitions and the filter's settings.
//!
//! Parsing reports every problem at once, each with the webhook id and field,
//! and rejects unknown fields so that a typo never silently disables filtering.

// No `as` casts here: on wasm32 `usize` is 32 bits, and a silently truncated
// size (8 GiB became 0) is how limits stop limiting. Convert with `try_from`.
#![deny(clippy::as_conversions, clippy::cast_possible_truncation)]

mod api;
mod cluster_state;
mod definition;
mod egress;
mod problems;
mod url_policy;

use serde_json::Value;

pub use api::{ApiConfig, Caller, IdentityHeaders, Role, TokenSource, Tokens};
pub use cluster_state::EtcdConfig;
pub use definition::{
    fingerprint_of, parse_url, Operation, RateLimit, SecretSource, WebhookDefinition, WebhookUrl,
    DELIVERY_MARKER, MAX_CLUSTER_LEN, MAX_ID_LEN,
};
pub use egress::EgressPolicy;
pub use problems::{ConfigError, Problem};
pub use url_policy::{AllowEntry, UrlPolicy};

pub(crate) use definition::{default_cluster, header_value_refusal, parse_tenant_definition};

pub(crate) use problems::kind_of;
use problems::Fields;

/// Which requests carry events, and how to read them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsConfig {
    /// Upper case, e.g. `POST`.
    pub methods: Vec<String>,
    pub path_prefixes: Vec<String>,
    /// Events larger than this are skipped (and counted).
    pub max_event_bytes: usize,
    /// Events of one request beyond this many are skipped (and counted by the runtime).
    pub max_events_per_request: usize,
    /// Matches (event × webhook) of one request beyond this many are dropped
    /// (and counted by the runtime).
    pub max_deliveries_per_request: usize,
    pub deliver_on: DeliverOn,
    /// Envoy's routes choose the requests the filter sees (the filter is
    /// `disabled` in the connection manager and enabled on the event routes,
    /// and on the admin and API routes): every request that reaches it carries
    /// events unless it is the admin API's or the API's, so it reads no
    /// header to decide (`methods` and `path_prefixes` are not used).
    pub selected_by_routes: bool,
}

/// When the filter delivers an event's webhooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliverOn {
    /// As soon as the request body is complete.
    Request,
    /// Only once the platform's upstream answered 2xx.
    Response2xx,
}

/// How deliveries are made and retried, and when a webhook counts as failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryPolicy {
    pub timeout_ms: u64,
    /// Calls in flight per worker; more wait in the retry queue.
    pub max_in_flight: usize,
    /// A webhook failing for this long becomes `FAILED`.
    pub failing_window_s: u64,
    /// This many consecutive failed deliveries make a webhook `FAILED`.
    pub failure_threshold: u64,
    /// Delays in seconds before the 2nd, 3rd, ... attempt of a delivery.
    pub retry_schedule_s: Vec<u64>,
    /// Deliveries waiting for a retry, per worker; beyond, the oldest is dead-lettered.
    pub max_pending: usize,
    /// Bytes of deliveries waiting for a retry, per worker.
    pub max_pending_bytes: usize,
    /// Bytes of event bodies held by deliveries (in flight, waiting for a
    /// retry, dead letters), per worker: one memory budget for all of them.
    /// At least `max_pending_bytes` and twice `EventsConfig::max_event_bytes`.
    pub max_held_bytes: usize,
    /// Headers of the platform's request copied into every call its events
    /// cause (lower case): trace context, so that a webhook call shows up in
    /// the platform's trace.
    pub propagate_headers: Vec<String>,
    /// The clusters a destination without `cluster` is called through, by
    /// its URL's scheme (`delivery.clusters`); `None`: its URL's host.
    pub clusters: Option<SchemeClusters>,
}

/// `delivery.clusters`: e.g. a dynamic forward proxy cluster for `http://`
/// and one with TLS for `https://`, so that a definition is just a URL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemeClusters {
    pub http: Option<String>,
    pub https: Option<String>,
}

/// Default `delivery.propagate_headers`: W3C trace context.
pub const DEFAULT_PROPAGATE_HEADERS: [&str; 2] = ["traceparent", "tracestate"];
/// At most this many `delivery.propagate_headers`.
pub const MAX_PROPAGATE_HEADERS: usize = 16;
/// Credentials of the platform: never sent to a receiver.
const CREDENTIAL_HEADERS: [&str; 3] = ["authorization", "proxy-authorization", "cookie"];

/// Where deliveries that cannot be made go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterConfig {
    pub url: WebhookUrl,
    pub cluster: String,
    /// `cluster` was configured (else it comes from `delivery.clusters` or the URL's host).
    pub cluster_configured: bool,
    pub headers: Vec<(String, String)>,
}

/// Where the admin token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminToken {
    Literal(String),
    /// The name of an environment variable of the Wasm VM.
    Env(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Starts with `/`, no trailing `/`.
    pub path_prefix: String,
    pub token: AdminToken,
}

#[derive(Debug, Clone)]
pub struct PluginConfig {
    pub webhooks: Vec<WebhookDefinition>,
    pub events: EventsConfig,
    pub delivery: DeliveryPolicy,
    pub admin: Option<AdminConfig>,
    pub dead_letter: Option<DeadLetterConfig>,
    /// Webhook status shared between Envoys; `None`: per Envoy.
    pub cluster_state: Option<EtcdConfig>,
    /// iconik's webhook API, per tenant (needs `cluster_state`).
    pub api: Option<ApiConfig>,
}

const MIB: usize = 1024 * 1024;

/// Largest `events.max_event_bytes`. The Wasm VM's heap (about 1 GB) must
/// hold the event being read, its parsed fields and every other bound at once.
pub const MAX_EVENT_BYTES_LIMIT: usize = 16 * MIB;
/// Largest `delivery.max_pending_bytes` and `delivery.max_held_bytes`: three
/// quarters of the Wasm VM's heap of about 1 GB, the rest for the event being
/// read, parsing and the filter itself.
pub const MAX_HELD_BYTES_LIMIT: usize = 768 * MIB;
/// Smallest `delivery.max_held_bytes`.
pub const MIN_HELD_BYTES: usize = MIB;
/// Largest `events.max_events_per_request` and `events.max_deliveries_per_request`.
pub const MAX_PER_REQUEST_LIMIT: usize = 1_000_000;

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            methods: vec!["POST".to_string()],
            path_prefixes: vec!["/".to_string()],
            max_event_bytes: MIB,
            max_events_per_request: 1_000,
            max_deliveries_per_request: 10_000,
            deliver_on: DeliverOn::Request,
            selected_by_routes: false,
        }
    }
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        DeliveryPolicy {
            timeout_ms: 10_000,
            max_in_flight: 100,
            failing_window_s: 18_000,
            failure_threshold: 10,
            retry_schedule_s: crate::delivery::retry::DEFAULT_SCHEDULE_S.to_vec(),
            max_pending: 10_000,
            max_pending_bytes: 64 * MIB,
            max_held_bytes: 256 * MIB,
            propagate_headers: DEFAULT_PROPAGATE_HEADERS.map(String::from).to_vec(),
            clusters: None,
        }
    }
}

impl PluginConfig {
    /// What a valid configuration may still not mean, one line each: logged
    /// when Envoy loads it, printed by `envoy-webhooks validate`.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if self.api.as_ref().is_some_and(|api| api.clusters.is_none()) {
            notes.push("api: no api.clusters: tenants' calls go through delivery.clusters, where nothing checks the address Envoy connects to; a tenant's name that resolves inside the platform is called (docs/api.md, \"Tenant URLs\")".to_string());
        }
        notes
    }

    /// Parses the plugin configuration from JSON bytes.
    pub fn from_json(bytes: &[u8]) -> Result<PluginConfig, ConfigError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| ConfigError {
            problems: vec![Problem {
                place: "configuration".to_string(),
                field: String::new(),
                message: format!("is not valid JSON: {e}"),
            }],
        })?;
        PluginConfig::from_value(&value)
    }

    pub fn from_value(value: &Value) -> Result<PluginConfig, ConfigError> {
        let mut problems = Vec::new();
        let config = parse_config(value, &mut problems);
        match config {
            Some(config) if problems.is_empty() => Ok(config),
            _ => Err(ConfigError { problems }),
        }
    }
}

fn parse_config(value: &Value, problems: &mut Vec<Problem>) -> Option<PluginConfig> {
    let mut fields = Fields::of(value, "configuration", problems)?;
    let webhooks_value = fields.get("webhooks");
    let events_value = fields.get("events");
    let delivery_value = fields.get("delivery");
    let admin_value = fields.get("admin");
    let dead_letter_value = fields.get("dead_letter");
    let cluster_state_value = fields.get("cluster_state");
    let api_value = fields.get("api");
    fields.reject_unknown("webhooks, events, delivery, admin, dead_letter, cluster_state, api");

    let webhooks = match webhooks_value {
        // With the API, webhooks may all come from it.
        None if api_value.is_some() => Vec::new(),
        None => {
            problems.push(Problem {
                place: "configuration".to_string(),
                field: "webhooks".to_string(),
                message: "is required (a list of webhook definitions)".to_string(),
            });
            Vec::new()
        }
        Some(Value::Array(items)) => {
            let mut webhooks: Vec<WebhookDefinition> = Vec::with_capacity(items.len());
            // Ids of every definition, valid or not, so that duplicates are
            // reported together with the definitions' other problems.
            let mut ids: Vec<&str> = Vec::with_capacity(items.len());
            for (index, item) in items.iter().enumerate() {
                let webhook = definition::parse_definition(item, index, problems);
                if let Some(id) = item.get("id").and_then(Value::as_str) {
                    if ids.contains(&id) {
                        problems.push(Problem {
                            place: format!("webhook \"{id}\""),
                            field: "id".to_string(),
                            message: format!("is used by another webhook too (webhooks[{index}]); ids must be unique"),
                        });
                        continue;
                    }
                    ids.push(id);
                }
                webhooks.extend(webhook);
            }
            webhooks
        }
        Some(other) => {
            problems.push(Problem {
                place: "configuration".to_string(),
                field: "webhooks".to_string(),
                message: format!(
                    "expected a list of webhook definitions, found {}",
                    kind_of(other)
                ),
            });
            Vec::new()
        }
    };
    let events = events_value.map_or(Some(EventsConfig::default()), |v| parse_events(v, problems));
    let delivery = delivery_value.map_or(Some(DeliveryPolicy::default()), |v| {
        parse_delivery(v, problems)
    });
    let admin = match admin_value {
        None => Some(None),
        Some(v) => parse_admin(v, problems).map(Some),
    };
    let dead_letter = match dead_letter_value {
        None => Some(None),
        Some(v) => parse_dead_letter(v, problems).map(Some),
    };
    let cluster_state = match cluster_state_value {
        None => Some(None),
        Some(v) => cluster_state::parse(v, problems).map(Some),
    };
    let api = match api_value {
        None => Some(None),
        Some(v) => api::parse(v, problems).map(Some),
    };
    let (events, delivery) = (events?, delivery?);
    check_held_bytes(&events, &delivery, problems);
    if let (Some(Some(api)), Some(cluster_state)) = (&api, &cluster_state) {
        check_api(
            api,
            cluster_state.as_ref(),
            &delivery,
            admin.as_ref().and_then(Option::as_ref),
            problems,
        );
    }
    let mut webhooks = webhooks;
    for webhook in webhooks.iter_mut().filter(|w| !w.cluster_configured) {
        match definition::default_cluster(&webhook.url, delivery.clusters.as_ref()) {
            Ok(cluster) => webhook.cluster = cluster,
            Err((field, message)) => problems.push(Problem {
                place: format!("webhook \"{}\"", webhook.id),
                field: field.to_string(),
                message,
            }),
        }
    }
    let mut dead_letter = dead_letter;
    if let Some(Some(destination)) = dead_letter.as_mut() {
        let resolved = (!destination.cluster_configured)
            .then(|| definition::default_cluster(&destination.url, delivery.clusters.as_ref()));
        match resolved {
            None => {}
            Some(Ok(cluster)) => destination.cluster = cluster,
            Some(Err((field, message))) => problems.push(Problem {
                place: "dead_letter".to_string(),
                field: field.to_string(),
                message,
            }),
        }
    }
    Some(PluginConfig {
        webhooks,
        events,
        delivery,
        admin: admin?,
        dead_letter: dead_letter?,
        cluster_state: cluster_state?,
        api: api?,
    })
}

/// What the API needs of the rest of the configuration.
fn check_api(
    api: &ApiConfig,
    cluster_state: Option<&EtcdConfig>,
    delivery: &DeliveryPolicy,
    admin: Option<&AdminConfig>,
    problems: &mut Vec<Problem>,
) {
    let mut problem = |field: &str, message: String| {
        problems.push(Problem {
            place: "api".to_string(),
            field: field.to_string(),
            message,
        })
    };
    if cluster_state.is_none() {
        problem(
            "",
            "needs cluster_state.etcd: tenants' webhooks are kept in etcd (a definition a restart would lose is not kept anywhere else)".to_string(),
        );
    }
    let clusters = tenant_clusters(api, delivery);
    let https = clusters.and_then(|c| c.https.as_ref()).is_some();
    let http = clusters.and_then(|c| c.http.as_ref()).is_some();
    if !https && !api.urls.allows_http() {
        problem(
            "clusters",
            "needs clusters.https (or delivery.clusters.https): a tenant's webhook names a URL only, and its calls go to that cluster (the egress listener of envoy/dynamic-forward-proxy.yaml, see docs/api.md)".to_string(),
        );
    }
    if api.urls.allows_http() && !http {
        problem(
            "urls",
            "allow_http needs clusters.http (or delivery.clusters.http), the cluster http:// calls go to".to_string(),
        );
    }
    if let Some(admin) = admin {
        let (a, b) = (
            admin.path_prefix.to_ascii_lowercase(),
            api.path_prefix.to_ascii_lowercase(),
        );
        let admin_dir = format!("{a}/");
        if b.starts_with(&admin_dir) || admin_dir.starts_with(&b) {
            problem(
                "path_prefix",
                format!(
                    "\"{}\" overlaps admin.path_prefix \"{}\": give each its own path",
                    api.path_prefix, admin.path_prefix
                ),
            );
        }
    }
}

fn parse_events(value: &Value, problems: &mut Vec<Problem>) -> Option<EventsConfig> {
    let mut fields = Fields::of(value, "events", problems)?;
    let defaults = EventsConfig::default();
    let methods = match fields.string_list("methods") {
        None => defaults.methods,
        Some(list) if list.is_empty() => {
            fields.problem("methods", "must list at least one method, e.g. [\"POST\"]");
            Vec::new()
        }
        Some(list) => list.iter().map(|m| m.to_ascii_uppercase()).collect(),
    };
    let path_prefixes = match fields.string_list("path_prefixes") {
        None => defaults.path_prefixes,
        Some(list) => {
            if list.is_empty() {
                fields.problem(
                    "path_prefixes",
                    "must list at least one prefix, e.g. [\"/\"]",
                );
            }
            for prefix in &list {
                if !prefix.starts_with('/') {
                    fields.problem("path_prefixes", format!("\"{prefix}\" must start with '/'"));
                }
            }
            list.iter().map(|p| p.to_string()).collect()
        }
    };
    let max_event_bytes = fields
        .size("max_event_bytes", 1, MAX_EVENT_BYTES_LIMIT)
        .unwrap_or(defaults.max_event_bytes);
    let max_events_per_request = fields
        .size("max_events_per_request", 1, MAX_PER_REQUEST_LIMIT)
        .unwrap_or(defaults.max_events_per_request);
    let max_deliveries_per_request = fields
        .size("max_deliveries_per_request", 1, MAX_PER_REQUEST_LIMIT)
        .unwrap_or(defaults.max_deliveries_per_request);
    let deliver_on = match fields.string("deliver_on") {
        None | Some("request") => DeliverOn::Request,
        Some("response_2xx") => DeliverOn::Response2xx,
        Some(other) => {
            fields.problem(
                "deliver_on",
                format!("unknown value \"{other}\" (expected \"request\" or \"response_2xx\")"),
            );
            DeliverOn::Request
        }
    };
    let selected_by_routes = fields.boolean("selected_by_routes").unwrap_or(false);
    if selected_by_routes {
        for field in ["methods", "path_prefixes"] {
            if fields.has(field) {
                fields.problem(
                    field,
                    "is not used with selected_by_routes: Envoy's routes choose the event requests (match the method and path there), so drop this field",
                );
            }
        }
    }
    fields.reject_unknown(
        "methods, path_prefixes, max_event_bytes, max_events_per_request, max_deliveries_per_request, deliver_on, selected_by_routes",
    );
    Some(EventsConfig {
        methods,
        path_prefixes,
        max_event_bytes,
        max_events_per_request,
        max_deliveries_per_request,
        deliver_on,
        selected_by_routes,
    })
}

fn parse_delivery(value: &Value, problems: &mut Vec<Problem>) -> Option<DeliveryPolicy> {
    let mut fields = Fields::of(value, "delivery", problems)?;
    let defaults = DeliveryPolicy::default();
    let policy = DeliveryPolicy {
        timeout_ms: fields
            .integer("timeout_ms", 1, 3_600_000)
            .unwrap_or(defaults.timeout_ms),
        max_in_flight: fields
            .size("max_in_flight", 1, 1_000_000)
            .unwrap_or(defaults.max_in_flight),
        failing_window_s: fields
            .integer("failing_window_s", 1, 365 * 24 * 3600)
            .unwrap_or(defaults.failing_window_s),
        failure_threshold: fields
            .integer("failure_threshold", 1, 1_000_000)
            .unwrap_or(defaults.failure_threshold),
        retry_schedule_s: parse_schedule(&mut fields).unwrap_or(defaults.retry_schedule_s),
        max_pending: fields
            .size("max_pending", 1, 10_000_000)
            .unwrap_or(defaults.max_pending),
        max_pending_bytes: fields
            .size("max_pending_bytes", 1024, MAX_HELD_BYTES_LIMIT)
            .unwrap_or(defaults.max_pending_bytes),
        max_held_bytes: fields
            .size("max_held_bytes", MIN_HELD_BYTES, MAX_HELD_BYTES_LIMIT)
            .unwrap_or(defaults.max_held_bytes),
        propagate_headers: parse_propagate_headers(&mut fields)
            .unwrap_or(defaults.propagate_headers),
        clusters: parse_scheme_clusters(&mut fields),
    };
    let mut policy = policy;
    if fields.get("max_pending_bytes").is_none() {
        // Unset, it follows a smaller held-bytes budget down: setting only
        // max_held_bytes is enough.
        policy.max_pending_bytes = policy.max_pending_bytes.min(policy.max_held_bytes);
    }
    fields.reject_unknown(
        "timeout_ms, max_in_flight, failing_window_s, failure_threshold, retry_schedule_s, max_pending, max_pending_bytes, max_held_bytes, propagate_headers, clusters",
    );
    Some(policy)
}

/// The clusters tenants' webhooks are called through: `api.clusters`, else
/// `delivery.clusters`.
pub(crate) fn tenant_clusters<'a>(
    api: &'a ApiConfig,
    delivery: &'a DeliveryPolicy,
) -> Option<&'a SchemeClusters> {
    api.clusters.as_ref().or(delivery.clusters.as_ref())
}

/// `clusters` (of `delivery` or `api`): `{"http": "<cluster>", "https": "<cluster>"}`, either or both.
fn parse_scheme_clusters(fields: &mut Fields<'_, '_>) -> Option<SchemeClusters> {
    let value = fields.get("clusters")?;
    let Some(object) = value.as_object() else {
        fields.problem(
            "clusters",
            format!(
                "expected {{\"http\": \"<cluster>\", \"https\": \"<cluster>\"}}, found {}",
                kind_of(value)
            ),
        );
        return None;
    };
    let mut clusters = SchemeClusters::default();
    for (scheme, cluster) in object {
        let slot = match scheme.as_str() {
            "http" => &mut clusters.http,
            "https" => &mut clusters.https,
            other => {
                fields.problem(
                    "clusters",
                    format!(
                        "\"{}\" is not a URL scheme webhooks use: only \"http\" and \"https\"",
                        other.escape_debug()
                    ),
                );
                continue;
            }
        };
        match cluster
            .as_str()
            .map(|name| (name, definition::cluster_refusal(name)))
        {
            Some((name, None)) => *slot = Some(name.to_string()),
            Some((_, Some(reason))) => fields.problem("clusters", format!("{scheme}: {reason}")),
            None => fields.problem(
                "clusters",
                format!("{scheme}: expected a cluster name (a string)"),
            ),
        }
    }
    Some(clusters)
}

/// `delivery.propagate_headers`: header names (any case), as configured
/// headers' names are checked, and never the platform's credentials.
fn parse_propagate_headers(fields: &mut Fields<'_, '_>) -> Option<Vec<String>> {
    let value = fields.get("propagate_headers")?;
    let Some(items) = value.as_array() else {
        fields.problem(
            "propagate_headers",
            "expected a list of header names, e.g. [\"traceparent\", \"tracestate\"]; [] propagates none",
        );
        return None;
    };
    if items.len() > MAX_PROPAGATE_HEADERS {
        fields.problem(
            "propagate_headers",
            format!(
                "lists {} headers; at most {MAX_PROPAGATE_HEADERS}",
                items.len()
            ),
        );
        return None;
    }
    let mut names: Vec<String> = Vec::new();
    let mut valid = true;
    for item in items {
        let Some(name) = item.as_str() else {
            fields.problem(
                "propagate_headers",
                "every entry must be a header name (a string)",
            );
            valid = false;
            continue;
        };
        let lower = name.to_ascii_lowercase();
        let refusal = definition::header_name_refusal(&lower)
            .or_else(|| {
                CREDENTIAL_HEADERS.contains(&lower.as_str()).then_some(
                    "carries the platform's credentials: it is never sent to a receiver (use a webhook's \"headers\" for the receiver's own)",
                )
            })
            .or_else(|| names.contains(&lower).then_some("is given twice (header names ignore case)"));
        if let Some(reason) = refusal {
            fields.problem(
                "propagate_headers",
                format!("\"{}\" {reason}", name.escape_debug()),
            );
            valid = false;
            continue;
        }
        names.push(lower);
    }
    valid.then_some(names)
}

/// `delivery.max_held_bytes` must hold what the other bounds let deliveries keep.
fn check_held_bytes(events: &EventsConfig, delivery: &DeliveryPolicy, problems: &mut Vec<Problem>) {
    let held = delivery.max_held_bytes;
    let mut problem = |message: String| {
        problems.push(Problem {
            place: "delivery".to_string(),
            field: "max_held_bytes".to_string(),
            message,
        })
    };
    if held < delivery.max_pending_bytes {
        problem(format!(
            "is {held}, less than delivery.max_pending_bytes ({}): every delivery waiting for a retry is held too; raise max_held_bytes or lower max_pending_bytes",
            delivery.max_pending_bytes
        ));
    }
    let two_events = events.max_event_bytes.saturating_mul(2);
    if held < two_events {
        problem(format!(
            "is {held}, less than twice events.max_event_bytes ({two_events}): at least two of the largest events must fit; raise max_held_bytes or lower max_event_bytes"
        ));
    }
}

fn parse_admin(value: &Value, problems: &mut Vec<Problem>) -> Option<AdminConfig> {
    let mut fields = Fields::of(value, "admin", problems)?;
    let path_prefix = fields.required_string("path_prefix");
    if let Some(prefix) = path_prefix {
        if !prefix.starts_with('/') || prefix.len() < 2 || prefix.ends_with('/') {
            fields.problem(
                "path_prefix",
                format!("\"{prefix}\" must start with '/' and not end with '/', e.g. \"/webhooks-admin\""),
            );
        }
    }
    let token = match (fields.string("token"), fields.string("token_env")) {
        (Some(_), Some(_)) => {
            fields.problem("token", "set either token or token_env, not both");
            None
        }
        (Some(token), None) => match validate_admin_token(token) {
            Ok(()) => Some(AdminToken::Literal(token.to_string())),
            Err(reason) => {
                fields.problem("token", reason);
                None
            }
        },
        (None, Some(name)) if !name.is_empty() => Some(AdminToken::Env(name.to_string())),
        _ => {
            fields.problem(
                "token",
                "the admin API needs a bearer token: set token, or token_env to an environment variable's name",
            );
            None
        }
    };
    fields.reject_unknown("path_prefix, token, token_env");
    Some(AdminConfig {
        path_prefix: path_prefix?.to_string(),
        token: token?,
    })
}

/// Checks that `token` can be compared with an `Authorization: Bearer` header
/// value: not empty, visible ASCII only (no spaces, control characters or
/// non-ASCII letters). The reason never shows the token. The runtime checks a
/// token read from `admin.token_env` with this too.
pub fn validate_admin_token(token: &str) -> Result<(), String> {
    if token.is_empty() {
        return Err("must not be empty".to_string());
    }
    if token.starts_with(char::is_whitespace) || token.ends_with(char::is_whitespace) {
        return Err(
            "starts or ends with whitespace (HTTP strips it, so no request could match); remove it"
                .to_string(),
        );
    }
    if let Some(position) = token.chars().position(|c| !c.is_ascii_graphic()) {
        let kind = match token.chars().nth(position) {
            Some(c) if c.is_control() => "a control character",
            Some(c) if c.is_whitespace() => "whitespace",
            _ => "a non-ASCII character",
        };
        return Err(format!(
            "contains {kind} at character {}; a bearer token is visible ASCII only (letters, digits and punctuation)",
            position + 1
        ));
    }
    Ok(())
}

/// Most retries a delivery may have.
pub const MAX_RETRIES: usize = 32;

fn parse_schedule(fields: &mut Fields<'_, '_>) -> Option<Vec<u64>> {
    let value = fields.get("retry_schedule_s")?;
    let delays: Option<Vec<u64>> = value
        .as_array()
        .and_then(|items| items.iter().map(Value::as_u64).collect());
    match delays {
        Some(delays)
            if delays.len() <= MAX_RETRIES && delays.iter().all(|d| *d <= 7 * 24 * 3600) =>
        {
            Some(delays)
        }
        _ => {
            fields.problem(
                "retry_schedule_s",
                format!(
                    "expected a list of at most {MAX_RETRIES} delays in whole seconds (each at most a week), e.g. [5, 30, 120]; [] turns retries off"
                ),
            );
            None
        }
    }
}

fn parse_dead_letter(value: &Value, problems: &mut Vec<Problem>) -> Option<DeadLetterConfig> {
    let mut fields = Fields::of(value, "dead_letter", problems)?;
    let (url, configured) = definition::parse_destination(&mut fields);
    let headers = fields
        .get("headers")
        .map(|value| definition::parse_headers(value, &mut fields))
        .unwrap_or_default();
    fields.reject_unknown("url, cluster, headers");
    let url = url?;
    Some(DeadLetterConfig {
        cluster_configured: configured.is_some(),
        // Resolved with `delivery.clusters` once the whole configuration is read.
        cluster: configured.unwrap_or_else(|| url.host.clone()),
        url,
        headers,
    })
}
