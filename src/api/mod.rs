//! iconik's webhook API, per tenant (Notifications OpenAPI 2.0.0): which
//! path asks for what (`route`; who calls is `crate::serve`'s), what a
//! request may say (`resource`), how a request becomes etcd reads and writes
//! (`exchange`), and how every worker follows the tenants' webhooks
//! (`tenants`).

pub mod exchange;
pub mod resource;
pub mod tenants;

use exchange::Operation;

/// What a tenant's request asks of the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiRoute {
    Operation(Operation),
    NotFound,
    MethodNotAllowed { allow: &'static str },
}

/// Routes an API request from a tenant: `segments` are the normalised
/// path's below `api.path_prefix` (`crate::serve` has checked the caller).
pub fn route(method: &str, segments: &[&str]) -> ApiRoute {
    let id = |id: &str| id.to_ascii_lowercase();
    match (segments, method) {
        (["v1", "webhooks"], "GET") => ApiRoute::Operation(Operation::List),
        (["v1", "webhooks"], "POST") => ApiRoute::Operation(Operation::Create),
        (["v1", "webhooks"], _) => ApiRoute::MethodNotAllowed { allow: "GET, POST" },
        (["v1", "webhooks", w], "GET") => ApiRoute::Operation(Operation::Get(id(w))),
        (["v1", "webhooks", w], "PUT") => ApiRoute::Operation(Operation::Change(id(w))),
        (["v1", "webhooks", w], "DELETE") => ApiRoute::Operation(Operation::Delete(id(w))),
        (["v1", "webhooks", _], _) => ApiRoute::MethodNotAllowed {
            allow: "GET, PUT, DELETE",
        },
        (["v1", "webhooks", w, "secret"], "GET") => ApiRoute::Operation(Operation::Secret(id(w))),
        (["v1", "webhooks", _, "secret"], _) => ApiRoute::MethodNotAllowed { allow: "GET" },
        (["v1", "webhooks", w, "secret", "rotate"], "POST") => {
            ApiRoute::Operation(Operation::Rotate(id(w)))
        }
        (["v1", "webhooks", _, "secret", "rotate"], _) => {
            ApiRoute::MethodNotAllowed { allow: "POST" }
        }
        _ => ApiRoute::NotFound,
    }
}

/// Whether a tenant may give `url`: the URL policy (`api.urls`), and a
/// cluster in `api.clusters` (or `delivery.clusters`) for its scheme.
pub fn check_url(config: &crate::config::PluginConfig, url: &str) -> Result<(), String> {
    let api = config.api.as_ref().ok_or("the API is not configured")?;
    let parsed = api.urls.check(url)?;
    let clusters = crate::config::tenant_clusters(api, &config.delivery);
    let cluster = if parsed.https {
        clusters.and_then(|c| c.https.as_ref())
    } else {
        clusters.and_then(|c| c.http.as_ref())
    };
    match cluster {
        Some(_) => Ok(()),
        None => Err(format!(
            "this platform calls {} URLs only",
            if parsed.https { "http://" } else { "https://" }
        )),
    }
}

impl Operation {
    /// The answer needs the request's body (read whole first).
    pub fn needs_body(&self) -> bool {
        matches!(self, Operation::Create | Operation::Change(_))
    }
}
