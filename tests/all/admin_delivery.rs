//! The admin API (routing, bearer token, status entries) and delivery calls
//! (headers, outcome classification, queue messages).

use envoy_webhooks::config::{DeliveryPolicy, PluginConfig, WebhookDefinition, DELIVERY_MARKER};
use envoy_webhooks::status::Status;
use envoy_webhooks::testing::admin::{error_body, status_entry, AdminRoute};
use envoy_webhooks::testing::call::{request_headers, Answer, CallOutcome, USER_AGENT};
use envoy_webhooks::testing::health::WebhookHealth;
use envoy_webhooks::testing::plugin::Plugin;
use envoy_webhooks::testing::serve::{self, Entrance, Served};
use serde_json::{json, Value};

const PREFIX: &str = "/webhooks-admin";
const TOKEN: &str = "s3cret-Token";
const AUTH: &str = "Bearer s3cret-Token";

/// What the filter makes of a request, for these tests.
#[derive(Debug, PartialEq)]
enum Routed {
    /// Ordinary traffic: goes on to the upstream.
    NotServed,
    /// Under the admin prefix without the token: 401.
    Unauthorized,
    Admin(AdminRoute),
}

/// Routes a request as the filter does, with the admin API under `prefix`.
fn routed(prefix: &str, method: &str, path: &str, authorization: Option<&str>) -> Routed {
    let config = json!({
        "webhooks": [{"id": "a", "event_type": "assets", "url": "http://receiver/"}],
        "admin": {"path_prefix": prefix, "token": TOKEN},
    });
    let plugin = Plugin::load(config.to_string().as_bytes(), |_| None).unwrap();
    let header = |name: &str| match name {
        "authorization" => authorization.map(str::to_string),
        _ => None,
    };
    let served = serve::route(&plugin, method, path, &header);
    // With events.selected_by_routes the filter asks serves_path first, and
    // routes only what it says is served: the two must agree on every path.
    assert_eq!(
        serve::serves_path(&plugin, path),
        served.is_some(),
        "{path}"
    );
    match served {
        None => Routed::NotServed,
        Some(Served::Refused(Entrance::Admin, _)) => Routed::Unauthorized,
        Some(Served::Admin(route)) => Routed::Admin(route),
        Some(other) => panic!("{other:?}"),
    }
}

fn admin(method: &str, path: &str, authorization: Option<&str>) -> Routed {
    routed(PREFIX, method, path, authorization)
}

fn definition(webhook: Value) -> WebhookDefinition {
    match PluginConfig::from_value(&json!({ "webhooks": [webhook] })) {
        Ok(mut config) => config.webhooks.remove(0),
        Err(e) => panic!("{e}"),
    }
}

// ---------------------------------------------------------------------------
// Admin routing

#[test]
fn paths_outside_the_prefix_are_not_admin() {
    for path in [
        "/",
        "/webhooks",
        "/webhooks-admi",
        "/webhooks-adminX",
        "/webhooks-adminX/status",
        "/webhooks-admin-status",
        "/webhooks-admin.json",
        "/api/webhooks-admin/status",
        "webhooks-admin/status",
        "/webhooks-adminX?/status",
        "/webhooks-admin%58/status",
        "/other/..%2Fwebhooks-adminX/status",
        "",
    ] {
        for authorization in [None, Some(AUTH), Some("Bearer wrong")] {
            assert_eq!(
                admin("GET", path, authorization),
                Routed::NotServed,
                "{path} with {authorization:?}"
            );
        }
    }
}

/// Every spelling of an admin path is the admin API (401 without the token),
/// never ordinary traffic that would reach the upstream.
#[test]
fn every_spelling_of_an_admin_path_is_admin() {
    for path in [
        "//webhooks-admin/status",
        "/webhooks-admin//status",
        "/webhooks-admin%2Fstatus",
        "/webhooks-admin%2fstatus",
        "/%77ebhooks-admin/status",
        "/Webhooks-Admin/status",
        "/WEBHOOKS-ADMIN/status",
        "/webhooks-admin/./status",
        "/x/../webhooks-admin/status",
        "/x/..%2Fwebhooks-admin/status",
        "/webhooks-admin\\status",
        "/webhooks-admin",
        "/webhooks-admin/",
    ] {
        assert_eq!(admin("GET", path, None), Routed::Unauthorized, "{path}");
        assert_ne!(admin("GET", path, Some(AUTH)), Routed::NotServed, "{path}");
    }
    assert_eq!(
        admin("GET", "//webhooks-admin//status", Some(AUTH)),
        Routed::Admin(AdminRoute::Status)
    );
    assert_eq!(
        admin("GET", "/Webhooks-Admin/status", Some(AUTH)),
        Routed::Admin(AdminRoute::Status)
    );
    // Webhook ids keep their case; escapes in them are decoded.
    assert_eq!(
        admin(
            "POST",
            "/webhooks-admin/webhooks/My%2DHook/enable",
            Some(AUTH)
        ),
        Routed::Admin(AdminRoute::Enable("My-Hook".to_string()))
    );
}

#[test]
fn status_is_get_under_the_prefix() {
    for path in [
        "/webhooks-admin/status",
        "/webhooks-admin/status/",
        "/webhooks-admin/status?pretty=1",
        "/webhooks-admin/status?x=/webhooks/a/enable",
        "/webhooks-admin/status#top",
    ] {
        assert_eq!(
            admin("GET", path, Some(AUTH)),
            Routed::Admin(AdminRoute::Status),
            "{path}"
        );
    }
}

#[test]
fn enable_is_post_with_the_webhook_id() {
    assert_eq!(
        admin(
            "POST",
            "/webhooks-admin/webhooks/formats-avc/enable",
            Some(AUTH)
        ),
        Routed::Admin(AdminRoute::Enable("formats-avc".to_string()))
    );
    assert_eq!(
        admin(
            "POST",
            "/webhooks-admin/webhooks/a_b/enable?now=1",
            Some(AUTH)
        ),
        Routed::Admin(AdminRoute::Enable("a_b".to_string()))
    );
}

#[test]
fn wrong_methods_say_which_is_allowed() {
    for method in ["POST", "PUT", "DELETE", "HEAD", "PATCH"] {
        assert_eq!(
            admin(method, "/webhooks-admin/status", Some(AUTH)),
            Routed::Admin(AdminRoute::MethodNotAllowed { allow: "GET" }),
            "{method}"
        );
    }
    for method in ["GET", "PUT", "DELETE", "HEAD"] {
        assert_eq!(
            admin(method, "/webhooks-admin/webhooks/a/enable", Some(AUTH)),
            Routed::Admin(AdminRoute::MethodNotAllowed { allow: "POST" }),
            "{method}"
        );
    }
}

#[test]
fn unknown_admin_paths_are_not_found() {
    for path in [
        "/webhooks-admin",
        "/webhooks-admin/",
        "/webhooks-admin?status",
        "/webhooks-admin/stats",
        "/webhooks-admin/status/extra",
        "/webhooks-admin/webhooks",
        "/webhooks-admin/webhooks/a",
        "/webhooks-admin/webhooks/a/pause",
        "/webhooks-admin/webhooks/a/enable/now",
        "/webhooks-admin/webhooks/a/attempts/1",
        "/webhooks-admin/webhooks//enable",
        "/webhooks-admin/enable",
    ] {
        for method in ["GET", "POST"] {
            assert_eq!(
                admin(method, path, Some(AUTH)),
                Routed::Admin(AdminRoute::NotFound),
                "{method} {path}"
            );
        }
    }
}

#[test]
fn bad_credentials_are_unauthorized_everywhere_under_the_prefix() {
    let bad = [
        None,
        Some(""),
        Some("Bearer"),
        Some("Bearer "),
        Some("Bearer wrong"),
        Some("Bearer s3cret-Token-and-more"),
        Some("Bearer s3cret-Toke"),
        Some("Bearer s3cret-token"),
        Some("Bearer s3cret Token"),
        Some("Bearers3cret-Token"),
        Some("Basic s3cret-Token"),
        Some("s3cret-Token"),
        Some("Token s3cret-Token"),
        Some("Bearer Bearer s3cret-Token"),
    ];
    // Unauthenticated callers learn nothing: not even which paths or methods exist.
    let requests = [
        ("GET", "/webhooks-admin/status"),
        ("POST", "/webhooks-admin/webhooks/a/enable"),
        ("POST", "/webhooks-admin/status"),
        ("GET", "/webhooks-admin/webhooks/a/enable"),
        ("GET", "/webhooks-admin/no-such-thing"),
        ("GET", "/webhooks-admin"),
        ("DELETE", "/webhooks-admin/"),
    ];
    for authorization in bad {
        for (method, path) in requests {
            assert_eq!(
                admin(method, path, authorization),
                Routed::Unauthorized,
                "{method} {path} with {authorization:?}"
            );
        }
    }
}

#[test]
fn bearer_scheme_is_case_insensitive_and_spacing_tolerated() {
    for authorization in [
        "Bearer s3cret-Token",
        "bearer s3cret-Token",
        "BEARER s3cret-Token",
        "Bearer  s3cret-Token",
        "Bearer s3cret-Token ",
    ] {
        assert_eq!(
            admin("GET", "/webhooks-admin/status", Some(authorization)),
            Routed::Admin(AdminRoute::Status),
            "{authorization:?}"
        );
    }
}

#[test]
fn deeper_prefixes_work_too() {
    let prefix = "/internal/hooks";
    assert_eq!(
        routed(prefix, "GET", "/internal/hooks/status", Some(AUTH)),
        Routed::Admin(AdminRoute::Status)
    );
    assert_eq!(
        routed(prefix, "GET", "/internal/status", Some(AUTH)),
        Routed::NotServed
    );
    assert_eq!(
        routed(prefix, "GET", "/internal/hooksX/status", None),
        Routed::NotServed
    );
}

// ---------------------------------------------------------------------------
// Admin bodies

#[test]
fn status_entry_has_exactly_the_documented_fields() {
    let def = definition(json!({
        "id": "formats-avc",
        "name": "AVC formats",
        "event_type": "assets",
        "url": "http://receiver/",
        "headers": {"authorization": "Bearer do-not-show"},
    }));
    let mut health = WebhookHealth::initial(&def, 1_000);
    let policy = DeliveryPolicy::default();
    health.record_success();
    health.record_failure("HTTP 503", 1_234, &policy);
    health.record_failure("HTTP 502", 1_240, &policy);

    let entry = status_entry(&def, &health);
    assert_eq!(
        entry,
        json!({
            "id": "formats-avc",
            "name": "AVC formats",
            "status": "FAILING",
            "configured_status": "ENABLED",
            "consecutive_failures": 2,
            "first_failed_at": 1_234,
            "last_error": "HTTP 502",
            "delivered": 1,
            "failed": 2,
            "paused_at_ms": null,
        })
    );
    assert!(
        !entry.to_string().contains("do-not-show"),
        "no header values in status"
    );
}

#[test]
fn status_entry_of_a_fresh_webhook_has_nulls() {
    let def = definition(json!({
        "id": "quiet", "event_type": "assets", "url": "http://receiver/", "status": "disabled",
    }));
    let entry = status_entry(&def, &WebhookHealth::initial(&def, 5));
    assert_eq!(
        entry,
        json!({
            "id": "quiet",
            "name": "",
            "status": "DISABLED",
            "configured_status": "DISABLED",
            "consecutive_failures": 0,
            "first_failed_at": null,
            "last_error": null,
            "delivered": 0,
            "failed": 0,
            "paused_at_ms": null,
        })
    );
}

#[test]
fn status_entry_shows_operator_changes_against_the_configuration() {
    let def = definition(json!({
        "id": "h", "event_type": "assets", "url": "http://receiver/", "status": "FAILED",
    }));
    let mut health = WebhookHealth::initial(&def, 5);
    health.enable();
    let entry = status_entry(&def, &health);
    assert_eq!(entry["status"], "ENABLED");
    assert_eq!(entry["configured_status"], "FAILED");
}

#[test]
fn error_body_is_json() {
    let body = error_body("unknown webhook \"a\\b\"\n");
    let value: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(value, json!({"error": "unknown webhook \"a\\b\"\n"}));
}

// ---------------------------------------------------------------------------
// Delivery headers

#[test]
fn request_headers_in_order_then_the_webhooks_own() {
    let def = definition(json!({
        "id": "h",
        "event_type": "assets",
        "url": "https://hooks.example.com:8443/iconik/hook?token=abc&x=1",
        "headers": {"Authorization": "Bearer t", "X-Iconik-App": "app"},
    }));
    assert_eq!(
        request_headers(&def),
        [
            (":method", "POST"),
            (":path", "/iconik/hook?token=abc&x=1"),
            (":authority", "hooks.example.com:8443"),
            ("content-type", "application/json"),
            ("user-agent", USER_AGENT),
            ("envoy-webhooks-delivery", "1"),
            ("authorization", "Bearer t"),
            ("x-iconik-app", "app"),
        ]
    );
}

#[test]
fn request_headers_for_a_bare_url() {
    let def = definition(json!({"id": "h", "event_type": "assets", "url": "http://receiver"}));
    let headers = request_headers(&def);
    assert_eq!(headers.len(), 6, "no configured headers: {headers:?}");
    assert!(headers.contains(&(DELIVERY_MARKER, "1")), "the loop guard");
    assert_eq!(headers[1], (":path", "/"));
    assert_eq!(headers[2], (":authority", "receiver"));
}

#[test]
fn user_agent_names_the_filter_and_its_version() {
    assert_eq!(
        USER_AGENT,
        format!("envoy-webhooks/{}", env!("CARGO_PKG_VERSION"))
    );
    let def = definition(json!({"id": "h", "event_type": "assets", "url": "http://r/"}));
    let user_agent = request_headers(&def)
        .into_iter()
        .find(|(name, _)| *name == "user-agent")
        .map(|(_, value)| value);
    assert!(user_agent.is_some_and(|ua| ua.starts_with("envoy-webhooks/")));
}

// ---------------------------------------------------------------------------
// Outcomes

/// Judges an answer (`None`: no answer) as the engine does: `Ok` for a
/// delivery, else the error recorded as `last_error`.
fn outcome(
    status: Option<&str>,
    body: &[u8],
    elapsed_ms: u64,
    timeout_ms: u64,
) -> Result<(), String> {
    let answer = status.map(|status| Answer {
        status: Some(status.to_string()),
        retry_after: None,
        body_start: body.to_vec(),
    });
    match CallOutcome::from_answer(answer.as_ref(), elapsed_ms, timeout_ms) {
        CallOutcome::Delivered => Ok(()),
        other => Err(other.to_string()),
    }
}

#[test]
fn two_hundreds_are_success() {
    for code in ["200", "201", "202", "204", "299"] {
        assert_eq!(outcome(Some(code), b"", 12, 10_000), Ok(()), "{code}");
    }
}

#[test]
fn other_answers_are_http_errors() {
    for code in [
        "100", "199", "301", "304", "400", "404", "429", "500", "503",
    ] {
        assert_eq!(
            outcome(Some(code), b"", 12, 10_000),
            Err(format!("HTTP {code}")),
            "{code:?}"
        );
    }
    // A status that is not three digits is no success either, and says so.
    for code in ["2000", "20", "", "2x0", "+200", "\u{fffd}"] {
        assert_eq!(
            outcome(Some(code), b"", 12, 10_000),
            Err(format!("an answer with status {code:?}")),
            "{code:?}"
        );
    }
    // An answer is an answer, however late.
    assert_eq!(
        outcome(Some("504"), b"gateway timeout", 10_000, 10_000),
        Err("HTTP 504".to_string())
    );
}

#[test]
fn only_what_can_be_envoys_own_answer_has_its_body_read() {
    use envoy_webhooks::testing::call::needs_body;
    assert!(needs_body(Some("403")) && needs_body(Some("503")) && needs_body(Some("504")));
    let bodies: [&[u8]; 5] = [
        b"upstream request timeout",
        b"upstream connect error or disconnect/reset before headers",
        b"no healthy upstream",
        b"envoy-webhooks egress refused: the receiver's address is internal",
        b"{\"ok\":true}",
    ];
    // Every other answer is judged the same without its body: the filter does not read it.
    for code in [
        "200", "201", "204", "299", "301", "400", "401", "404", "410", "429", "500", "502", "505",
        "5030", "4030", "20", "",
    ] {
        assert!(!needs_body(Some(code)), "{code}");
        for body in bodies {
            assert_eq!(
                outcome(Some(code), body, 12, 10_000),
                outcome(Some(code), b"", 12, 10_000),
                "{code} {body:?}"
            );
        }
    }
    assert!(!needs_body(None));
    // For 503 and 504 the body tells Envoy's answer from the receiver's.
    assert_ne!(
        outcome(Some("504"), b"upstream request timeout", 12, 10_000),
        outcome(Some("504"), b"", 12, 10_000)
    );
    assert_ne!(
        outcome(Some("503"), b"no healthy upstream", 12, 10_000),
        outcome(Some("503"), b"", 12, 10_000)
    );
}

#[test]
fn no_answer_near_the_timeout_is_a_timeout() {
    for elapsed in [9_990, 10_000, 10_003, 25_000] {
        assert_eq!(
            outcome(None, b"", elapsed, 10_000),
            Err("timeout after 10000 ms".to_string()),
            "elapsed {elapsed}"
        );
    }
    assert_eq!(
        outcome(None, b"", 250, 250),
        Err("timeout after 250 ms".to_string())
    );
}

#[test]
fn the_retry_schedule_sees_the_status_and_retry_after() {
    use envoy_webhooks::testing::retry::AttemptOutcome;
    let answer = Answer {
        status: Some("429".to_string()),
        retry_after: Some("\u{fffd}".to_string()),
        body_start: Vec::new(),
    };
    let outcome = CallOutcome::from_answer(Some(&answer), 5, 10_000);
    assert_eq!(
        outcome.attempt(),
        AttemptOutcome::Status {
            code: 429,
            retry_after: Some("\u{fffd}")
        }
    );
    assert_eq!(
        CallOutcome::from_answer(None, 5, 10_000).attempt(),
        AttemptOutcome::NoAnswer
    );
    assert_eq!(
        CallOutcome::CannotCall {
            cluster: "c".to_string()
        }
        .to_string(),
        "cannot call cluster 'c'"
    );
}

#[test]
fn no_answer_well_before_the_timeout_is_a_reset() {
    for elapsed in [0, 3, 1_000, 9_000] {
        let error = outcome(None, b"", elapsed, 10_000).expect_err("no answer is a failure");
        assert!(!error.contains("timeout"), "{error}");
        assert_eq!(error, "no response (connection refused or reset)");
    }
}

#[test]
fn envoys_own_answers_say_what_happened() {
    // A timed-out call comes back as Envoy's local 504.
    assert_eq!(
        outcome(Some("504"), b"upstream request timeout", 200, 200),
        Err("timeout after 200 ms".to_string())
    );
    // A refused connection comes back as Envoy's local 503.
    let refused = b"upstream connect error or disconnect/reset before headers. reset reason: remote connection failure";
    let error = outcome(Some("503"), refused, 3, 10_000).expect_err("a failure");
    assert!(
        error.starts_with(
            "HTTP 503 from Envoy, the receiver was not reached: upstream connect error"
        ),
        "{error}"
    );
    let error = outcome(Some("503"), b"no healthy upstream", 3, 10_000).expect_err("a failure");
    assert!(error.ends_with("no healthy upstream"), "{error}");
    // The receiver's own 503 and 504 stay plain.
    assert_eq!(
        outcome(Some("503"), b"busy", 3, 10_000),
        Err("HTTP 503".to_string())
    );
    assert_eq!(
        outcome(Some("504"), b"", 3, 10_000),
        Err("HTTP 504".to_string())
    );
}

#[test]
fn an_egress_refusal_is_a_failed_attempt_that_says_why() {
    use envoy_webhooks::testing::retry::AttemptOutcome;
    // The RBAC denial of the egress listener, and its answer for a name
    // that resolves to internal addresses only.
    for (code, reason) in [
        ("403", "the receiver's address is internal"),
        (
            "503",
            "the receiver's name resolves to no address that may be called",
        ),
    ] {
        let body = format!("envoy-webhooks egress refused: {reason}");
        let answer = Answer {
            status: Some(code.to_string()),
            retry_after: None,
            body_start: body.into_bytes(),
        };
        let judged = CallOutcome::from_answer(Some(&answer), 3, 10_000);
        assert_eq!(judged.attempt(), AttemptOutcome::NoAnswer, "{code}");
        assert_eq!(
            judged.to_string(),
            format!("refused by Envoy's egress check, the receiver was not called: {reason}")
        );
        // Over TLS it stays a refusal: no handshake happened.
        assert_eq!(judged.clone().over_tls("egress"), judged);
    }
    // A receiver's own 403 (or a body that only looks alike under another status) stays plain.
    assert_eq!(
        outcome(Some("403"), b"RBAC: access denied", 3, 10_000),
        Err("HTTP 403".to_string())
    );
    assert_eq!(
        outcome(
            Some("500"),
            b"envoy-webhooks egress refused: the receiver's address is internal",
            3,
            10_000
        ),
        Err("HTTP 500".to_string())
    );
}

#[test]
fn statuses_that_deliver() {
    // Only ENABLED and FAILING webhooks are called; FAILED waits for an operator.
    let delivering: Vec<Status> = Status::ALL.into_iter().filter(|s| s.delivers()).collect();
    assert_eq!(delivering, [Status::Enabled, Status::Failing]);
}
