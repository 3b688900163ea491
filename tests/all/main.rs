//! Every native test of the crate, as one test binary (one link instead of
//! fifteen): its public surface, and its private modules through
//! `envoy_webhooks::testing`. Private helpers are tested next to their code.

// Tests may fail loudly; the rules against panics are for the filter's code.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::as_conversions,
    clippy::cast_possible_truncation
)]

mod admin_delivery;
mod allocations;
mod api_caller;
mod api_config;
mod api_exchange;
mod api_resource;
mod api_tenants;
mod cli;
mod cluster;
mod config;
mod conformance;
mod delivery_policy;
mod egress_policy;
mod engine;
mod etcd_answers;
mod events;
mod fake_etcd;
mod fields;
mod health;
mod intake;
mod matcher;
mod module_imports;
mod operate;
mod pending;
mod query_budget;
mod query_properties;
mod retry;
mod signature;
mod url_policy;
mod view;

/// A tenant's webhook (number `n`, to `https://{host}/{n}`), as the API stores it.
pub fn tenant_webhook(
    n: usize,
    status: &str,
    host: &str,
) -> envoy_webhooks::config::WebhookDefinition {
    use envoy_webhooks::testing::resource::{apply, Fresh, Target};
    use serde_json::json;
    let fresh = Fresh {
        id: format!("{n:08x}-0000-4000-8000-000000000000"),
        secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_string(),
        now_ms: 1_765_000_000_000,
    };
    let body = json!({"event_type": "assets", "status": status,
                      "url": format!("https://{host}/{n}")});
    let target = Target::Create {
        system_domain_id: "9c2f2e2a-6b7d-11ee-8c99-0242ac120002",
        fresh: &fresh,
    };
    apply(body.to_string().as_bytes(), target, &|_| Ok(()))
        .unwrap()
        .1
}
