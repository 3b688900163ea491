//! Who calls the API, and for which tenant: iconik's `Auth-Token` looked up
//! in the configured tokens, or an identity that an Envoy auth filter in
//! front (`jwt_authn` with `claim_to_headers`, `ext_authz`) has checked and
//! put in request headers.

use crate::config::{Caller, IdentityHeaders, Role, Tokens};

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
