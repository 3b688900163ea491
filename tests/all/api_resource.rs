//! A tenant's webhook in iconik's shape: what a request may say (every
//! problem at once, by field), what a change keeps, and what answers show.

use envoy_webhooks::status::Status;
use envoy_webhooks::testing::health::WebhookHealth;
use envoy_webhooks::testing::resource::{
    apply, definition_of, render, rfc3339_ms, FieldErrors, Fresh, Requested, StoredWebhook, Target,
};
use serde_json::{json, Value};

const DOMAIN: &str = "9c2f2e2a-6b7d-11ee-8c99-0242ac120002";
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn fresh() -> Fresh {
    Fresh {
        id: "0d3a7f52-1c5b-4f7e-9a41-7f3c2d1e0b9a".to_string(),
        secret: SECRET.to_string(),
        now_ms: 1_765_000_000_123,
    }
}

/// Refuses `http://` and anything with "internal" in it, like the real policy would.
fn policy(url: &str) -> Result<(), String> {
    if !url.starts_with("https://") {
        return Err("must be an https:// URL".to_string());
    }
    if url.contains("internal") {
        return Err("points inside the platform".to_string());
    }
    Ok(())
}

fn create(body: Value) -> Result<StoredWebhook, FieldErrors> {
    let fresh = fresh();
    apply(
        body.to_string().as_bytes(),
        Target::Create {
            system_domain_id: DOMAIN,
            fresh: &fresh,
        },
        &policy,
    )
    .map(|(webhook, _)| webhook)
}

fn change(current: &StoredWebhook, body: Value) -> Result<StoredWebhook, FieldErrors> {
    apply(
        body.to_string().as_bytes(),
        Target::Change {
            current,
            now_ms: current.date_modified_ms + 5_000,
        },
        &policy,
    )
    .map(|(webhook, _)| webhook)
}

fn errors(result: Result<StoredWebhook, FieldErrors>) -> Value {
    result.expect_err("the request should be refused").body()["errors"].clone()
}

fn minimal() -> Value {
    json!({"event_type": "assets", "url": "https://hooks.example.com/a", "status": "ENABLED"})
}

#[test]
fn a_create_makes_a_webhook_of_the_callers_domain_signed_with_its_own_secret() {
    let fresh = fresh();
    let (webhook, definition) = apply(
        json!({
            "name": "Archive", "event_type": "Assets", "realm": "entity", "operation": "update",
            "url": "https://hooks.example.com/a?x=1", "status": "ENABLED",
            "query": "data.status=\"ACTIVE\"", "headers": {"X-Customer": "42"},
            "object_id": "D7A5A7E8-4247-11EE-B3D8-A683E79FFFAF"
        })
        .to_string()
        .as_bytes(),
        Target::Create {
            system_domain_id: DOMAIN,
            fresh: &fresh,
        },
        &policy,
    )
    .unwrap();
    assert_eq!(webhook.id, fresh.id);
    assert_eq!(webhook.system_domain_id, DOMAIN);
    assert_eq!(webhook.status, Requested::Enabled);
    assert_eq!(webhook.date_created_ms, fresh.now_ms);
    assert_eq!(webhook.secrets.len(), 1);
    assert_eq!(webhook.secrets[0].secret, SECRET);
    // Object ids are read as UUIDs and kept in their canonical spelling.
    assert_eq!(
        webhook.object_id.as_deref(),
        Some("d7a5a7e8-4247-11ee-b3d8-a683e79fffaf")
    );
    assert_eq!(definition.id, fresh.id);
    assert_eq!(definition.system_domain_id.as_deref(), Some(DOMAIN));
    assert_eq!(definition.event_type, "assets");
    assert_eq!(definition.realm.as_deref(), Some("entity"));
    assert_eq!(definition.url.path, "/a?x=1");
    assert_eq!(
        definition.headers,
        vec![("x-customer".to_string(), "42".to_string())]
    );
    assert!(
        definition.signing.is_some(),
        "signed with the webhook's secret"
    );
}

#[test]
fn every_problem_is_reported_at_once_by_field() {
    let errors = errors(create(json!({
        "event_type": 5,
        "url": "http://hooks.example.com/",
        "operation": "explode",
        "query": "data.x ==",
        "headers": {"Host": "evil", "x-ok": "1"},
        "object_id": "not-a-uuid",
        "status": "DELETED",
        "colour": "blue",
        "name": "n".repeat(257),
    })));
    let fields: Vec<&str> = errors
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        fields,
        [
            "colour",
            "event_type",
            "headers",
            "name",
            "object_id",
            "operation",
            "query",
            "status",
            "url"
        ]
    );
    for (field, words) in [
        ("colour", "unknown field"),
        ("event_type", "expected a string or null, found a number"),
        ("headers", "host"),
        ("name", "257 characters long; the limit is 256"),
        ("object_id", "is not a UUID"),
        ("operation", "unknown operation \"explode\""),
        ("status", "send DELETE"),
        ("url", "https://"),
    ] {
        let message = errors[field].as_str().unwrap();
        assert!(
            message.to_lowercase().contains(&words.to_lowercase()),
            "{field}: {message}"
        );
    }
}

#[test]
fn required_fields_and_bad_bodies_are_named() {
    let missing = errors(create(json!({"status": "ENABLED"})));
    assert!(missing["event_type"]
        .as_str()
        .unwrap()
        .contains("is required"));
    assert!(missing["url"].as_str().unwrap().contains("is required"));
    let not_json = FieldErrors::body(&create_raw(b"{\"event_type\":").unwrap_err());
    assert!(not_json["errors"]["body"]
        .as_str()
        .unwrap()
        .contains("not valid JSON"));
    let list = FieldErrors::body(&create_raw(b"[]").unwrap_err());
    assert_eq!(
        list["errors"]["body"],
        "expected a JSON object, found a list"
    );
    assert!(errors(create(
        json!({"event_type": "assets", "url": "https://internal.example/", "status": "FAILING"})
    ))["status"]
        .as_str()
        .unwrap()
        .contains("cannot be FAILING"));
}

fn create_raw(body: &[u8]) -> Result<StoredWebhook, FieldErrors> {
    let fresh = fresh();
    apply(
        body,
        Target::Create {
            system_domain_id: DOMAIN,
            fresh: &fresh,
        },
        &policy,
    )
    .map(|(webhook, _)| webhook)
}

#[test]
fn header_values_are_never_echoed_in_errors() {
    let errors = errors(create(json!({
        "event_type": "assets", "url": "https://hooks.example.com/", "status": "ENABLED",
        "headers": {"Authorization": "Bearer sekrit\r\nX-Injected: 1"}
    })));
    let message = errors["headers"].as_str().unwrap();
    assert!(message.contains("line break"), "{message}");
    assert!(!message.contains("sekrit"), "{message}");
}

#[test]
fn bounds_are_refused_with_the_limit() {
    let too_many: serde_json::Map<String, Value> = (0..33)
        .map(|i| (format!("x-h{i}"), Value::from("v")))
        .collect();
    let mut body = minimal();
    body["headers"] = Value::Object(too_many);
    body["query"] = Value::from(format!("data.a=\"{}\"", "x".repeat(4096)));
    body["description"] = Value::from("d".repeat(4097));
    body["url"] = Value::from(format!("https://hooks.example.com/{}", "p".repeat(2048)));
    let errors = errors(create(body));
    assert!(errors["headers"]
        .as_str()
        .unwrap()
        .contains("the limit is 32"));
    assert!(errors["query"]
        .as_str()
        .unwrap()
        .contains("the limit is 4096"));
    assert!(errors["description"]
        .as_str()
        .unwrap()
        .contains("the limit is 4096"));
    assert!(errors["url"]
        .as_str()
        .unwrap()
        .contains("the limit is 2048"));
}

#[test]
fn a_refused_change_changes_nothing_and_a_change_keeps_what_it_does_not_touch() {
    let current = create(json!({
        "name": "Archive", "description": "d", "event_type": "assets", "realm": "entity",
        "url": "https://hooks.example.com/a", "status": "ENABLED", "query": "data.a=1",
        "headers": {"x-a": "1"}
    }))
    .unwrap();
    let renamed = change(&current, json!({"name": "Archive 2"})).unwrap();
    assert_eq!(renamed.name.as_deref(), Some("Archive 2"));
    assert_eq!(renamed.description, current.description);
    assert_eq!(renamed.query, current.query);
    assert_eq!(renamed.headers, current.headers);
    assert_eq!(renamed.secrets, current.secrets);
    assert_eq!(renamed.date_created_ms, current.date_created_ms);
    assert_eq!(renamed.date_modified_ms, current.date_modified_ms + 5_000);
    // null clears an optional field.
    let cleared = change(&current, json!({"realm": null, "headers": null})).unwrap();
    assert_eq!(cleared.realm, None);
    assert!(cleared.headers.is_empty());
    // Sent back as read (read-only fields and FAILING included): no change.
    let read = render(&current, None);
    let mut as_read = read.clone();
    as_read["status"] = Value::from("FAILING");
    let round_trip = change(&current, as_read).unwrap();
    assert_eq!(
        StoredWebhook {
            date_modified_ms: current.date_modified_ms,
            ..round_trip
        },
        current
    );
    // One bad field refuses the whole change.
    assert!(change(
        &current,
        json!({"name": "ok", "url": "https://internal.corp/"})
    )
    .is_err());
    assert!(change(&current, json!({"event_type": null})).is_err());
}

#[test]
fn a_stricter_url_policy_does_not_lock_a_webhook_made_before_it() {
    let mut current = create(minimal()).unwrap();
    current.url = "https://internal.example/old".to_string();
    let renamed = change(
        &current,
        json!({"name": "kept", "url": "https://internal.example/old"}),
    )
    .unwrap();
    assert_eq!(renamed.url, current.url);
    assert!(errors(change(
        &current,
        json!({"url": "https://internal.example/new"})
    ))["url"]
        .as_str()
        .unwrap()
        .contains("inside"));
}

#[test]
fn a_new_url_headers_or_secret_starts_a_clean_health_record_a_new_name_or_filter_does_not() {
    let current = create(minimal()).unwrap();
    let print = |webhook: &StoredWebhook| definition_of(webhook, 0).unwrap().fingerprint;
    let same = |body: Value| print(&change(&current, body).unwrap()) == print(&current);
    assert!(same(json!({"name": "x", "description": "y"})));
    assert!(same(
        json!({"query": "data.a=1", "realm": "entity", "operation": "update"})
    ));
    assert!(same(json!({"status": "DISABLED"})));
    assert!(!same(json!({"url": "https://hooks.example.com/b"})));
    assert!(!same(json!({"headers": {"x-a": "2"}})));
    let mut rotated = current.clone();
    rotated.secrets[0].expires_at_ms = Some(1);
    rotated
        .secrets
        .push(envoy_webhooks::testing::resource::StoredSecret {
            secret: "whsec_dGhpcyBpcyBhIG5ldyBzZWNyZXQgb2YgMzI=".to_string(),
            expires_at_ms: None,
        });
    assert_ne!(print(&rotated), print(&current));
}

#[test]
fn expired_secrets_no_longer_sign() {
    let mut webhook = create(minimal()).unwrap();
    webhook.secrets[0].expires_at_ms = Some(2_000);
    webhook
        .secrets
        .push(envoy_webhooks::testing::resource::StoredSecret {
            secret: "whsec_dGhpcyBpcyBhIG5ldyBzZWNyZXQgb2YgMzI=".to_string(),
            expires_at_ms: None,
        });
    let signing = |now_ms| match definition_of(&webhook, now_ms).unwrap().signing {
        Some(envoy_webhooks::config::SecretSource::Secrets(list)) => list.len(),
        other => panic!("{other:?}"),
    };
    assert_eq!(signing(1_999), 2, "both sign while the old one is valid");
    assert_eq!(signing(2_000), 1);
}

fn health(status: Status) -> WebhookHealth {
    WebhookHealth {
        fingerprint: 1,
        status,
        consecutive_failures: 7,
        first_failed_at: Some(1_765_000_000),
        last_error: Some("HTTP 500 from the receiver".to_string()),
        delivered: 3,
        failed: 9,
        epoch: 0,
        paused_at_ms: None,
    }
}

#[test]
fn answers_show_iconiks_status_the_counts_and_never_the_secret() {
    let webhook = create(minimal()).unwrap();
    let shown = |health: Option<WebhookHealth>| render(&webhook, health.as_ref());
    let fresh = shown(None);
    assert_eq!(fresh["status"], "ENABLED");
    assert_eq!(fresh["last_error"], Value::Null);
    assert_eq!(fresh["date_created"], "2025-12-06T05:46:40.123Z");
    assert!(!fresh.to_string().contains("whsec_"), "{fresh}");
    // Still called while failing: ENABLED, with the error.
    let failing = shown(Some(health(Status::Failing)));
    assert_eq!(failing["status"], "ENABLED");
    assert_eq!(failing["last_error"], "HTTP 500 from the receiver");
    assert_eq!(failing["first_failed_at"], "2025-12-06T05:46:40.000Z");
    assert_eq!(failing["delivery"]["status"], "FAILING");
    assert_eq!(failing["delivery"]["failed"], 9);
    // No longer called: iconik's FAILING.
    let failed = shown(Some(health(Status::Failed)));
    assert_eq!(failed["status"], "FAILING");
    assert_eq!(failed["delivery"]["status"], "FAILED");
    assert_eq!(failed["last_error"], "HTTP 500 from the receiver");
    let mut disabled = webhook.clone();
    disabled.status = Requested::Disabled;
    assert_eq!(
        render(&disabled, Some(&health(Status::Failed)))["status"],
        "DISABLED"
    );
    // Every field iconik's clients read is there, of the type they expect.
    for field in [
        "id",
        "name",
        "description",
        "event_type",
        "realm",
        "operation",
        "object_id",
        "url",
        "status",
        "query",
        "headers",
        "last_error",
        "first_failed_at",
        "date_created",
        "date_modified",
    ] {
        assert!(fresh.get(field).is_some(), "{field} missing: {fresh}");
    }
}

#[test]
fn the_record_kept_in_etcd_reads_back_the_same() {
    let webhook = create(json!({
        "name": "n", "event_type": "assets", "url": "https://hooks.example.com/", "status": "DISABLED",
        "headers": {"x-a": "1"}, "query": "data.a=1"
    }))
    .unwrap();
    let text = serde_json::to_string(&webhook).unwrap();
    let back: StoredWebhook = serde_json::from_str(&text).unwrap();
    assert_eq!(back, webhook);
    assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
}
