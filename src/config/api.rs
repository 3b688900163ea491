//! `api`: iconik's webhook API served by the filter, per tenant: its path,
//! who may call it (tokens, or headers an auth filter in front fills in),
//! which URLs tenants may give, and its bounds.

use serde_json::Value;

use super::problems::{kind_of, ConfigError, Fields, Problem};
use super::url_policy::{AllowEntry, UrlPolicy};
use super::{parse_scheme_clusters, SchemeClusters};

/// The API as configured.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Starts and ends with `/`; compared without regard to ASCII case.
    pub path_prefix: String,
    pub tokens: Option<TokenSource>,
    pub identity_headers: Option<IdentityHeaders>,
    pub urls: UrlPolicy,
    /// The clusters tenants' calls go to, by scheme (`api.clusters`): the
    /// egress listeners that check the address Envoy connects to. `None`:
    /// `delivery.clusters`.
    pub clusters: Option<SchemeClusters>,
    pub max_webhooks_per_domain: usize,
    pub max_webhooks: usize,
    /// Larger request bodies are refused with 413, unread.
    pub max_body_bytes: usize,
}

/// Where the tokens come from.
#[derive(Debug, Clone)]
pub enum TokenSource {
    Tokens(Tokens),
    /// A VM environment variable holding the same JSON (read at load).
    Env(String),
}

pub const DEFAULT_PATH_PREFIX: &str = "/API/notifications/";
pub const DEFAULT_MAX_WEBHOOKS_PER_DOMAIN: usize = 100;
pub const DEFAULT_MAX_WEBHOOKS: usize = 10_000;
/// The most webhooks `max_webhooks` may allow: what one Envoy worker keeps
/// and matches against stays bounded.
pub const MAX_WEBHOOKS_LIMIT: usize = 100_000;
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;
pub const MAX_BODY_BYTES_LIMIT: usize = 1024 * 1024;

const KNOWN_FIELDS: &str = "path_prefix, tokens, tokens_env, identity_headers, urls, clusters, max_webhooks_per_domain, max_webhooks, max_body_bytes";

impl ApiConfig {
    /// Reads the `api` section alone (the configuration reads it with the rest).
    pub fn from_value(value: &Value) -> Result<ApiConfig, ConfigError> {
        let mut problems = Vec::new();
        match parse(value, &mut problems) {
            Some(config) if problems.is_empty() => Ok(config),
            _ => Err(ConfigError { problems }),
        }
    }
}

pub(crate) fn parse(value: &Value, problems: &mut Vec<Problem>) -> Option<ApiConfig> {
    let before = problems.len();
    let mut fields = Fields::of(value, "api", problems)?;
    let path_prefix = fields
        .string("path_prefix")
        .unwrap_or(DEFAULT_PATH_PREFIX)
        .to_string();
    let prefix_ok = path_prefix.starts_with('/')
        && path_prefix.ends_with('/')
        && path_prefix.len() > 1
        && path_prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-_.~".contains(&b));
    if !prefix_ok {
        fields.problem(
            "path_prefix",
            format!(
                "\"{}\" must start and end with '/' and hold letters, digits and -_.~ only, e.g. \"{DEFAULT_PATH_PREFIX}\"",
                path_prefix.escape_debug()
            ),
        );
    }
    let tokens = match (fields.get("tokens"), fields.string("tokens_env")) {
        (Some(_), Some(_)) => {
            fields.problem("tokens", "set either tokens or tokens_env, not both");
            None
        }
        (Some(value), None) => match Tokens::parse(value) {
            Ok(tokens) => Some(TokenSource::Tokens(tokens)),
            Err(list) => {
                for problem in list {
                    fields.problem("tokens", problem);
                }
                None
            }
        },
        (None, Some("")) => {
            fields.problem("tokens_env", "must name an environment variable");
            None
        }
        (None, Some(name)) => Some(TokenSource::Env(name.to_string())),
        (None, None) => None,
    };
    let identity_headers = fields
        .get("identity_headers")
        .and_then(|value| parse_identity_headers(value, &mut fields));
    if tokens.is_none() && identity_headers.is_none() && fields.get("tokens").is_none() {
        fields.problem(
            "tokens",
            "the API needs callers: set tokens (or tokens_env), or identity_headers filled in by an auth filter in front",
        );
    }
    let urls = match fields.get("urls") {
        None => Some(UrlPolicy::new(false, default_suffixes(), Vec::new())),
        Some(value) => parse_urls(value, &mut fields),
    };
    let clusters = parse_scheme_clusters(&mut fields);
    let per_domain = fields
        .size("max_webhooks_per_domain", 1, MAX_WEBHOOKS_LIMIT)
        .unwrap_or(DEFAULT_MAX_WEBHOOKS_PER_DOMAIN);
    let max_webhooks = fields
        .size("max_webhooks", 1, MAX_WEBHOOKS_LIMIT)
        .unwrap_or(DEFAULT_MAX_WEBHOOKS);
    if per_domain > max_webhooks {
        fields.problem(
            "max_webhooks_per_domain",
            format!("is {per_domain}, more than max_webhooks ({max_webhooks})"),
        );
    }
    let max_body_bytes = fields
        .size("max_body_bytes", 1024, MAX_BODY_BYTES_LIMIT)
        .unwrap_or(DEFAULT_MAX_BODY_BYTES);
    fields.reject_unknown(KNOWN_FIELDS);
    if problems.len() > before {
        return None;
    }
    Some(ApiConfig {
        path_prefix,
        tokens,
        identity_headers,
        urls: urls?,
        clusters,
        max_webhooks_per_domain: per_domain,
        max_webhooks,
        max_body_bytes,
    })
}

fn default_suffixes() -> Vec<String> {
    UrlPolicy::DEFAULT_INTERNAL_SUFFIXES
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn parse_identity_headers(value: &Value, outer: &mut Fields<'_, '_>) -> Option<IdentityHeaders> {
    let mut names = Vec::new();
    for field in ["system_domain_id", "roles"] {
        match value.get(field).and_then(Value::as_str) {
            Some(name) if is_header_name(name) => names.push(name.to_ascii_lowercase()),
            _ => outer.problem(
                "identity_headers",
                format!("field '{field}': expected the name of the request header the auth filter in front fills in, e.g. \"x-iconik-{}\"", field.replace('_', "-")),
            ),
        }
    }
    if let Some(object) = value.as_object() {
        for key in object.keys() {
            if !["system_domain_id", "roles"].contains(&key.as_str()) {
                outer.problem(
                    "identity_headers",
                    format!("unknown field '{key}' (known: system_domain_id, roles)"),
                );
            }
        }
    }
    match names.as_slice() {
        [domain, roles] if domain != roles => Some(IdentityHeaders {
            system_domain_id: domain.clone(),
            roles: roles.clone(),
        }),
        [_, _] => {
            outer.problem("identity_headers", "the two headers must differ");
            None
        }
        _ => None,
    }
}

fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        && !name.eq_ignore_ascii_case("auth-token")
}

fn parse_urls(value: &Value, outer: &mut Fields<'_, '_>) -> Option<UrlPolicy> {
    let mut problems = Vec::new();
    let mut fields = Fields::of(value, "api.urls", &mut problems)?;
    let allow_http = match fields.get("allow_http") {
        None => false,
        Some(Value::Bool(allow)) => *allow,
        Some(other) => {
            fields.problem(
                "allow_http",
                format!("expected true or false, found {}", kind_of(other)),
            );
            false
        }
    };
    let mut allow = Vec::new();
    for text in fields.string_list("allow").unwrap_or_default() {
        match AllowEntry::parse(text) {
            Ok(entry) => allow.push(entry),
            Err(message) => fields.problem("allow", message),
        }
    }
    let suffixes = match fields.string_list("internal_suffixes") {
        None => default_suffixes(),
        Some(list) => {
            let mut suffixes = Vec::new();
            for suffix in list {
                let valid = suffix.starts_with('.')
                    && suffix.len() > 1
                    && suffix
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
                if valid {
                    suffixes.push(suffix.to_ascii_lowercase());
                } else {
                    fields.problem(
                        "internal_suffixes",
                        format!(
                            "\"{}\" must be a domain suffix starting with '.', e.g. \".internal\"",
                            suffix.escape_debug()
                        ),
                    );
                }
            }
            suffixes
        }
    };
    fields.reject_unknown("allow_http, allow, internal_suffixes");
    let ok = problems.is_empty();
    for problem in problems {
        outer.problem(&format!("urls.{}", problem.field), problem.message);
    }
    ok.then(|| UrlPolicy::new(allow_http, suffixes, allow))
}

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Read,
    Write,
    Delete,
}

impl Role {
    const NAMES: [(&'static str, Role); 3] = [
        ("can_read_webhooks", Role::Read),
        ("can_write_webhooks", Role::Write),
        ("can_delete_webhooks", Role::Delete),
    ];

    pub fn parse(name: &str) -> Option<Role> {
        Self::NAMES
            .iter()
            .find(|(known, _)| *known == name)
            .map(|(_, role)| *role)
    }

    pub fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, role)| *role == self)
            .map_or("", |(name, _)| name)
    }

    fn bit(self) -> u8 {
        match self {
            Role::Read => 1,
            Role::Write => 2,
            Role::Delete => 4,
        }
    }
}

/// A caller: its tenant and roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub system_domain_id: String,
    roles: u8,
}

impl Caller {
    pub fn new(system_domain_id: &str, roles: &[Role]) -> Caller {
        Caller {
            system_domain_id: system_domain_id.to_string(),
            roles: roles.iter().fold(0, |bits, role| bits | role.bit()),
        }
    }

    pub fn may(&self, role: Role) -> bool {
        self.roles & role.bit() != 0
    }
}

/// The configured tokens, kept as SHA-256 digests: a lookup compares the
/// presented token's digest with every entry in constant time, so neither
/// timing nor an early exit tells how close a guess came.
#[derive(Clone)]
pub struct Tokens(Vec<([u8; 32], Caller)>);

impl std::fmt::Debug for Tokens {
    // Never the digests: they would let a token be checked offline.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} entries)", self.0.len())
    }
}

/// The shortest token accepted: at least 128 bits of a random base64 or hex string.
pub const MIN_TOKEN_LEN: usize = 24;

impl Tokens {
    /// Reads `{"<token>": {"system_domain_id": "<uuid>", "roles": [...]}}`;
    /// every problem at once, never showing a token.
    pub fn parse(value: &Value) -> Result<Tokens, Vec<String>> {
        let Some(object) = value.as_object() else {
            return Err(vec![format!(
                "expected an object of tokens to {{\"system_domain_id\", \"roles\"}}, found {}",
                kind_of(value)
            )]);
        };
        let mut problems = Vec::new();
        let mut entries = Vec::with_capacity(object.len());
        for (index, (token, grant)) in object.iter().enumerate() {
            // Tokens are named by their position: never by their text.
            let place = format!("token #{}", index + 1);
            if token.len() < MIN_TOKEN_LEN {
                problems.push(format!(
                    "{place}: is {} characters long; use at least {MIN_TOKEN_LEN} random characters",
                    token.len()
                ));
            }
            if token.bytes().any(|b| !b.is_ascii_graphic()) {
                problems.push(format!(
                    "{place}: contains whitespace or a character that is not printable ASCII"
                ));
            }
            let domain = grant.get("system_domain_id").and_then(Value::as_str);
            let domain = match domain.map(uuid::Uuid::try_parse) {
                Some(Ok(id)) => Some(id.hyphenated().to_string()),
                Some(Err(_)) | None => {
                    problems.push(format!(
                        "{place}: field 'system_domain_id': expected the tenant's UUID"
                    ));
                    None
                }
            };
            let mut roles = Vec::new();
            match grant.get("roles").and_then(Value::as_array) {
                Some(names) => {
                    for name in names {
                        match name.as_str().and_then(Role::parse) {
                            Some(role) => roles.push(role),
                            None => problems.push(format!(
                                "{place}: field 'roles': unknown role {name} (expected can_read_webhooks, can_write_webhooks or can_delete_webhooks)"
                            )),
                        }
                    }
                }
                None => problems.push(format!(
                    "{place}: field 'roles': expected a list of roles (can_read_webhooks, can_write_webhooks, can_delete_webhooks)"
                )),
            }
            let unknown: Vec<&str> = grant
                .as_object()
                .map(|fields| {
                    fields
                        .keys()
                        .map(String::as_str)
                        .filter(|key| !["system_domain_id", "roles"].contains(key))
                        .collect()
                })
                .unwrap_or_default();
            if !unknown.is_empty() {
                problems.push(format!(
                    "{place}: unknown field(s) {} (known: system_domain_id, roles)",
                    unknown.join(", ")
                ));
            }
            if let Some(domain) = domain {
                entries.push((digest(token), Caller::new(&domain, &roles)));
            }
        }
        if problems.is_empty() {
            Ok(Tokens(entries))
        } else {
            Err(problems)
        }
    }

    /// The caller `presented` belongs to. Looks at every entry whatever it
    /// finds, and compares digests in constant time.
    pub fn caller(&self, presented: &str) -> Option<&Caller> {
        use subtle::{ConditionallySelectable, ConstantTimeEq};
        let presented = digest(presented);
        let mut found = 0u32;
        // Entry indices start at 1 so that 0 means "none"; a table has far
        // fewer than u32::MAX entries (it is read from a configuration).
        for (index, (expected, _)) in self.0.iter().enumerate() {
            let number = u32::try_from(index + 1).unwrap_or(u32::MAX);
            let same = presented.ct_eq(expected);
            found = u32::conditional_select(&found, &number, same);
        }
        let index = usize::try_from(found).ok()?.checked_sub(1)?;
        self.0.get(index).map(|(_, caller)| caller)
    }
}

fn digest(token: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(token.as_bytes()).into()
}

/// The request headers an auth filter in front fills in with a checked
/// identity (the shipped examples remove any copy the client sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityHeaders {
    /// Holds the tenant's UUID.
    pub system_domain_id: String,
    /// Holds the roles, separated by commas or spaces.
    pub roles: String,
}
