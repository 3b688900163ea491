//! Configuration and records of the delivery policy: retries, signing
//! secrets, dead letters, `410 Gone` and the pending view of the admin API.

use envoy_webhooks::config::{PluginConfig, SecretSource};
use envoy_webhooks::status::Status;
use envoy_webhooks::testing::admin::pending_body;
use envoy_webhooks::testing::dead_letter::{record, FailedDelivery, Reason};
use envoy_webhooks::testing::health::WebhookHealth;
use envoy_webhooks::testing::queue::PendingSummary;
use envoy_webhooks::testing::store;
use serde_json::{json, Value};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn problems(config: Value) -> Vec<String> {
    match PluginConfig::from_value(&config) {
        Ok(_) => Vec::new(),
        Err(e) => e.problems.iter().map(|p| p.to_string()).collect(),
    }
}

fn hook(extra: Value) -> Value {
    let mut hook = json!({"id": "h", "event_type": "assets", "url": "http://r/x"});
    if let (Some(h), Some(e)) = (hook.as_object_mut(), extra.as_object()) {
        h.extend(e.clone());
    }
    hook
}

#[test]
fn secrets_are_read_and_checked_without_being_echoed() {
    let config = PluginConfig::from_value(&json!({"webhooks": [hook(json!({"secret": SECRET}))]}))
        .expect("valid");
    assert!(matches!(&config.webhooks[0].signing, Some(SecretSource::Secrets(s)) if s.len() == 1));

    let config = PluginConfig::from_value(
        &json!({"webhooks": [hook(json!({"secret_env": "HOOK_SECRETS"}))]}),
    )
    .expect("valid");
    assert_eq!(
        config.webhooks[0].signing,
        Some(SecretSource::Env("HOOK_SECRETS".into()))
    );

    let found = problems(json!({"webhooks": [hook(json!({"secret": "whsec_%%%secretstuff"}))]}));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("field 'secret'") && !found[0].contains("secretstuff"),
        "{found:?}"
    );

    let found = problems(json!({"webhooks": [hook(json!({"secret": SECRET, "secret_env": "X"}))]}));
    assert!(
        found[0].contains("either secret or secret_env"),
        "{found:?}"
    );
    assert!(!found.concat().contains("MfKQ9r8"));

    let found =
        problems(json!({"webhooks": [hook(json!({"headers": {"Webhook-Signature": "v1,x"}}))]}));
    assert!(found[0].contains("set by the filter"), "{found:?}");
}

#[test]
fn retry_settings_and_bounds() {
    let config = PluginConfig::from_value(&json!({"webhooks": [],
        "delivery": {"retry_schedule_s": [], "max_pending": 3, "max_pending_bytes": 4096}}))
    .expect("valid");
    assert!(config.delivery.retry_schedule_s.is_empty());
    assert_eq!(config.delivery.max_pending, 3);
    assert_eq!(config.delivery.max_pending_bytes, 4096);
    for bad in [
        json!("5,30"),
        json!([5, -1]),
        json!([1.5]),
        json!(vec![1; 33]),
        json!([700000]),
    ] {
        let found = problems(json!({"webhooks": [], "delivery": {"retry_schedule_s": bad}}));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("retry_schedule_s"), "{found:?}");
    }
    let found =
        problems(json!({"webhooks": [], "delivery": {"max_pending": 0, "max_pending_bytes": 10}}));
    assert_eq!(found.len(), 2, "{found:?}");
}

#[test]
fn dead_letter_destination() {
    let config = PluginConfig::from_value(&json!({"webhooks": [],
        "dead_letter": {"url": "http://dlq:9000/dead?x=1", "headers": {"Auth": "t"}}}))
    .expect("valid");
    let dead_letter = config.dead_letter.expect("configured");
    assert_eq!(dead_letter.cluster, "dlq");
    assert_eq!(dead_letter.url.path, "/dead?x=1");
    assert_eq!(dead_letter.headers, [("auth".to_string(), "t".to_string())]);

    let found = problems(json!({"webhooks": [], "dead_letter": {"cluster": "", "urll": "x"}}));
    let text = found.join("\n");
    for expected in [
        "dead_letter: field 'url': is required",
        "field 'cluster'",
        "field 'urll': unknown field",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in {text}");
    }
}

#[test]
fn the_dead_letter_record_carries_the_event_and_its_history() {
    let event = br#"{"event_type":"assets","request_id":"r-1","data":{"n":1}}"#;
    let bytes = record(&FailedDelivery {
        webhook_id: "hook",
        message_id: "msg_1",
        request_id: Some("r-1"),
        event,
        attempts: 4,
        last_error: Some("HTTP 503"),
        first_attempt_at_ms: 1_700_000_000_999,
        reason: Reason::RetriesExhausted,
    });
    let value: Value = serde_json::from_slice(&bytes).expect("JSON");
    assert_eq!(
        value,
        json!({"webhook_id": "hook", "event": {"event_type":"assets","request_id":"r-1","data":{"n":1}},
               "attempts": 4, "last_error": "HTTP 503", "first_attempt_at": 1_700_000_000u64,
               "reason": "retries_exhausted", "message_id": "msg_1", "request_id": "r-1"})
    );
    for (reason, text) in [
        (Reason::Gone, "gone"),
        (Reason::PendingLimit, "pending_limit"),
        (Reason::WebhookFailed, "webhook_failed"),
    ] {
        assert_eq!(reason.as_str(), text);
    }
}

#[test]
fn the_dead_letter_record_keeps_the_events_exact_text() {
    let event =
        br#"{"b": 123456789012345678901234567890, "a": -0, "c": 1E2, "a": "dup", "s": "\u00e9"}"#;
    let bytes = record(&FailedDelivery {
        webhook_id: "hook",
        message_id: "msg_1",
        request_id: None,
        event,
        attempts: 1,
        last_error: None,
        first_attempt_at_ms: 0,
        reason: Reason::Gone,
    });
    let text = String::from_utf8(bytes).expect("UTF-8");
    let inner = std::str::from_utf8(event).expect("UTF-8");
    assert!(
        text.contains(&format!("\"event\":{inner},")),
        "event not carried byte for byte: {text}"
    );
    let value: Value = serde_json::from_str(&text).expect("the record is JSON");
    assert_eq!(value["reason"], "gone");
}

#[test]
fn gone_fails_the_webhook_at_once() {
    let config = PluginConfig::from_value(&json!({"webhooks": [hook(json!({}))]})).expect("valid");
    let mut health = WebhookHealth::initial(&config.webhooks[0], 100);
    let transition = health.record_gone(200).expect("a transition");
    assert_eq!(
        (transition.from, transition.to),
        (Status::Enabled, Status::Failed)
    );
    assert!(transition.reason.contains("410"));
    assert_eq!(health.last_error.as_deref(), Some("HTTP 410"));
    assert_eq!(health.failed, 1);
    assert_eq!(health.record_gone(300), None, "already FAILED");
}

#[test]
fn pending_view_adds_up_fresh_worker_summaries() {
    let config = PluginConfig::from_value(&json!({"webhooks": [
        hook(json!({"id": "a"})), hook(json!({"id": "b"}))]}))
    .expect("valid");
    let now = 1_700_000_100_000;
    let worker = |at: u64, a: usize, due: u64| {
        store::pending_record(
            at,
            [(
                "a".to_string(),
                PendingSummary {
                    deliveries: a,
                    dead_letters: 1,
                    next_due_ms: Some(due),
                },
            )],
        )
    };
    let published = [
        worker(now - 1_000, 3, now + 5_000),
        worker(now - 2_000, 4, now + 2_000),
        worker(now - 60_000, 100, now), // a VM that is gone
    ];
    let body: Value =
        serde_json::from_str(&pending_body(&config.webhooks, &published, now)).expect("JSON");
    assert_eq!(
        body,
        json!({"workers_with_backlog": 2, "webhooks": [
            {"id": "a", "pending": 7, "dead_letters_pending": 2, "next_due_at": (now + 2_000) / 1000},
            {"id": "b", "pending": 0, "dead_letters_pending": 0, "next_due_at": null}]})
    );
}
