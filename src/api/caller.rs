//! Who calls the API, and for which tenant: iconik's `Auth-Token` looked up
//! in the configured tokens, or an identity that an Envoy auth filter in
//! front (`jwt_authn` with `claim_to_headers`, `ext_authz`) has checked and
//! put in request headers.

use serde_json::Value;

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
                crate::config::kind_of(value)
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

/// Why a request is not let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 401: no credentials, or ones nobody configured.
    Unauthenticated(&'static str),
}

/// Identifies the caller from its request headers (`header` reads one by
/// its lower-case name): a configured identity header set wins over
/// `Auth-Token`, which is looked up in `tokens`.
pub fn identify(
    header: &dyn Fn(&str) -> Option<String>,
    tokens: Option<&Tokens>,
    identity: Option<&IdentityHeaders>,
) -> Result<Caller, Refusal> {
    if let Some(identity) = identity {
        if let Some(domain) = header(&identity.system_domain_id) {
            return match uuid::Uuid::try_parse(domain.trim()) {
                Ok(id) => {
                    let roles: Vec<Role> = header(&identity.roles)
                        .unwrap_or_default()
                        .split([',', ' '])
                        .filter_map(Role::parse)
                        .collect();
                    Ok(Caller::new(&id.hyphenated().to_string(), &roles))
                }
                Err(_) => Err(Refusal::Unauthenticated(
                    "the identity header does not hold a tenant UUID",
                )),
            };
        }
    }
    let Some(tokens) = tokens else {
        return Err(Refusal::Unauthenticated(
            "no checked identity came with the request",
        ));
    };
    match header("auth-token") {
        None => Err(Refusal::Unauthenticated("send your token in Auth-Token")),
        Some(token) => tokens
            .caller(token.trim())
            .cloned()
            .ok_or(Refusal::Unauthenticated("the Auth-Token is not valid")),
    }
}
