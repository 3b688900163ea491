//! The webhook status machine: ENABLED → FAILING → FAILED by threshold or
//! window, recovery, operator enable, DISABLED, and the shared-data encoding.

use envoy_webhooks::config::{DeliveryPolicy, PluginConfig, WebhookDefinition};
use envoy_webhooks::status::Status;
use envoy_webhooks::testing::health::{Transition, WebhookHealth};
use serde_json::json;

fn definition(status: &str) -> WebhookDefinition {
    let config = PluginConfig::from_value(&json!({"webhooks": [{
        "id": "hook",
        "event_type": "assets",
        "url": "http://receiver/",
        "status": status,
    }]}));
    match config {
        Ok(mut config) => config.webhooks.remove(0),
        Err(e) => panic!("{e}"),
    }
}

fn policy(failure_threshold: u64, failing_window_s: u64) -> DeliveryPolicy {
    DeliveryPolicy {
        failure_threshold,
        failing_window_s,
        ..DeliveryPolicy::default()
    }
}

const T0: u64 = 1_700_000_000;

fn enabled() -> WebhookHealth {
    WebhookHealth::initial(&definition("ENABLED"), T0)
}

#[test]
fn initial_state_is_the_configured_status() {
    let def = definition("ENABLED");
    assert_eq!(
        WebhookHealth::initial(&def, T0),
        WebhookHealth {
            fingerprint: def.fingerprint,
            status: Status::Enabled,
            consecutive_failures: 0,
            first_failed_at: None,
            last_error: None,
            delivered: 0,
            failed: 0,
            epoch: 0,
            paused_at_ms: None,
        }
    );
    for (text, status) in [("DISABLED", Status::Disabled), ("FAILED", Status::Failed)] {
        let health = WebhookHealth::initial(&definition(text), T0);
        assert_eq!(health.status, status);
        assert_eq!(health.first_failed_at, None);
        assert_eq!(health.consecutive_failures, 0);
    }
    // Configured as FAILING: the failing window starts now.
    let failing = WebhookHealth::initial(&definition("FAILING"), T0);
    assert_eq!(failing.status, Status::Failing);
    assert_eq!(failing.first_failed_at, Some(T0));
}

#[test]
fn first_failure_makes_an_enabled_webhook_failing() {
    let mut health = enabled();
    let transition = health.record_failure("HTTP 503", T0 + 5, &policy(10, 18_000));
    assert_eq!(
        transition,
        Some(Transition {
            from: Status::Enabled,
            to: Status::Failing,
            reason: "delivery failed: HTTP 503".to_string(),
        })
    );
    assert_eq!(health.status, Status::Failing);
    assert_eq!(health.consecutive_failures, 1);
    assert_eq!(health.first_failed_at, Some(T0 + 5));
    assert_eq!(health.last_error.as_deref(), Some("HTTP 503"));
    assert_eq!((health.delivered, health.failed), (0, 1));
}

#[test]
fn further_failures_count_without_a_new_transition() {
    let mut health = enabled();
    let p = policy(10, 18_000);
    health.record_failure("HTTP 500", T0, &p);
    let transition = health.record_failure("timeout after 10000 ms", T0 + 60, &p);
    assert_eq!(transition, None, "FAILING stays FAILING");
    assert_eq!(health.status, Status::Failing);
    assert_eq!(health.consecutive_failures, 2);
    assert_eq!(
        health.first_failed_at,
        Some(T0),
        "the run of failures started at T0"
    );
    assert_eq!(health.last_error.as_deref(), Some("timeout after 10000 ms"));
    assert_eq!(health.failed, 2);
}

#[test]
fn success_recovers_a_failing_webhook() {
    let mut health = enabled();
    let p = policy(10, 18_000);
    health.record_failure("HTTP 500", T0, &p);
    health.record_failure("HTTP 502", T0 + 1, &p);
    let transition = health.record_success();
    assert_eq!(
        transition,
        Some(Transition {
            from: Status::Failing,
            to: Status::Enabled,
            reason: "delivery succeeded after 2 consecutive failure(s)".to_string(),
        })
    );
    assert_eq!(health.status, Status::Enabled);
    assert_eq!(health.consecutive_failures, 0);
    assert_eq!(health.first_failed_at, None);
    assert_eq!((health.delivered, health.failed), (1, 2));

    // The next failure starts a new run, at its own time.
    health.record_failure("HTTP 500", T0 + 100, &p);
    assert_eq!(health.consecutive_failures, 1);
    assert_eq!(health.first_failed_at, Some(T0 + 100));
}

#[test]
fn success_while_enabled_only_counts() {
    let mut health = enabled();
    assert_eq!(health.record_success(), None);
    assert_eq!(health.record_success(), None);
    assert_eq!(health.status, Status::Enabled);
    assert_eq!(health.delivered, 2);
}

#[test]
fn threshold_of_consecutive_failures_makes_it_failed() {
    let mut health = enabled();
    let p = policy(3, 18_000);
    assert_eq!(
        health.record_failure("HTTP 500", T0, &p).map(|t| t.to),
        Some(Status::Failing)
    );
    assert_eq!(health.record_failure("HTTP 500", T0 + 1, &p), None);
    let transition = health
        .record_failure("HTTP 404", T0 + 2, &p)
        .expect("the third failure reaches the threshold");
    assert_eq!(
        (transition.from, transition.to),
        (Status::Failing, Status::Failed)
    );
    assert_eq!(
        transition.reason,
        "3 consecutive failures reached failure_threshold 3; last error: HTTP 404"
    );
    assert_eq!(health.status, Status::Failed);
    assert_eq!(health.consecutive_failures, 3);
    assert_eq!(health.failed, 3);
}

#[test]
fn threshold_of_one_fails_at_once() {
    let mut health = enabled();
    let transition = health
        .record_failure("HTTP 500", T0, &policy(1, 18_000))
        .expect("transition");
    assert_eq!(
        (transition.from, transition.to),
        (Status::Enabled, Status::Failed)
    );
    assert_eq!(health.status, Status::Failed);
}

#[test]
fn success_between_failures_resets_the_threshold_count() {
    let mut health = enabled();
    let p = policy(3, 18_000);
    for round in 0..5 {
        health.record_failure("HTTP 500", T0 + round, &p);
        health.record_failure("HTTP 500", T0 + round, &p);
        health.record_success();
        assert_eq!(health.status, Status::Enabled, "round {round}");
    }
    assert_eq!((health.delivered, health.failed), (5, 10));
}

#[test]
fn failing_for_the_window_makes_it_failed() {
    let mut health = enabled();
    let p = policy(1_000, 600);
    health.record_failure("HTTP 500", T0, &p);
    assert_eq!(health.record_failure("HTTP 500", T0 + 599, &p), None);
    assert_eq!(health.status, Status::Failing);
    let transition = health
        .record_failure("HTTP 500", T0 + 600, &p)
        .expect("the window is reached");
    assert_eq!(
        (transition.from, transition.to),
        (Status::Failing, Status::Failed)
    );
    assert_eq!(
        transition.reason,
        "failing for 600 s, reaching failing_window_s 600; last error: HTTP 500"
    );
    assert_eq!(health.consecutive_failures, 3);
}

#[test]
fn window_restarts_after_a_success() {
    let mut health = enabled();
    let p = policy(1_000, 600);
    health.record_failure("HTTP 500", T0, &p);
    health.record_success();
    health.record_failure("HTTP 500", T0 + 1_000, &p);
    assert_eq!(
        health.status,
        Status::Failing,
        "the earlier failure no longer counts"
    );
    assert_eq!(health.first_failed_at, Some(T0 + 1_000));
}

#[test]
fn configured_failing_status_starts_the_window_at_startup() {
    let mut health = WebhookHealth::initial(&definition("FAILING"), T0);
    let p = policy(1_000, 600);
    assert_eq!(health.record_failure("HTTP 500", T0 + 599, &p), None);
    let transition = health.record_failure("HTTP 500", T0 + 600, &p);
    assert_eq!(transition.map(|t| t.to), Some(Status::Failed));
}

#[test]
fn clock_going_backwards_does_not_fail_the_webhook() {
    let mut health = enabled();
    let p = policy(1_000, 600);
    health.record_failure("HTTP 500", T0, &p);
    assert_eq!(health.record_failure("HTTP 500", T0 - 10_000, &p), None);
    assert_eq!(health.status, Status::Failing);
    assert_eq!(health.first_failed_at, Some(T0));
}

#[test]
fn failed_stays_failed_but_keeps_counting() {
    let mut health = enabled();
    let p = policy(1, 18_000);
    health.record_failure("HTTP 500", T0, &p);
    assert_eq!(health.status, Status::Failed);

    assert_eq!(
        health.record_success(),
        None,
        "a late success does not revive it"
    );
    assert_eq!(health.status, Status::Failed);
    assert_eq!(health.delivered, 1);

    assert_eq!(health.record_failure("HTTP 418", T0 + 1, &p), None);
    assert_eq!(health.status, Status::Failed);
    assert_eq!(health.failed, 2);
    assert_eq!(health.last_error.as_deref(), Some("HTTP 418"));
}

#[test]
fn disabled_never_changes_status() {
    let mut health = WebhookHealth::initial(&definition("DISABLED"), T0);
    let p = policy(1, 1);
    for round in 0..3 {
        assert_eq!(health.record_failure("HTTP 500", T0 + round * 10, &p), None);
        assert_eq!(health.record_success(), None);
        assert_eq!(
            health.enable(),
            None,
            "DISABLED is the configuration's to change"
        );
        assert_eq!(health.status, Status::Disabled);
    }
    assert_eq!(health.consecutive_failures, 0);
    assert_eq!(health.first_failed_at, None);
}

#[test]
fn enable_recovers_failing_and_failed() {
    let p = policy(2, 18_000);
    let mut failing = enabled();
    failing.record_failure("HTTP 500", T0, &p);
    let mut failed = failing.clone();
    failed.record_failure("HTTP 500", T0 + 1, &p);
    assert_eq!(failed.status, Status::Failed);

    for (mut health, from) in [(failing, Status::Failing), (failed, Status::Failed)] {
        let counts = (health.delivered, health.failed);
        assert_eq!(
            health.enable(),
            Some(Transition {
                from,
                to: Status::Enabled,
                reason: "enabled through the admin API".to_string(),
            })
        );
        assert_eq!(health.status, Status::Enabled);
        assert_eq!(health.consecutive_failures, 0);
        assert_eq!(health.first_failed_at, None);
        assert_eq!((health.delivered, health.failed), counts, "history is kept");

        // A fresh start: one failure is FAILING again, not FAILED.
        health.record_failure("HTTP 500", T0 + 50, &p);
        assert_eq!(health.status, Status::Failing);
    }
}

#[test]
fn enable_of_an_enabled_webhook_changes_only_its_epoch() {
    // No transition, but a new epoch: failures made before the enable (by
    // calls in flight, or by an Envoy cut off from etcd) no longer count.
    let mut health = enabled();
    health.record_success();
    let before = health.clone();
    assert_eq!(health.enable(), None);
    assert_eq!(
        health,
        WebhookHealth {
            epoch: before.epoch + 1,
            ..before
        }
    );
    // A webhook DISABLED by the configuration stays as it is.
    let mut disabled = WebhookHealth::initial(&definition("DISABLED"), T0);
    let before = disabled.clone();
    assert_eq!(disabled.enable(), None);
    assert_eq!(disabled, before);
}

#[test]
fn configured_failed_webhook_can_be_enabled() {
    let mut health = WebhookHealth::initial(&definition("FAILED"), T0);
    assert_eq!(health.enable().map(|t| t.from), Some(Status::Failed));
    assert_eq!(health.status, Status::Enabled);
}

#[test]
fn enable_starts_a_new_epoch_and_nothing_else_does() {
    let mut health = enabled();
    let policy = policy(2, 600);
    health.record_failure("HTTP 500", T0, &policy);
    health.record_failure("HTTP 500", T0, &policy);
    health.record_success();
    assert_eq!(health.epoch, 0, "only an operator's enable starts an epoch");
    health.record_gone(T0);
    assert_eq!(health.status, Status::Failed);
    assert!(health.enable().is_some());
    assert_eq!(health.epoch, 1);
    // Enabling what is already ENABLED makes no transition, and a new epoch.
    assert!(health.enable().is_none());
    assert_eq!(health.epoch, 2);
    let decoded = WebhookHealth::decode(&health.encode()).expect("decodes");
    assert_eq!(decoded.epoch, 2);
    // Records written before epochs existed read as epoch 0.
    let mut old: serde_json::Value = serde_json::from_slice(&enabled().encode()).expect("JSON");
    old.as_object_mut().expect("object").remove("epoch");
    let old = WebhookHealth::decode(old.to_string().as_bytes()).expect("decodes");
    assert_eq!(old.epoch, 0);
}

// ---------------------------------------------------------------------------
// Encoding

#[test]
fn encode_decode_round_trip() {
    let mut records = vec![
        enabled(),
        WebhookHealth::initial(&definition("FAILING"), T0),
        WebhookHealth::initial(&definition("DISABLED"), T0),
        WebhookHealth {
            fingerprint: u64::MAX,
            status: Status::Failed,
            consecutive_failures: 12,
            first_failed_at: Some(u64::MAX),
            last_error: Some("HTTP 500 \"quoted\" \\ é 🎉\nsecond line".to_string()),
            delivered: u64::MAX,
            failed: 1,
            epoch: u64::MAX,
            paused_at_ms: Some(u64::MAX),
        },
        WebhookHealth {
            fingerprint: 0,
            status: Status::Enabled,
            consecutive_failures: 0,
            first_failed_at: None,
            last_error: Some(String::new()),
            delivered: 0,
            failed: 0,
            epoch: 3,
            paused_at_ms: None,
        },
    ];
    let mut failing = enabled();
    failing.record_failure("timeout after 10000 ms", T0, &policy(10, 600));
    records.push(failing);

    for record in records {
        let bytes = record.encode();
        assert_eq!(
            WebhookHealth::decode(&bytes),
            Some(record.clone()),
            "{}",
            String::from_utf8_lossy(&bytes)
        );
    }
}

#[test]
fn decode_of_anything_else_is_none() {
    let good = enabled().encode();
    let mut garbage: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"not json".to_vec(),
        b"null".to_vec(),
        b"[]".to_vec(),
        b"{}".to_vec(),
        vec![0xff, 0xfe, 0x00],
        good[..good.len() / 2].to_vec(),
    ];
    let valid = json!({
        "fingerprint": 42, "status": "ENABLED", "consecutive_failures": 0,
        "first_failed_at": null, "last_error": null, "delivered": 0, "failed": 0,
    });
    assert!(
        WebhookHealth::decode(valid.to_string().as_bytes()).is_some(),
        "the template is valid"
    );
    let broken = [
        ("fingerprint", json!("42")),
        ("fingerprint", json!("x42")),
        ("fingerprint", json!(-1)),
        ("status", json!("PAUSED")),
        ("status", json!(null)),
        ("consecutive_failures", json!(-1)),
        ("consecutive_failures", json!("0")),
        ("delivered", json!(1.5)),
        ("failed", json!(null)),
    ];
    for (field, value) in broken {
        let mut record = valid.clone();
        record[field] = value;
        garbage.push(record.to_string().into_bytes());
    }
    for field in [
        "fingerprint",
        "status",
        "consecutive_failures",
        "delivered",
        "failed",
    ] {
        let mut record = valid.clone();
        if let Some(object) = record.as_object_mut() {
            object.remove(field);
        }
        garbage.push(record.to_string().into_bytes());
    }
    for bytes in garbage {
        assert_eq!(
            WebhookHealth::decode(&bytes),
            None,
            "{}",
            String::from_utf8_lossy(&bytes)
        );
    }
}
