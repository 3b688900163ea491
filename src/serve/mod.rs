//! The requests the filter answers itself: the admin API's (the operator's)
//! and the tenant API's. One router and one check of who calls for both: the
//! path is normalised once, its prefix says which API it is for, and the
//! caller's credentials are checked before the rest of the path is looked at,
//! so that a caller without them learns nothing but 401.
//!
//! Every spelling of a path under either prefix is ours: the prefix is
//! compared after percent-escapes, `//`, `.` and `..` are resolved, without
//! regard to ASCII case, so that no spelling (`//webhooks-admin/status`,
//! `/webhooks-admin%2Fstatus`, `/Webhooks-Admin/status`) reaches the upstream
//! with a token, whatever Envoy's own path normalisation is set to.

pub mod caller;

use crate::admin::{self, AdminRoute};
use crate::api::{self, ApiRoute};
use crate::config::Caller;
use crate::plugin::Plugin;

use caller::{Credentials, Identity, Refusal};

/// Which API a path is under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entrance {
    Admin,
    Api,
}

/// A request the filter answers itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Served {
    /// From the operator.
    Admin(AdminRoute),
    /// From a tenant.
    Api(ApiRoute, Caller),
    /// Under `Entrance`'s prefix without valid credentials: 401.
    Refused(Entrance, Refusal),
}

impl Served {
    /// The answer needs the request's body (read whole first).
    pub fn needs_body(&self) -> bool {
        match self {
            Served::Admin(route) => route.needs_body(),
            Served::Api(ApiRoute::Operation(operation), _) => operation.needs_body(),
            _ => false,
        }
    }
}

/// Routes a request (`path` may carry a query string): `None` for ordinary
/// traffic. `header` reads a request header by its lower-case name; it is
/// called only for a path under a prefix.
pub fn route(
    plugin: &Plugin,
    method: &str,
    path: &str,
    header: &dyn Fn(&str) -> Option<String>,
) -> Option<Served> {
    let path = path.split(['?', '#']).next().unwrap_or("");
    if !path.starts_with('/') {
        // Not origin-form (Envoy refuses such requests anyway).
        return None;
    }
    let path = normalize_path(path);
    let (entrance, rest, accepted) = entrance(plugin, &path)?;
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    Some(match caller::identify(accepted, header) {
        Err(refusal) => Served::Refused(entrance, refusal),
        Ok(Identity::Operator) => Served::Admin(admin::route(method, &segments)),
        Ok(Identity::Tenant(caller)) => Served::Api(api::route(method, &segments), caller),
    })
}

/// Whether `path` (which may carry a query string) is under the admin
/// API's or the API's prefix: [`route`] answers it.
pub fn serves_path(plugin: &Plugin, path: &str) -> bool {
    let path = path.split(['?', '#']).next().unwrap_or("");
    path.starts_with('/') && entrance(plugin, &normalize_path(path)).is_some()
}

/// The API `path` is under, the rest of the path, and what that API accepts
/// as credentials.
fn entrance<'p>(plugin: &'p Plugin, path: &'p str) -> Option<(Entrance, &'p str, Credentials<'p>)> {
    if let (Some(admin), Some(token)) = (&plugin.config.admin, &plugin.admin_token) {
        if let Some(rest) = under(path, &admin.path_prefix) {
            return Some((Entrance::Admin, rest, Credentials::Operator { token }));
        }
    }
    let api = plugin.config.api.as_ref()?;
    let rest = under(path, &api.path_prefix)?;
    let accepted = Credentials::Tenant {
        tokens: plugin.api_tokens.as_deref(),
        identity: api.identity_headers.as_ref(),
    };
    Some((Entrance::Api, rest, accepted))
}

/// What follows `prefix` in the normalised `path`, if the path is the prefix
/// or below it (ASCII case ignored).
fn under<'p>(path: &'p str, prefix: &str) -> Option<&'p str> {
    let prefix = prefix.trim_end_matches('/');
    let rest = match path.get(..prefix.len()) {
        Some(head) if head.eq_ignore_ascii_case(prefix) => path.get(prefix.len()..)?,
        _ => return None,
    };
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

/// `path` with percent-escapes decoded (bytes that are not UTF-8 become
/// U+FFFD), empty and `.` segments dropped and `..` resolved; always starts
/// with `/` when non-empty.
pub fn normalize_path(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        let escaped = (byte == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(value) => {
                decoded.push(value);
                i += 3;
            }
            None => {
                decoded.push(byte);
                i += 1;
            }
        }
    }
    let decoded = String::from_utf8_lossy(&decoded);
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split(['/', '\\']) {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    if segments.is_empty() {
        return if path.is_empty() {
            String::new()
        } else {
            "/".to_string()
        };
    }
    let mut normalized = String::with_capacity(decoded.len());
    for segment in segments {
        normalized.push('/');
        normalized.push_str(segment);
    }
    normalized
}
