//! Who calls a request the filter answers itself, one check for both APIs so
//! that both treat secrets alike: the admin API takes the operator's bearer
//! token; the tenant API takes iconik's `Auth-Token`, looked up in the
//! configured tokens, or an identity that an Envoy auth filter in front
//! (`jwt_authn` with `claim_to_headers`, `ext_authz`) has checked and put in
//! request headers. Secrets are compared as fixed-length digests in constant
//! time.

use crate::config::{Caller, IdentityHeaders, Role, Tokens};

/// What an entrance accepts as credentials.
#[derive(Debug, Clone, Copy)]
pub enum Credentials<'a> {
    /// The admin API: `Authorization: Bearer <token>`.
    Operator { token: &'a str },
    /// The tenant API: a checked identity header set wins over `Auth-Token`.
    Tenant {
        tokens: Option<&'a Tokens>,
        identity: Option<&'a IdentityHeaders>,
    },
}

/// Who a request comes from, once its credentials are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// The operator, with the admin token.
    Operator,
    /// A tenant, with its domain and roles.
    Tenant(Caller),
}

/// Why a request is not let in: 401, with this reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub &'static str);

/// Checks the credentials `accepted` against the request's headers (`header`
/// reads one by its lower-case name; each is read only if needed, as each
/// read is a host call).
pub fn identify(
    accepted: Credentials<'_>,
    header: &dyn Fn(&str) -> Option<String>,
) -> Result<Identity, Refusal> {
    match accepted {
        Credentials::Operator { token } => {
            let authorization = header("authorization");
            // The scheme is case-insensitive (RFC 7235): `bearer` is as good as `Bearer`.
            let presented = authorization
                .as_deref()
                .and_then(|value| value.split_at_checked("Bearer ".len()))
                .and_then(|(scheme, rest)| scheme.eq_ignore_ascii_case("Bearer ").then_some(rest))
                .map(str::trim);
            match presented {
                Some(presented) if same_secret(presented, token) => Ok(Identity::Operator),
                Some(_) => Err(Refusal("the bearer token is not valid")),
                None => Err(Refusal(
                    "send the admin token as `Authorization: Bearer <token>`",
                )),
            }
        }
        Credentials::Tenant { tokens, identity } => {
            tenant(header, tokens, identity).map(Identity::Tenant)
        }
    }
}

fn tenant(
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
                Err(_) => Err(Refusal("the identity header does not hold a tenant UUID")),
            };
        }
    }
    let Some(tokens) = tokens else {
        return Err(Refusal("no checked identity came with the request"));
    };
    match header("auth-token") {
        None => Err(Refusal("send your token in Auth-Token")),
        Some(token) => tokens
            .caller(token.trim())
            .cloned()
            .ok_or(Refusal("the Auth-Token is not valid")),
    }
}

/// Compares secrets in time independent of their contents and lengths:
/// fixed-length digests, compared in constant time.
fn same_secret(presented: &str, expected: &str) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let presented = Sha256::digest(presented.as_bytes());
    let expected = Sha256::digest(expected.as_bytes());
    bool::from(presented.as_slice().ct_eq(expected.as_slice()))
}
