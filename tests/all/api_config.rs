//! The `api` section: defaults, and every problem at once (never showing a token).

use envoy_webhooks::config::{ApiConfig, TokenSource};
use serde_json::json;

const A: &str = "9c2f2e2a-6b7d-11ee-8c99-0242ac120002";
const TOKEN: &str = "tok-a-6v3Qx9Lk2Jm8Np4Rs7Tw";

fn problems(value: serde_json::Value) -> String {
    ApiConfig::from_value(&value).unwrap_err().to_string()
}

#[test]
fn defaults_are_iconiks_path_https_only_and_the_documented_bounds() {
    let config = ApiConfig::from_value(&json!({
        "tokens": {TOKEN: {"system_domain_id": A, "roles": ["can_read_webhooks"]}}
    }))
    .unwrap();
    assert_eq!(config.path_prefix, "/API/notifications/");
    assert_eq!(config.max_webhooks_per_domain, 100);
    assert_eq!(config.max_webhooks, 10_000);
    assert_eq!(config.max_body_bytes, 65_536);
    assert!(matches!(config.tokens, Some(TokenSource::Tokens(_))));
    assert!(config.urls.check("https://hooks.example.com/").is_ok());
    assert!(config.urls.check("http://hooks.example.com/").is_err());
    assert!(config.urls.check("https://db.svc/").is_err());
    let from_env = ApiConfig::from_value(&json!({"tokens_env": "API_TOKENS"})).unwrap();
    assert!(matches!(from_env.tokens, Some(TokenSource::Env(name)) if name == "API_TOKENS"));
}

#[test]
fn urls_settings_replace_the_defaults() {
    let config = ApiConfig::from_value(&json!({
        "identity_headers": {"system_domain_id": "X-Tenant", "roles": "x-roles"},
        "urls": {"allow_http": true, "allow": ["10.1.2.3:8443", "hooks.corp.example"],
                 "internal_suffixes": [".corp.example", ".Lan"]}
    }))
    .unwrap();
    let identity = config.identity_headers.unwrap();
    assert_eq!(
        (identity.system_domain_id.as_str(), identity.roles.as_str()),
        ("x-tenant", "x-roles")
    );
    let urls = &config.urls;
    assert!(urls.check("http://hooks.example.com/").is_ok());
    assert!(urls.check("https://10.1.2.3:8443/").is_ok());
    assert!(urls.check("https://10.1.2.3:8444/").is_err());
    assert!(
        urls.check("https://hooks.corp.example/").is_ok(),
        "allowed by name"
    );
    assert!(urls.check("https://other.corp.example/").is_err());
    assert!(urls.check("https://printer.lan/").is_err());
    assert!(
        urls.check("https://db.svc/").is_ok(),
        "the list replaced the default"
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = problems(json!({
        "path_prefix": "API",
        "tokens": {"short": {"system_domain_id": A, "roles": []}},
        "tokens_env": "X",
        "identity_headers": {"system_domain_id": "auth-token", "roles": 3},
        "urls": {"allow": ["10.0.0.0/33"], "internal_suffixes": ["lan"], "allow_http": "yes", "deny": []},
        "max_webhooks_per_domain": 500,
        "max_webhooks": 200,
        "max_body_bytes": 10,
        "colour": 1
    }));
    for words in [
        "field 'path_prefix'",
        "set either tokens or tokens_env",
        "field 'identity_headers'",
        "field 'urls.allow': \"10.0.0.0/33\"",
        "field 'urls.internal_suffixes'",
        "field 'urls.allow_http': expected true or false",
        "field 'urls.deny': unknown field",
        "is 500, more than max_webhooks (200)",
        "field 'max_body_bytes': expected a whole number from 1024",
        "field 'colour': unknown field",
    ] {
        assert!(text.contains(words), "{words:?} not in:\n{text}");
    }
    let no_callers = problems(json!({}));
    assert!(no_callers.contains("the API needs callers"), "{no_callers}");
    let tokens = problems(json!({"tokens": {"short": {"system_domain_id": A, "roles": []}}}));
    assert!(
        tokens.contains("token #1: is 5 characters long"),
        "{tokens}"
    );
    assert!(!tokens.contains("short"), "{tokens}");
}

/// `api.clusters` sends tenants' calls through the egress listeners while
/// the operator's own webhooks keep `delivery.clusters`.
#[test]
fn api_clusters_take_the_tenants_calls_only() {
    use envoy_webhooks::config::PluginConfig;
    use envoy_webhooks::testing::api::check_url;
    use envoy_webhooks::testing::plugin::Plugin;
    let config = json!({
        "webhooks": [{"id": "operators", "event_type": "assets", "url": "https://ops.example.com/"}],
        "api": {"tokens": {}, "clusters": {"https": "webhooks_egress_https"}},
        "cluster_state": {"etcd": {"cluster": "etcd", "authority": "etcd:2379"}},
        "delivery": {"clusters": {"https": "direct_https", "http": "direct_http"}}
    });
    let parsed = PluginConfig::from_value(&config).unwrap();
    // No http cluster of the API's own: http:// is not allowed anyway.
    assert!(check_url(&parsed, "https://hooks.example.com/").is_ok());
    let plugin = Plugin::load(config.to_string().as_bytes(), |_| None).unwrap();
    let with = plugin.with_tenants(vec![crate::tenant_webhook(
        1,
        "ENABLED",
        "hooks.example.com",
    )]);
    let clusters: Vec<&str> = with
        .definitions()
        .iter()
        .map(|d| d.cluster.as_str())
        .collect();
    assert_eq!(clusters, ["direct_https", "webhooks_egress_https"]);
    assert!(parsed.notes().is_empty(), "{:?}", parsed.notes());
    // Without api.clusters the configuration is valid, and says what it means.
    let direct = PluginConfig::from_value(&json!({
        "api": {"tokens": {}},
        "cluster_state": {"etcd": {"cluster": "etcd", "authority": "etcd:2379"}},
        "delivery": {"clusters": {"https": "direct_https"}}
    }))
    .unwrap();
    let notes = direct.notes();
    assert_eq!(notes.len(), 1);
    assert!(
        notes[0].contains("nothing checks the address Envoy connects to"),
        "{notes:?}"
    );
    // A typo in api.clusters is an error, as in delivery.clusters.
    let problems = PluginConfig::from_value(&json!({
        "api": {"tokens": {}, "clusters": {"htps": "egress"}},
        "cluster_state": {"etcd": {"cluster": "etcd", "authority": "etcd:2379"}},
        "delivery": {"clusters": {"https": "egress"}}
    }))
    .unwrap_err()
    .to_string();
    assert!(
        problems.contains("\"htps\" is not a URL scheme"),
        "{problems}"
    );
}

#[test]
fn a_tenant_url_needs_a_cluster_for_its_scheme() {
    use envoy_webhooks::config::PluginConfig;
    use envoy_webhooks::testing::api::check_url;
    let etcd = json!({"etcd": {"cluster": "etcd", "authority": "etcd:2379"}});
    let api = json!({"tokens": {}, "urls": {"allow_http": true}});
    let http_only = PluginConfig::from_value(&json!({
        "api": api, "cluster_state": etcd, "delivery": {"clusters": {"http": "egress"}}
    }))
    .unwrap();
    assert!(check_url(&http_only, "http://hooks.example.com/").is_ok());
    let refused = check_url(&http_only, "https://hooks.example.com/").unwrap_err();
    assert!(refused.contains("calls http:// URLs only"), "{refused}");
    // https is needed unless http is allowed, and http needs its cluster.
    let problems = PluginConfig::from_value(&json!({
        "api": {"tokens": {}}, "cluster_state": etcd, "delivery": {"clusters": {"http": "egress"}}
    }))
    .unwrap_err()
    .to_string();
    assert!(
        problems.contains("needs clusters.https (or delivery.clusters.https)"),
        "{problems}"
    );
    let problems = PluginConfig::from_value(&json!({
        "api": api, "cluster_state": etcd, "delivery": {"clusters": {"https": "egress"}}
    }))
    .unwrap_err()
    .to_string();
    assert!(
        problems.contains("allow_http needs clusters.http (or delivery.clusters.http)"),
        "{problems}"
    );
    let problems = PluginConfig::from_value(&json!({"api": {"tokens": {}}}))
        .unwrap_err()
        .to_string();
    assert!(problems.contains("needs cluster_state.etcd"), "{problems}");
    let problems = PluginConfig::from_value(&json!({
        "api": {"tokens": {}, "path_prefix": "/webhooks-admin/api/"}, "cluster_state": etcd,
        "delivery": {"clusters": {"https": "egress"}},
        "admin": {"path_prefix": "/webhooks-admin", "token": "t0ken"}
    }))
    .unwrap_err()
    .to_string();
    assert!(
        problems.contains("overlaps admin.path_prefix"),
        "{problems}"
    );
}
