//! The filter's admin API: routing, authorisation and response bodies.

use serde_json::{json, Value};

use crate::config::WebhookDefinition;
use crate::health::WebhookHealth;

/// What an admin request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminRoute {
    /// Not under the admin prefix: ordinary traffic.
    NotAdmin,
    /// Missing or wrong bearer token: 401, and nothing else is revealed.
    Unauthorized,
    Status,
    Enable(String),
    NotFound,
    MethodNotAllowed {
        allow: &'static str,
    },
}

/// Routes a request. `path` may carry a query string.
pub fn route(
    prefix: &str,
    token: &str,
    method: &str,
    path: &str,
    authorization: Option<&str>,
) -> AdminRoute {
    let path = path.split(['?', '#']).next().unwrap_or("");
    let Some(rest) = path.strip_prefix(prefix) else {
        return AdminRoute::NotAdmin;
    };
    if !(rest.is_empty() || rest.starts_with('/')) {
        return AdminRoute::NotAdmin;
    }
    // The scheme is case-insensitive (RFC 7235): `bearer` is as good as `Bearer`.
    let presented = authorization
        .and_then(|value| value.split_at_checked("Bearer ".len()))
        .and_then(|(scheme, rest)| scheme.eq_ignore_ascii_case("Bearer ").then_some(rest))
        .map(str::trim);
    if !presented.is_some_and(|presented| same_secret(presented, token)) {
        return AdminRoute::Unauthorized;
    }
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        ["status"] if method == "GET" => AdminRoute::Status,
        ["status"] => AdminRoute::MethodNotAllowed { allow: "GET" },
        ["webhooks", id, "enable"] if method == "POST" => AdminRoute::Enable(id.to_string()),
        ["webhooks", _, "enable"] => AdminRoute::MethodNotAllowed { allow: "POST" },
        _ => AdminRoute::NotFound,
    }
}

/// Compares secrets in time independent of where they differ.
fn same_secret(presented: &str, expected: &str) -> bool {
    let (a, b) = (presented.as_bytes(), expected.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
    })
}

/// A JSON error body: `{"error": "..."}`.
pub fn error_body(message: &str) -> String {
    json!({ "error": message }).to_string()
}
