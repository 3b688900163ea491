//! A webhook definition: what it listens to and where it calls.

use serde_json::Value;

use super::problems::{kind_of, Fields, Problem};
use super::SchemeClusters;
use crate::query::Query;
use crate::signature::SigningSecret;
use crate::status::Status;

/// iconik's webhook operations; `None` in a definition means `all`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    Create,
    Delete,
    Purge,
    Restore,
    Update,
    Download,
}

impl Operation {
    const NAMES: [(&'static str, Operation); 6] = [
        ("create", Operation::Create),
        ("delete", Operation::Delete),
        ("purge", Operation::Purge),
        ("restore", Operation::Restore),
        ("update", Operation::Update),
        ("download", Operation::Download),
    ];

    /// Case-insensitive.
    pub fn parse(text: &str) -> Option<Operation> {
        Self::NAMES
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(text))
            .map(|(_, op)| *op)
    }

    pub fn as_str(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, op)| *op == self)
            .map_or("all", |(name, _)| name)
    }
}

/// Where a webhook's signing secrets come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Secrets(Vec<SigningSecret>),
    /// The name of an environment variable of the Wasm VM holding one or
    /// several space-separated `whsec_` secrets (several: during rotation).
    Env(String),
}

/// Where a webhook is called: parsed from its `url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    /// The URL as configured.
    pub text: String,
    /// `host` or `host:port`, sent as `:authority`.
    pub authority: String,
    pub host: String,
    /// Path and query, sent as `:path`.
    pub path: String,
    /// `https://` (else `http://`): picks the cluster from `delivery.clusters`.
    pub https: bool,
}

/// One webhook of the plugin configuration.
#[derive(Debug, Clone)]
pub struct WebhookDefinition {
    pub id: String,
    pub name: String,
    pub description: String,
    /// Lower case; compared case-insensitively with the event's `event_type`.
    pub event_type: String,
    /// Lower case; `None` matches any realm.
    pub realm: Option<String>,
    /// `None` matches any operation (`all`).
    pub operation: Option<Operation>,
    /// `None` matches any object.
    pub object_id: Option<String>,
    pub url: WebhookUrl,
    /// The Envoy cluster that delivery calls go to.
    pub cluster: String,
    /// `cluster` was configured (else it comes from `delivery.clusters` or the URL's host).
    pub cluster_configured: bool,
    /// The status the configuration gives.
    pub status: Status,
    pub query: Query,
    /// Header names in lower case, ordered by name (serde_json does not keep
    /// the configuration's order).
    pub headers: Vec<(String, String)>,
    /// Standard Webhooks signing secrets; `None`: requests are not signed.
    pub signing: Option<SecretSource>,
    /// At most this many call attempts a second from this Envoy (`rate_limit_per_s`).
    pub rate_limit: Option<RateLimit>,
    /// Identifies this exact definition: when it changes, its status starts afresh.
    pub fingerprint: u64,
    /// A tenant's webhook (made through the API) sees only the events of its
    /// `system_domain_id`; `None` (the configuration's): every domain's.
    pub system_domain_id: Option<String>,
}

/// A token bucket: `per_s` tokens a second, holding at most `burst`; each
/// call attempt takes one. Per Envoy (all its workers share the bucket).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_s: u64,
    pub burst: u64,
}

/// The highest `rate_limit_per_s` and `rate_limit_burst` accepted.
pub const MAX_RATE_PER_S: u64 = 100_000;

const KNOWN_FIELDS: &str = "id, name, description, event_type, realm, operation, object_id, url, cluster, status, query, headers, secret, secret_env, rate_limit_per_s, rate_limit_burst";

/// Sent on every call the filter makes (deliveries and dead letters). A
/// request carrying it is never read as an event: a webhook whose cluster
/// leads back through an Envoy with this filter cannot loop. Defined here,
/// not with the calls, because configured headers are checked against it.
pub const DELIVERY_MARKER: &str = "envoy-webhooks-delivery";

/// Headers the filter sets itself on delivery calls.
const FILTER_HEADERS: [&str; 6] = [
    "content-type",
    "user-agent",
    "webhook-id",
    "webhook-signature",
    "webhook-timestamp",
    DELIVERY_MARKER,
];

/// Hop-by-hop and framing headers: Envoy manages them, and a configured one
/// would break or smuggle the call.
const CONNECTION_HEADERS: [&str; 9] = [
    "connection",
    "content-length",
    "host",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Longest cluster name accepted.
pub const MAX_CLUSTER_LEN: usize = 255;

pub const MAX_ID_LEN: usize = 128;

/// Reads the definition at `webhooks[index]`; `None` if it has problems (all recorded).
pub(crate) fn parse_definition(
    value: &Value,
    index: usize,
    problems: &mut Vec<Problem>,
) -> Option<WebhookDefinition> {
    let before = problems.len();
    let mut fields = Fields::of(value, format!("webhooks[{index}]"), problems)?;

    let id = fields.required_string("id");
    if let Some(id) = id {
        fields.set_place(format!("webhook \"{id}\""));
        let valid = !id.is_empty()
            && id.len() <= MAX_ID_LEN
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            fields.problem(
                "id",
                format!("must be 1 to {MAX_ID_LEN} letters, digits, '-' or '_' (it names metrics and admin URLs)"),
            );
        }
    }
    let name = fields.string("name").unwrap_or_default().to_string();
    let description = fields.string("description").unwrap_or_default().to_string();

    let event_type = fields
        .required_string("event_type")
        .map(str::to_ascii_lowercase);
    if event_type.as_deref() == Some("") {
        fields.problem(
            "event_type",
            "must not be empty (e.g. \"assets\", \"collections\")",
        );
    }
    let realm = fields.string("realm").map(str::to_ascii_lowercase);
    if realm.as_deref() == Some("") {
        fields.problem(
            "realm",
            "must not be empty; leave it out (or null) to match any realm",
        );
    }

    let mut operation = None;
    if let Some(text) = fields.string("operation") {
        if !text.eq_ignore_ascii_case("all") {
            match Operation::parse(text) {
                Some(op) => operation = Some(op),
                None => fields.problem(
                    "operation",
                    format!("unknown operation \"{text}\" (expected all, create, delete, purge, restore, update or download)"),
                ),
            }
        }
    }
    if operation == Some(Operation::Download)
        && event_type.as_deref().is_some_and(|t| t != "assets")
    {
        fields.problem(
            "operation",
            "\"download\" is only allowed with event_type \"assets\"",
        );
    }

    let object_id = fields.string("object_id").map(str::to_string);
    let (url, configured) = parse_destination(&mut fields);
    let cluster_configured = configured.is_some();
    // Resolved with `delivery.clusters` once the whole configuration is read.
    let cluster = configured.or_else(|| url.as_ref().map(|url| url.host.clone()));

    let status = match fields.string("status") {
        None => Some(Status::Enabled),
        Some(text) => {
            let status = Status::parse(text);
            if status.is_none() {
                fields.problem(
                    "status",
                    format!(
                        "unknown status \"{text}\" (expected ENABLED, DISABLED, FAILING or FAILED)"
                    ),
                );
            }
            status
        }
    };

    let query = match fields.string("query") {
        None => Some(Query::match_all()),
        Some(text) => match Query::parse(text) {
            Ok(query) => Some(query),
            Err(e) => {
                fields.problem("query", e.to_string());
                None
            }
        },
    };

    let headers = fields
        .get("headers")
        .map(|value| parse_headers(value, &mut fields));
    let signing = match (fields.string("secret"), fields.string("secret_env")) {
        (Some(_), Some(_)) => {
            fields.problem("secret", "set either secret or secret_env, not both");
            None
        }
        (Some(text), None) => match SigningSecret::parse_list(text) {
            Ok(secrets) => Some(SecretSource::Secrets(secrets)),
            Err(message) => {
                fields.problem("secret", message);
                None
            }
        },
        (None, Some("")) => {
            fields.problem("secret_env", "must name an environment variable");
            None
        }
        (None, Some(name)) => Some(SecretSource::Env(name.to_string())),
        (None, None) => None,
    };
    let rate_limit = parse_rate_limit(&mut fields);
    fields.reject_unknown(KNOWN_FIELDS);

    if problems.len() > before {
        return None;
    }
    let fingerprint = fingerprint_of(value);
    Some(WebhookDefinition {
        id: id?.to_string(),
        name,
        description,
        event_type: event_type?,
        realm,
        operation,
        object_id,
        url: url?,
        cluster: cluster?,
        cluster_configured,
        status: status?,
        query: query?,
        headers: headers.unwrap_or_default(),
        signing,
        rate_limit,
        fingerprint,
        system_domain_id: None,
    })
}

/// Reads a tenant's webhook, given in the configuration's format, for
/// `system_domain_id`; the cluster is resolved later, as for the configuration.
pub(crate) fn parse_tenant_definition(
    value: &Value,
    system_domain_id: &str,
) -> Result<WebhookDefinition, Vec<Problem>> {
    let mut problems = Vec::new();
    match parse_definition(value, 0, &mut problems) {
        Some(mut definition) if problems.is_empty() => {
            definition.system_domain_id = Some(system_domain_id.to_string());
            Ok(definition)
        }
        _ => Err(problems),
    }
}

/// `rate_limit_per_s` and `rate_limit_burst` (default: the rate).
fn parse_rate_limit(fields: &mut Fields<'_, '_>) -> Option<RateLimit> {
    let per_s = fields.integer("rate_limit_per_s", 1, MAX_RATE_PER_S);
    let burst = fields.integer("rate_limit_burst", 1, MAX_RATE_PER_S);
    match (per_s, burst) {
        (Some(per_s), burst) => Some(RateLimit {
            per_s,
            burst: burst.unwrap_or(per_s),
        }),
        (None, Some(_)) if fields.get("rate_limit_per_s").is_none() => {
            fields.problem(
                "rate_limit_burst",
                "needs rate_limit_per_s: the burst is how many calls may go at once on top of the rate",
            );
            None
        }
        _ => None,
    }
}

/// A definition's fingerprint: the first 8 bytes of the SHA-256 of its
/// canonical text (compact JSON with keys sorted, as serde_json's map writes
/// it). Stable across builds and toolchains, unlike `std`'s hashers, so a
/// rebuilt filter keeps every webhook's status.
pub fn fingerprint_of(definition: &Value) -> u64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(definition.to_string().as_bytes());
    let mut first = [0u8; 8];
    for (to, from) in first.iter_mut().zip(digest.iter()) {
        *to = *from;
    }
    u64::from_be_bytes(first)
}

pub(crate) fn parse_headers(value: &Value, fields: &mut Fields<'_, '_>) -> Vec<(String, String)> {
    let Some(object) = value.as_object() else {
        // The kind only: the value may hold a secret.
        fields.problem(
            "headers",
            format!(
                "expected an object of header names to values, found {}",
                kind_of(value)
            ),
        );
        return Vec::new();
    };
    let mut headers: Vec<(String, String)> = Vec::new();
    for (name, value) in object {
        // Never echo header values: they hold secrets. Names are shown escaped.
        let lower = name.to_ascii_lowercase();
        let shown = name.escape_debug();
        let refusal = header_name_refusal(&lower).or_else(|| {
            if headers.iter().any(|(seen, _)| *seen == lower) {
                Some("is given twice (header names ignore case)")
            } else {
                None
            }
        });
        if let Some(reason) = refusal {
            fields.problem("headers", format!("\"{shown}\" {reason}"));
            continue;
        }
        match value.as_str() {
            Some(text) => match header_value_refusal(text) {
                Some(reason) => {
                    fields.problem("headers", format!("the value of \"{shown}\" {reason}"))
                }
                None => headers.push((lower, text.to_string())),
            },
            None => fields.problem(
                "headers",
                format!("the value of \"{shown}\" must be a string"),
            ),
        }
    }
    headers
}

/// Why a configured header name (lower case) cannot be used, if it cannot.
pub(super) fn header_name_refusal(lower: &str) -> Option<&'static str> {
    if lower.starts_with(':') {
        return Some("is a pseudo-header; the filter sets them from \"url\"");
    }
    let is_token = !lower.is_empty()
        && lower
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !is_token {
        return Some("is not a valid header name (letters, digits and !#$%&'*+-.^_`|~ only)");
    }
    if lower.starts_with("x-envoy-") {
        return Some(
            "cannot be configured: x-envoy-* headers change how Envoy routes and retries the call",
        );
    }
    if CONNECTION_HEADERS.contains(&lower) {
        return Some(
            "cannot be configured: it is a hop-by-hop or framing header that Envoy manages",
        );
    }
    if FILTER_HEADERS.contains(&lower) {
        return Some("is set by the filter and cannot be configured");
    }
    None
}

/// Why a configured header value cannot be sent, if it cannot. Never shows the value.
pub(crate) fn header_value_refusal(value: &str) -> Option<&'static str> {
    if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Some("contains a line break or NUL");
    }
    if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Some("contains a control character");
    }
    if value.starts_with([' ', '\t']) || value.ends_with([' ', '\t']) {
        return Some("starts or ends with whitespace (HTTP would strip it)");
    }
    None
}

/// Whether `cluster` is a name Envoy could have given a cluster: letters,
/// digits and `_-.:/|` (Istio's `outbound|8080||svc.ns.svc.cluster.local`),
/// 1 to `MAX_CLUSTER_LEN` bytes.
pub(super) fn cluster_refusal(cluster: &str) -> Option<String> {
    if cluster.is_empty() {
        return Some("must not be empty; leave it out to use the URL's host".to_string());
    }
    if cluster.len() > MAX_CLUSTER_LEN {
        return Some(format!(
            "is {} bytes long; the limit is {MAX_CLUSTER_LEN}",
            cluster.len()
        ));
    }
    let bad = cluster
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || "_-.:/|".contains(c)));
    bad.map(|c| {
        format!(
            "\"{}\" contains {}; cluster names are letters, digits and _ - . : / | only",
            cluster.escape_debug(),
            describe_char(c)
        )
    })
}

/// `'c'`, or what kind of character it is when it would not print.
fn describe_char(c: char) -> String {
    if c.is_whitespace() {
        "whitespace".to_string()
    } else if c.is_control() {
        format!("a control character ({})", c.escape_unicode())
    } else {
        format!("'{c}'")
    }
}

/// Reads `url` (required) and `cluster`, if configured (see `default_cluster`).
pub(crate) fn parse_destination(
    fields: &mut Fields<'_, '_>,
) -> (Option<WebhookUrl>, Option<String>) {
    let url = fields
        .required_string("url")
        .and_then(|text| match parse_url(text) {
            Ok(url) => Some(url),
            Err(message) => {
                fields.problem("url", message);
                None
            }
        });
    let cluster = fields
        .string("cluster")
        .and_then(|cluster| match cluster_refusal(cluster) {
            Some(reason) => {
                fields.problem("cluster", reason);
                None
            }
            None => Some(cluster.to_string()),
        });
    (url, cluster)
}

/// The cluster of a destination whose `cluster` is not configured: the one
/// `delivery.clusters` names for its URL's scheme, or (without
/// `delivery.clusters`) the URL's host. `Err`: (field, why).
pub(crate) fn default_cluster(
    url: &WebhookUrl,
    clusters: Option<&SchemeClusters>,
) -> Result<String, (&'static str, String)> {
    match clusters {
        Some(clusters) => {
            let (scheme, cluster) = if url.https {
                ("https", &clusters.https)
            } else {
                ("http", &clusters.http)
            };
            cluster.clone().ok_or_else(|| {
                ("url", format!("is an {scheme}:// URL and delivery.clusters names no \"{scheme}\" cluster: add one, or set cluster"))
            })
        }
        None => match cluster_refusal(&url.host) {
            Some(reason) => Err((
                "cluster",
                format!("the URL's host cannot name a cluster: {reason}; set cluster"),
            )),
            None => Ok(url.host.clone()),
        },
    }
}

/// Parses an `http://` or `https://` URL into what a delivery call needs.
pub fn parse_url(text: &str) -> Result<WebhookUrl, String> {
    // Messages show the URL without any credentials it holds.
    let shown = without_credentials(text);
    if let Some(c) = text.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "\"{}\" contains {}; percent-encode it (a space is %20)",
            shown.escape_debug(),
            describe_char(c)
        ));
    }
    let uri: http::Uri = text
        .parse()
        .map_err(|e| format!("\"{shown}\" is not a valid URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("\"{shown}\" must start with http:// or https://")),
    }
    let Some(authority) = uri.authority() else {
        return Err(format!("\"{shown}\" has no host"));
    };
    if authority.as_str().contains('@') {
        return Err(format!(
            "\"{shown}\" must not hold credentials; put them in \"headers\" instead"
        ));
    }
    let host = authority.host();
    if host.is_empty() {
        return Err(format!("\"{shown}\" has no host"));
    }
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    Ok(WebhookUrl {
        text: text.to_string(),
        authority: authority.as_str().to_string(),
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        path: if path.is_empty() {
            "/".to_string()
        } else {
            path
        },
        https: uri.scheme_str() == Some("https"),
    })
}

/// `text` with the user-info part of its authority (`user:password@`) replaced by `***@`.
pub(crate) fn without_credentials(text: &str) -> String {
    let start = text.find("://").map_or(0, |i| i + 3);
    let end = text[start..]
        .find(['/', '?', '#'])
        .map_or(text.len(), |i| start + i);
    match text[start..end].rfind('@') {
        Some(at) => format!("{}***{}", &text[..start], &text[start + at..]),
        None => text.to_string(),
    }
}
