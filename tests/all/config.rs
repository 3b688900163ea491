//! The plugin configuration: defaults, every validation rule, reporting every
//! problem at once with its webhook and field, secrets kept out of messages,
//! and definition fingerprints.

use envoy_webhooks::config::{
    validate_admin_token, AdminConfig, AdminToken, ConfigError, DeliverOn, DeliveryPolicy,
    EventsConfig, Operation, PluginConfig, Problem, WebhookDefinition, MAX_ID_LEN,
};
use envoy_webhooks::query::Query;
use envoy_webhooks::status::Status;
use serde_json::{json, Value};

fn parse(config: Value) -> Result<PluginConfig, ConfigError> {
    PluginConfig::from_value(&config)
}

fn valid(config: Value) -> PluginConfig {
    match parse(config) {
        Ok(config) => config,
        Err(e) => panic!("expected a valid configuration, got:\n{e}"),
    }
}

fn problems(config: Value) -> Vec<Problem> {
    match parse(config) {
        Ok(_) => panic!("expected the configuration to be rejected"),
        Err(e) => e.problems,
    }
}

/// A minimal valid webhook with `id`, changed by `extra` (a `null` removes a field).
fn hook(id: &str, extra: Value) -> Value {
    let mut webhook = json!({
        "id": id,
        "event_type": "assets",
        "url": "http://receiver:8080/hooks",
    });
    let object = webhook.as_object_mut().expect("object");
    for (key, value) in extra.as_object().expect("extra is an object") {
        if value.is_null() {
            object.remove(key);
        } else {
            object.insert(key.clone(), value.clone());
        }
    }
    webhook
}

/// The single webhook of a configuration holding only `webhook`.
fn one(webhook: Value) -> WebhookDefinition {
    let mut config = valid(json!({ "webhooks": [webhook] }));
    assert_eq!(config.webhooks.len(), 1);
    config.webhooks.remove(0)
}

/// The problems of a configuration holding only `webhook`.
fn webhook_problems(webhook: Value) -> Vec<Problem> {
    problems(json!({ "webhooks": [webhook] }))
}

/// Asserts that exactly one problem is at `place`/`field`, and returns it.
fn only_problem<'a>(problems: &'a [Problem], place: &str, field: &str) -> &'a Problem {
    let found: Vec<&Problem> = problems
        .iter()
        .filter(|p| p.place == place && p.field == field)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one problem at {place} / {field}, got: {problems:#?}"
    );
    found[0]
}

fn assert_single(problems: &[Problem], place: &str, field: &str, message_part: &str) {
    assert_eq!(
        problems.len(),
        1,
        "expected one problem, got: {problems:#?}"
    );
    let problem = only_problem(problems, place, field);
    assert!(
        problem.message.contains(message_part),
        "message {:?} should contain {message_part:?}",
        problem.message
    );
}

// ---------------------------------------------------------------------------
// Defaults and a complete configuration

#[test]
fn minimal_configuration_gets_every_default() {
    let config = valid(json!({
        "webhooks": [{"id": "a", "event_type": "assets", "url": "http://receiver:8080/hooks?x=1"}]
    }));
    assert_eq!(
        config.events,
        EventsConfig {
            methods: vec!["POST".to_string()],
            path_prefixes: vec!["/".to_string()],
            max_event_bytes: 1024 * 1024,
            max_events_per_request: 1_000,
            max_deliveries_per_request: 10_000,
            deliver_on: DeliverOn::Request,
            selected_by_routes: false,
        }
    );
    assert_eq!(
        config.delivery,
        DeliveryPolicy {
            timeout_ms: 10_000,
            max_in_flight: 100,
            failing_window_s: 18_000,
            failure_threshold: 10,
            retry_schedule_s: vec![5, 30, 120, 600, 1800, 3600],
            max_pending: 10_000,
            max_pending_bytes: 64 * 1024 * 1024,
            max_held_bytes: 256 * 1024 * 1024,
            propagate_headers: vec!["traceparent".to_string(), "tracestate".to_string()],
            clusters: None,
        }
    );
    assert_eq!(config.admin, None);
    assert_eq!(config.dead_letter, None);

    let webhook = &config.webhooks[0];
    assert_eq!(webhook.id, "a");
    assert_eq!(webhook.name, "");
    assert_eq!(webhook.description, "");
    assert_eq!(webhook.event_type, "assets");
    assert_eq!(webhook.realm, None);
    assert_eq!(webhook.operation, None);
    assert_eq!(webhook.object_id, None);
    assert_eq!(webhook.url.text, "http://receiver:8080/hooks?x=1");
    assert_eq!(webhook.url.host, "receiver");
    assert_eq!(webhook.url.authority, "receiver:8080");
    assert_eq!(webhook.url.path, "/hooks?x=1");
    assert_eq!(
        webhook.cluster, "receiver",
        "cluster defaults to the URL's host"
    );
    assert_eq!(webhook.status, Status::Enabled);
    assert_eq!(webhook.query, Query::match_all());
    assert!(webhook.headers.is_empty());
}

#[test]
fn empty_webhook_list_is_valid() {
    let config = valid(json!({"webhooks": []}));
    assert!(config.webhooks.is_empty());
}

#[test]
fn null_sections_take_their_defaults() {
    let config = valid(json!({"webhooks": [], "events": null, "delivery": null, "admin": null}));
    assert_eq!(config.events, EventsConfig::default());
    assert_eq!(config.delivery, DeliveryPolicy::default());
    assert_eq!(config.admin, None);
}

#[test]
fn complete_configuration_from_fixture() {
    let text = include_bytes!("../fixtures/full-config.json");
    let config = match PluginConfig::from_json(text) {
        Ok(config) => config,
        Err(e) => panic!("fixture should be valid:\n{e}"),
    };
    assert_eq!(config.events.methods, ["POST", "PUT"]);
    assert_eq!(config.events.path_prefixes, ["/API/", "/events"]);
    assert_eq!(config.events.max_event_bytes, 65_536);
    assert_eq!(config.events.deliver_on, DeliverOn::Response2xx);
    assert_eq!(
        config.delivery,
        DeliveryPolicy {
            timeout_ms: 2_500,
            max_in_flight: 64,
            failing_window_s: 600,
            failure_threshold: 3,
            retry_schedule_s: vec![1, 2],
            max_pending: 500,
            max_pending_bytes: 1_048_576,
            max_held_bytes: 256 * 1024 * 1024,
            propagate_headers: vec!["traceparent".to_string(), "x-b3-traceid".to_string()],
            clusters: None,
        }
    );
    assert_eq!(
        config.admin,
        Some(AdminConfig {
            path_prefix: "/webhooks-admin".to_string(),
            token: AdminToken::Env("WEBHOOKS_ADMIN_TOKEN".to_string()),
        })
    );

    let ids: Vec<&str> = config.webhooks.iter().map(|w| w.id.as_str()).collect();
    assert_eq!(ids, ["formats-avc", "metadata_share", "Collections-All"]);

    let formats = &config.webhooks[0];
    assert_eq!(formats.name, "AVC or MPEG-4 formats");
    assert_eq!(formats.description, "Active, online AVC/MPEG-4 formats");
    assert_eq!(formats.event_type, "assets", "event_type is lower-cased");
    assert_eq!(
        formats.realm.as_deref(),
        Some("formats"),
        "realm is lower-cased"
    );
    assert_eq!(formats.operation, Some(Operation::Update));
    assert_eq!(
        formats.object_id.as_deref(),
        Some("918728e2-bc1c-11ed-aaef-66cff3148306")
    );
    assert_eq!(formats.url.authority, "formats.example.com");
    assert_eq!(formats.url.host, "formats.example.com");
    assert_eq!(formats.url.path, "/iconik/formats");
    assert_eq!(formats.cluster, "outbound|443||formats.example.com");
    assert_eq!(formats.status, Status::Enabled);
    assert_eq!(
        formats.headers,
        [
            (
                "authorization".to_string(),
                "Bearer fixture-secret".to_string()
            ),
            ("x-source".to_string(), "envoy".to_string()),
        ]
    );
    let event: Value =
        serde_json::from_slice(include_bytes!("../fixtures/seed-formats-event.json"))
            .expect("fixture JSON");
    let query_text = "data.status=\"ACTIVE\" AND (data.components.metadata.format=\"AVC\" OR data.components.metadata.format=\"MPEG-4\")";
    assert_eq!(formats.query, Query::parse(query_text).expect("query"));
    assert!(formats.query.matches(&event));

    let share = &config.webhooks[1];
    assert_eq!(share.operation, None, "\"ALL\" means any operation");
    assert_eq!(share.realm.as_deref(), Some("metadata"));
    assert_eq!(share.status, Status::Failing, "status is case-insensitive");
    assert_eq!(share.cluster, "10.0.0.7", "cluster defaults to the host");
    assert_eq!(share.url.authority, "10.0.0.7:9000");
    assert_eq!(share.url.path, "/");

    let collections = &config.webhooks[2];
    assert_eq!(collections.event_type, "collections");
    assert_eq!(collections.realm, None, "null realm means any realm");
    assert_eq!(collections.operation, None, "null operation means any");
    assert_eq!(collections.object_id, None, "null object_id means any");
    assert_eq!(collections.status, Status::Disabled);
}

// ---------------------------------------------------------------------------
// Top level and JSON

#[test]
fn not_json_is_one_clear_problem() {
    let error = PluginConfig::from_json(b"{\"webhooks\": [").expect_err("invalid JSON");
    assert_eq!(error.problems.len(), 1);
    assert_eq!(error.problems[0].place, "configuration");
    assert!(error.problems[0].message.contains("is not valid JSON"));
}

#[test]
fn configuration_must_be_an_object() {
    let found = problems(json!([1, 2]));
    assert_single(
        &found,
        "configuration",
        "",
        "expected a JSON object, found a list",
    );
}

#[test]
fn webhooks_is_required_and_must_be_a_list() {
    assert_single(
        &problems(json!({})),
        "configuration",
        "webhooks",
        "is required",
    );
    assert_single(
        &problems(json!({"webhooks": {"id": "a"}})),
        "configuration",
        "webhooks",
        "expected a list of webhook definitions, found an object",
    );
}

#[test]
fn webhook_entries_must_be_objects() {
    let found = problems(json!({"webhooks": [hook("ok", json!({})), "hook", 7]}));
    assert_eq!(found.len(), 2, "{found:#?}");
    only_problem(&found, "webhooks[1]", "");
    only_problem(&found, "webhooks[2]", "");
}

#[test]
fn unknown_top_level_field_is_named() {
    let found = problems(json!({"webhooks": [], "webhook": []}));
    let problem = only_problem(&found, "configuration", "webhook");
    assert!(problem.message.contains("unknown field"));
    assert!(problem.to_string().contains("'webhook'"));
}

// ---------------------------------------------------------------------------
// Webhook fields, one rule at a time

#[test]
fn id_is_required_and_reported_by_position() {
    let found = problems(json!({"webhooks": [
        hook("first", json!({})),
        hook("x", json!({"id": null})),
    ]}));
    assert_single(&found, "webhooks[1]", "id", "is required");
}

#[test]
fn id_must_be_a_string() {
    let found = webhook_problems(hook("x", json!({"id": 42})));
    assert_single(
        &found,
        "webhooks[0]",
        "id",
        "expected a string, found a number",
    );
}

#[test]
fn id_characters_and_length() {
    for good in ["a", "A-z_09", "-", "_"] {
        assert_eq!(one(hook(good, json!({}))).id, good);
    }
    let longest = "x".repeat(MAX_ID_LEN);
    assert_eq!(one(hook(&longest, json!({}))).id, longest);

    let too_long = "x".repeat(MAX_ID_LEN + 1);
    for bad in ["", "a b", "a/b", "a.b", "é", "a\"b", too_long.as_str()] {
        let found = webhook_problems(hook(bad, json!({})));
        assert_single(
            &found,
            &format!("webhook \"{bad}\""),
            "id",
            "must be 1 to 128 letters, digits, '-' or '_'",
        );
    }
}

#[test]
fn duplicate_ids_are_reported_for_each_repeat() {
    let found = problems(json!({"webhooks": [
        hook("same", json!({})),
        hook("other", json!({})),
        hook("same", json!({"url": "http://elsewhere/"})),
        hook("same", json!({"event_type": "collections"})),
    ]}));
    assert_eq!(found.len(), 2, "{found:#?}");
    for (problem, index) in found.iter().zip([2, 3]) {
        assert_eq!(problem.place, "webhook \"same\"");
        assert_eq!(problem.field, "id");
        assert!(problem.message.contains("must be unique"));
        assert!(
            problem.message.contains(&format!("webhooks[{index}]")),
            "{problem}"
        );
    }
}

#[test]
fn duplicate_ids_are_reported_along_with_other_problems() {
    // Fixing the other problems must not reveal a duplicate only afterwards.
    let found = problems(json!({"webhooks": [
        hook("dup", json!({"url": "ftp://r/"})),
        hook("dup", json!({})),
        hook("dup", json!({"status": "paused"})),
    ]}));
    assert_eq!(found.len(), 4, "{found:#?}");
    only_problem(&found, "webhook \"dup\"", "url");
    only_problem(&found, "webhook \"dup\"", "status");
    let duplicates: Vec<&Problem> = found.iter().filter(|p| p.field == "id").collect();
    assert_eq!(duplicates.len(), 2, "{found:#?}");
    assert!(duplicates[0].message.contains("webhooks[1]"));
    assert!(duplicates[1].message.contains("webhooks[2]"));
}

#[test]
fn ids_are_case_sensitive() {
    let config = valid(json!({"webhooks": [hook("Hook", json!({})), hook("hook", json!({}))]}));
    assert_eq!(config.webhooks.len(), 2);
}

#[test]
fn name_and_description_must_be_strings() {
    let found = webhook_problems(hook("h", json!({"name": 1, "description": ["d"]})));
    assert_eq!(found.len(), 2, "{found:#?}");
    only_problem(&found, "webhook \"h\"", "name");
    only_problem(&found, "webhook \"h\"", "description");
}

#[test]
fn event_type_is_required_non_empty_and_lower_cased() {
    assert_single(
        &webhook_problems(hook("h", json!({"event_type": null}))),
        "webhook \"h\"",
        "event_type",
        "is required",
    );
    assert_single(
        &webhook_problems(hook("h", json!({"event_type": ""}))),
        "webhook \"h\"",
        "event_type",
        "must not be empty",
    );
    assert_single(
        &webhook_problems(hook("h", json!({"event_type": 3}))),
        "webhook \"h\"",
        "event_type",
        "expected a string",
    );
    assert_eq!(
        one(hook("h", json!({"event_type": "ASSETS"}))).event_type,
        "assets"
    );
}

#[test]
fn realm_absent_or_null_means_any_and_empty_is_an_error() {
    assert_eq!(one(hook("h", json!({}))).realm, None);
    let explicit_null: Value = serde_json::from_str(
        r#"{"id": "h", "event_type": "assets", "url": "http://r/", "realm": null}"#,
    )
    .expect("JSON");
    assert_eq!(one(explicit_null).realm, None);
    assert_eq!(
        one(hook("h", json!({"realm": "MetaData"})))
            .realm
            .as_deref(),
        Some("metadata")
    );
    assert_single(
        &webhook_problems(hook("h", json!({"realm": ""}))),
        "webhook \"h\"",
        "realm",
        "must not be empty",
    );
}

#[test]
fn operations_are_case_insensitive_and_all_means_any() {
    let cases = [
        ("create", Some(Operation::Create)),
        ("DELETE", Some(Operation::Delete)),
        ("Purge", Some(Operation::Purge)),
        ("restore", Some(Operation::Restore)),
        ("uPdAtE", Some(Operation::Update)),
        ("download", Some(Operation::Download)),
        ("all", None),
        ("ALL", None),
    ];
    for (text, expected) in cases {
        assert_eq!(
            one(hook("h", json!({"operation": text}))).operation,
            expected,
            "operation {text:?}"
        );
    }
    let with_null: Value = serde_json::from_str(
        r#"{"id": "h", "event_type": "assets", "url": "http://r/", "operation": null}"#,
    )
    .expect("JSON");
    assert_eq!(one(with_null).operation, None);
}

#[test]
fn unknown_operation_is_reported_with_the_choices() {
    let found = webhook_problems(hook("h", json!({"operation": "modify"})));
    assert_single(
        &found,
        "webhook \"h\"",
        "operation",
        "unknown operation \"modify\"",
    );
    assert!(found[0]
        .message
        .contains("create, delete, purge, restore, update or download"));
}

#[test]
fn download_only_with_assets() {
    let assets = one(hook(
        "h",
        json!({"event_type": "Assets", "operation": "DOWNLOAD"}),
    ));
    assert_eq!(assets.operation, Some(Operation::Download));
    for event_type in ["collections", "files"] {
        let found = webhook_problems(hook(
            "h",
            json!({"event_type": event_type, "operation": "download"}),
        ));
        assert_single(
            &found,
            "webhook \"h\"",
            "operation",
            "\"download\" is only allowed with event_type \"assets\"",
        );
    }
}

#[test]
fn object_id_filter_is_kept_verbatim() {
    assert_eq!(
        one(hook("h", json!({"object_id": "AbC-123"})))
            .object_id
            .as_deref(),
        Some("AbC-123")
    );
    assert_single(
        &webhook_problems(hook("h", json!({"object_id": 5}))),
        "webhook \"h\"",
        "object_id",
        "expected a string",
    );
}

#[test]
fn url_is_required() {
    assert_single(
        &webhook_problems(hook("h", json!({"url": null}))),
        "webhook \"h\"",
        "url",
        "is required",
    );
}

#[test]
fn url_forms() {
    let cases = [
        (
            "https://hooks.example.com",
            "hooks.example.com",
            "hooks.example.com",
            "/",
        ),
        ("http://r:81/a/b?c=d&e", "r:81", "r", "/a/b?c=d&e"),
        ("http://[::1]:8080/x", "[::1]:8080", "::1", "/x"),
        (
            "HTTPS://Example.com/Path",
            "Example.com",
            "Example.com",
            "/Path",
        ),
    ];
    for (text, authority, host, path) in cases {
        let webhook = one(hook("h", json!({"url": text})));
        assert_eq!(webhook.url.text, text);
        assert_eq!(webhook.url.authority, authority, "{text}");
        assert_eq!(webhook.url.host, host, "{text}");
        assert_eq!(webhook.url.path, path, "{text}");
        assert_eq!(webhook.cluster, host, "{text}");
    }
}

#[test]
fn bad_urls_are_explained() {
    let cases = [
        ("ftp://r/x", "must start with http:// or https://"),
        ("receiver/hooks", "is not a valid URL"),
        (
            "mailto:someone@example.com",
            "must start with http:// or https://",
        ),
        ("http://", "is not a valid URL"),
        (
            "http://exa mple.com/",
            "contains whitespace; percent-encode it",
        ),
        ("http://r/a b", "contains whitespace; percent-encode it"),
        ("http://r/x\t", "contains whitespace"),
        ("http://r/x\u{7f}", "contains a control character"),
        (" http://r/x", "contains whitespace"),
        ("", "is not a valid URL"),
        ("http://user:pw@r/x", "must not hold credentials"),
    ];
    for (text, message) in cases {
        let found = webhook_problems(hook("h", json!({"url": text})));
        assert_single(&found, "webhook \"h\"", "url", message);
    }
}

#[test]
fn url_credentials_are_not_echoed() {
    let found = webhook_problems(hook("h", json!({"url": "https://admin:hunter2@r/x"})));
    let text = ConfigError { problems: found }.to_string();
    assert!(
        text.contains("\"https://***@r/x\" must not hold credentials"),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "the password leaked: {text}");

    for url in [
        "http://admin:hunter2@exa mple.com/x",
        "ftp://admin:hunter2@r/x",
        "http://admin:hunter2@:80/",
    ] {
        let found = webhook_problems(hook("h", json!({"url": url})));
        let text = ConfigError { problems: found }.to_string();
        assert!(text.contains("field 'url'"), "{text}");
        assert!(!text.contains("hunter2"), "the password leaked: {text}");
    }
}

#[test]
fn cluster_overrides_the_host_and_must_not_be_empty() {
    assert_eq!(
        one(hook("h", json!({"cluster": "receivers"}))).cluster,
        "receivers"
    );
    assert_single(
        &webhook_problems(hook("h", json!({"cluster": ""}))),
        "webhook \"h\"",
        "cluster",
        "must not be empty",
    );
}

#[test]
fn statuses_are_case_insensitive() {
    for (text, status) in [
        ("ENABLED", Status::Enabled),
        ("disabled", Status::Disabled),
        ("Failing", Status::Failing),
        ("failed", Status::Failed),
    ] {
        assert_eq!(one(hook("h", json!({"status": text}))).status, status);
    }
    assert_single(
        &webhook_problems(hook("h", json!({"status": "paused"}))),
        "webhook \"h\"",
        "status",
        "unknown status \"paused\" (expected ENABLED, DISABLED, FAILING or FAILED)",
    );
}

#[test]
fn query_is_compiled() {
    let webhook = one(hook("h", json!({"query": "operation=\"update\""})));
    assert!(webhook.query.matches(&json!({"operation": "update"})));
    assert!(!webhook.query.matches(&json!({"operation": "create"})));
    assert_eq!(
        one(hook("h", json!({"query": ""}))).query,
        Query::match_all()
    );
}

#[test]
fn bad_query_is_reported_with_its_column() {
    for text in [
        "data.status=",
        "data.status=\"ACTIVE\" AND",
        "(operation=\"update\"",
        "a=/[/",
        "a>\"x\"",
    ] {
        let error = Query::parse(text).expect_err("the query is invalid");
        let found = webhook_problems(hook("h", json!({"query": text})));
        let problem = only_problem(&found, "webhook \"h\"", "query");
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(
            problem.message.contains(error.message()),
            "{problem} should contain {:?}",
            error.message()
        );
        assert!(
            problem
                .message
                .contains(&format!("column {}", error.column())),
            "{problem} should name column {}",
            error.column()
        );
        // The caret display points at the column under the query.
        let caret_line = problem.message.lines().last().expect("caret line");
        assert_eq!(caret_line, format!("  {}^", " ".repeat(error.column() - 1)));
    }
    let error = Query::parse("data.status=").expect_err("invalid");
    assert_eq!(error.column(), 13);
}

#[test]
fn headers_are_lower_cased() {
    let webhook = one(hook(
        "h",
        json!({"headers": {"Authorization": "Bearer t", "X-Iconik-App": "app-1"}}),
    ));
    assert_eq!(
        webhook.headers,
        [
            ("authorization".to_string(), "Bearer t".to_string()),
            ("x-iconik-app".to_string(), "app-1".to_string()),
        ]
    );
    assert!(one(hook("h", json!({"headers": {}}))).headers.is_empty());
}

#[test]
fn invalid_header_names_are_reported() {
    for name in ["", "X Api", "x:y", "x\ny", "naïve", "a(b)"] {
        let found = webhook_problems(hook("h", json!({"headers": {name: "v"}})));
        assert_single(
            &found,
            "webhook \"h\"",
            "headers",
            "is not a valid header name",
        );
    }
}

#[test]
fn reserved_header_names_are_reported_in_any_case() {
    for name in [
        "Content-Type",
        "User-Agent",
        "webhook-id",
        "Webhook-Timestamp",
        "WEBHOOK-SIGNATURE",
        "Envoy-Webhooks-Delivery",
    ] {
        let found = webhook_problems(hook("h", json!({"headers": {name: "v"}})));
        assert_single(
            &found,
            "webhook \"h\"",
            "headers",
            "is set by the filter and cannot be configured",
        );
        assert!(found[0].message.contains(name));
    }
}

#[test]
fn header_values_must_be_single_line_strings() {
    let found = webhook_problems(hook(
        "h",
        json!({"headers": {"x-a": 1, "x-b": "two\r\nlines", "x-c": "nul\u{0}", "x-ok": "fine"}}),
    ));
    assert_eq!(found.len(), 3, "{found:#?}");
    assert!(found.iter().all(|p| p.field == "headers"));
    let text = ConfigError { problems: found }.to_string();
    assert!(
        text.contains("the value of \"x-a\" must be a string"),
        "{text}"
    );
    assert!(
        text.contains("the value of \"x-b\" contains a line break or NUL"),
        "{text}"
    );
    assert!(
        text.contains("the value of \"x-c\" contains a line break or NUL"),
        "{text}"
    );
}

#[test]
fn header_values_never_appear_in_errors() {
    const SECRET: &str = "s3cr3t-token-value";
    let broken_headers = [
        json!({"Content-Type": SECRET}),
        json!({"Bad Name": SECRET}),
        json!({"x-multi": format!("{SECRET}\r\nx-injected: 1")}),
        json!({"x-nested": {"value": SECRET}}),
        json!({"x-list": [SECRET]}),
        json!(format!("Authorization: Bearer {SECRET}")),
        json!([["Authorization", SECRET]]),
        json!([SECRET]),
    ];
    for headers in broken_headers {
        let found = webhook_problems(hook(
            "h",
            json!({"headers": headers.clone(), "query": "a="}),
        ));
        assert!(
            found.iter().any(|p| p.field == "headers"),
            "{headers} should be rejected: {found:#?}"
        );
        let text = ConfigError { problems: found }.to_string();
        assert!(
            !text.contains(SECRET),
            "a header value leaked for headers {headers}: {text}"
        );
    }
}

#[test]
fn headers_must_be_an_object() {
    let found = webhook_problems(hook("h", json!({"headers": "x-a: b"})));
    assert_single(
        &found,
        "webhook \"h\"",
        "headers",
        "expected an object of header names to values",
    );
}

#[test]
fn unknown_webhook_fields_are_named_even_when_null() {
    let found = webhook_problems(hook(
        "h",
        json!({"querry": "a=1", "Realm": "metadata", "enabled": true}),
    ));
    assert_eq!(found.len(), 3, "{found:#?}");
    for field in ["querry", "Realm", "enabled"] {
        let problem = only_problem(&found, "webhook \"h\"", field);
        assert!(problem.message.starts_with("unknown field"), "{problem}");
        assert!(problem.message.contains("query"), "lists the known fields");
    }
    let with_null: Value = serde_json::from_str(
        r#"{"id": "h", "event_type": "assets", "url": "http://r/", "querry": null}"#,
    )
    .expect("JSON");
    assert_single(
        &webhook_problems(with_null),
        "webhook \"h\"",
        "querry",
        "unknown field",
    );
}

#[test]
fn unknown_field_of_a_webhook_without_id_uses_its_position() {
    let found = problems(json!({"webhooks": [
        hook("a", json!({})),
        {"event_type": "assets", "url": "http://r/", "extra": 1},
    ]}));
    assert_eq!(found.len(), 2, "{found:#?}");
    only_problem(&found, "webhooks[1]", "id");
    only_problem(&found, "webhooks[1]", "extra");
}

// ---------------------------------------------------------------------------
// Every problem at once

#[test]
fn every_problem_of_every_webhook_is_reported_at_once() {
    let error = parse(json!({
        "webhooks": [
            hook("good", json!({})),
            hook("no-url", json!({"url": null})),
            hook("bad-query", json!({"query": "data.status="})),
            hook("bad-op", json!({"operation": "modify", "status": "paused"})),
            {"event_type": "assets", "url": "http://r/"},
            hook("bad-header", json!({"headers": {"Host": "x"}, "realm": ""})),
            hook("download", json!({"event_type": "collections", "operation": "download", "typo": 1})),
        ],
        "events": {"methods": [], "max_event_bytes": 0},
        "delivery": {"timeout_ms": 0, "retries": 3},
        "admin": {"path_prefix": "admin"},
    }))
    .expect_err("many problems");
    let found = &error.problems;
    let expected = [
        ("webhook \"no-url\"", "url"),
        ("webhook \"bad-query\"", "query"),
        ("webhook \"bad-op\"", "operation"),
        ("webhook \"bad-op\"", "status"),
        ("webhooks[4]", "id"),
        ("webhook \"bad-header\"", "headers"),
        ("webhook \"bad-header\"", "realm"),
        ("webhook \"download\"", "operation"),
        ("webhook \"download\"", "typo"),
        ("events", "methods"),
        ("events", "max_event_bytes"),
        ("delivery", "timeout_ms"),
        ("delivery", "retries"),
        ("admin", "path_prefix"),
        ("admin", "token"),
    ];
    for (place, field) in expected {
        only_problem(found, place, field);
    }
    assert_eq!(found.len(), expected.len(), "{found:#?}");
    assert!(
        !found.iter().any(|p| p.place.contains("good")),
        "the valid webhook has no problems"
    );

    let text = error.to_string();
    assert!(
        text.starts_with("invalid configuration (15 problems):"),
        "{text}"
    );
    assert_eq!(text.matches("\n  - ").count(), 15, "{text}");
    assert!(
        text.contains("webhook \"no-url\": field 'url': is required"),
        "{text}"
    );
}

#[test]
fn one_problem_is_not_plural() {
    let error = parse(json!({"webhooks": [hook("a", json!({"url": null}))]})).expect_err("bad");
    assert_eq!(
        error.to_string(),
        "invalid configuration (1 problem):\n  - webhook \"a\": field 'url': is required"
    );
}

#[test]
fn query_caret_lines_stay_indented_under_their_problem() {
    let error = parse(json!({"webhooks": [hook("a", json!({"query": "x="}))]})).expect_err("bad");
    let text = error.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 4, "{text}");
    assert!(
        lines[1].starts_with("  - webhook \"a\": field 'query': "),
        "{text}"
    );
    for line in &lines[2..] {
        assert!(
            line.starts_with("    "),
            "continuation not indented: {text}"
        );
    }
}

// ---------------------------------------------------------------------------
// events, delivery, admin

#[test]
fn events_settings() {
    let config = valid(json!({"webhooks": [], "events": {
        "methods": ["post", "Patch"],
        "path_prefixes": ["/a", "/b/"],
        "max_event_bytes": 1,
        "deliver_on": "response_2xx",
    }}));
    assert_eq!(config.events.methods, ["POST", "PATCH"]);
    assert_eq!(config.events.path_prefixes, ["/a", "/b/"]);
    assert_eq!(config.events.max_event_bytes, 1);
    assert_eq!(config.events.deliver_on, DeliverOn::Response2xx);

    let partial = valid(json!({"webhooks": [], "events": {"deliver_on": "request"}}));
    assert_eq!(partial.events, EventsConfig::default());

    let largest = valid(json!({"webhooks": [], "events": {"max_event_bytes": 16 * 1024 * 1024}}));
    assert_eq!(largest.events.max_event_bytes, 16 * 1024 * 1024);

    let routed = valid(json!({"webhooks": [], "events": {"selected_by_routes": true}}));
    assert!(routed.events.selected_by_routes);
    assert!(!EventsConfig::default().selected_by_routes);
}

#[test]
fn events_problems() {
    let cases = [
        (json!({"methods": []}), "methods", "at least one method"),
        (
            json!({"methods": "POST"}),
            "methods",
            "expected a list of strings",
        ),
        (
            json!({"methods": ["POST", 1]}),
            "methods",
            "expected a list of strings",
        ),
        (
            json!({"path_prefixes": []}),
            "path_prefixes",
            "at least one prefix",
        ),
        (
            json!({"path_prefixes": ["api"]}),
            "path_prefixes",
            "\"api\" must start with '/'",
        ),
        (
            json!({"max_event_bytes": 0}),
            "max_event_bytes",
            "from 1 to 16777216",
        ),
        (
            json!({"max_event_bytes": 16 * 1024 * 1024 + 1}),
            "max_event_bytes",
            "from 1 to 16777216",
        ),
        (
            json!({"max_event_bytes": -1}),
            "max_event_bytes",
            "found -1",
        ),
        (
            json!({"max_event_bytes": 1.5}),
            "max_event_bytes",
            "found 1.5",
        ),
        (
            json!({"max_event_bytes": "1024"}),
            "max_event_bytes",
            "found \"1024\"",
        ),
        (
            json!({"deliver_on": "response"}),
            "deliver_on",
            "unknown value \"response\"",
        ),
        (
            json!({"deliver_on": true}),
            "deliver_on",
            "expected a string",
        ),
        (json!({"method": ["POST"]}), "method", "unknown field"),
        (
            json!({"selected_by_routes": "yes"}),
            "selected_by_routes",
            "expected true or false, found a string",
        ),
        // Envoy's routes choose: a method list would silently mean nothing.
        (
            json!({"selected_by_routes": true, "methods": ["POST"]}),
            "methods",
            "not used with selected_by_routes",
        ),
        (
            json!({"selected_by_routes": true, "path_prefixes": ["/events"]}),
            "path_prefixes",
            "Envoy's routes choose the event requests",
        ),
    ];
    for (events, field, message) in cases {
        let found = problems(json!({"webhooks": [], "events": events}));
        assert_single(&found, "events", field, message);
    }
    assert_single(
        &problems(json!({"webhooks": [], "events": ["POST"]})),
        "events",
        "",
        "expected a JSON object",
    );
}

#[test]
fn delivery_settings_and_bounds() {
    let config = valid(json!({"webhooks": [], "delivery": {"failure_threshold": 1}}));
    assert_eq!(
        config.delivery,
        DeliveryPolicy {
            failure_threshold: 1,
            ..DeliveryPolicy::default()
        }
    );
    let cases = [
        ("timeout_ms", 0, 3_600_000),
        ("max_in_flight", 0, 1_000_000),
        ("failing_window_s", 0, 365 * 24 * 3600),
        ("failure_threshold", 0, 1_000_000),
    ];
    for (field, too_small, largest) in cases {
        valid(json!({"webhooks": [], "delivery": {field: largest}}));
        valid(json!({"webhooks": [], "delivery": {field: 1}}));
        for bad in [json!(too_small), json!(largest + 1), json!("10"), json!(-5)] {
            let found = problems(json!({"webhooks": [], "delivery": {field: bad}}));
            assert_single(&found, "delivery", field, "expected a whole number");
        }
    }
    assert_single(
        &problems(json!({"webhooks": [], "delivery": {"timeout": 5}})),
        "delivery",
        "timeout",
        "unknown field",
    );
}

#[test]
fn admin_with_literal_or_environment_token() {
    let literal =
        valid(json!({"webhooks": [], "admin": {"path_prefix": "/admin", "token": "t0k"}}));
    assert_eq!(
        literal.admin,
        Some(AdminConfig {
            path_prefix: "/admin".to_string(),
            token: AdminToken::Literal("t0k".to_string()),
        })
    );
    let env =
        valid(json!({"webhooks": [], "admin": {"path_prefix": "/a/b", "token_env": "TOKEN"}}));
    assert_eq!(
        env.admin.map(|admin| admin.token),
        Some(AdminToken::Env("TOKEN".to_string()))
    );
}

#[test]
fn admin_problems() {
    let cases = [
        (json!({"token": "t"}), "path_prefix", "is required"),
        (
            json!({"path_prefix": "/", "token": "t"}),
            "path_prefix",
            "must start with '/'",
        ),
        (
            json!({"path_prefix": "admin", "token": "t"}),
            "path_prefix",
            "must start with '/'",
        ),
        (
            json!({"path_prefix": "/admin/", "token": "t"}),
            "path_prefix",
            "not end with '/'",
        ),
        (
            json!({"path_prefix": "/admin"}),
            "token",
            "needs a bearer token",
        ),
        (
            json!({"path_prefix": "/admin", "token": ""}),
            "token",
            "must not be empty",
        ),
        (
            json!({"path_prefix": "/admin", "token_env": ""}),
            "token",
            "needs a bearer token",
        ),
        (
            json!({"path_prefix": "/admin", "token": "t", "token_env": "T"}),
            "token",
            "not both",
        ),
        (
            json!({"path_prefix": "/admin", "token": 5}),
            "token",
            "expected a string",
        ),
        (
            json!({"path_prefix": "/admin", "token": "t", "tokens": "x"}),
            "tokens",
            "unknown field",
        ),
    ];
    for (admin, field, message) in cases {
        let found = problems(json!({"webhooks": [], "admin": admin.clone()}));
        assert!(
            found
                .iter()
                .any(|p| p.place == "admin" && p.field == field && p.message.contains(message)),
            "{admin}: expected a problem at {field} containing {message:?}, got {found:#?}"
        );
        assert!(found.iter().all(|p| p.place == "admin" && p.field == field));
    }
}

#[test]
fn admin_token_never_appears_in_errors() {
    let found = problems(json!({"webhooks": [], "admin": {
        "path_prefix": "/admin/", "token": "sup3r-secret", "token_env": "X"
    }}));
    let text = ConfigError { problems: found }.to_string();
    assert!(!text.contains("sup3r-secret"), "{text}");
}

// ---------------------------------------------------------------------------
// Fingerprints

fn fingerprint(webhook: Value) -> u64 {
    one(webhook).fingerprint
}

fn full_hook() -> Value {
    json!({
        "id": "fp",
        "name": "Name",
        "description": "Description",
        "event_type": "assets",
        "realm": "metadata",
        "operation": "update",
        "object_id": "o-1",
        "url": "https://r.example.com/hook",
        "cluster": "receivers",
        "status": "ENABLED",
        "query": "data.a=1",
        "headers": {"authorization": "Bearer one", "x-b": "b"},
    })
}

#[test]
fn identical_definitions_have_equal_fingerprints() {
    let reordered: Value = serde_json::from_str(
        r#"{
            "headers": {"x-b": "b", "authorization": "Bearer one"},
            "query": "data.a=1", "status": "ENABLED", "cluster": "receivers",
            "url": "https://r.example.com/hook", "object_id": "o-1", "operation": "update",
            "realm": "metadata", "event_type": "assets", "description": "Description",
            "name": "Name", "id": "fp"
        }"#,
    )
    .expect("JSON");
    assert_eq!(fingerprint(full_hook()), fingerprint(full_hook()));
    assert_eq!(
        fingerprint(full_hook()),
        fingerprint(reordered),
        "key order and whitespace do not make a definition different"
    );
    // A definition keeps its fingerprint wherever it sits in the list.
    let config = valid(json!({"webhooks": [hook("before", json!({})), full_hook()]}));
    assert_eq!(config.webhooks[1].fingerprint, fingerprint(full_hook()));
}

#[test]
fn changing_any_field_changes_the_fingerprint() {
    let base = fingerprint(full_hook());
    let changes = [
        ("id", json!("fp2")),
        ("name", json!("Other name")),
        ("description", json!("Other")),
        ("event_type", json!("collections")),
        ("realm", json!("formats")),
        ("operation", json!("create")),
        ("object_id", json!("o-2")),
        ("url", json!("https://r.example.com/hook2")),
        ("cluster", json!("other")),
        ("status", json!("FAILING")),
        ("query", json!("data.a=2")),
        (
            "headers",
            json!({"authorization": "Bearer two", "x-b": "b"}),
        ),
        ("headers", json!({"authorization": "Bearer one"})),
    ];
    let mut seen = vec![base];
    for (field, value) in changes {
        let mut changed = full_hook();
        changed[field] = value.clone();
        let print = fingerprint(changed);
        assert_ne!(
            print, base,
            "changing {field} to {value} kept the fingerprint"
        );
        assert!(!seen.contains(&print), "{field} = {value} collides");
        seen.push(print);
    }
    for field in [
        "name",
        "realm",
        "operation",
        "object_id",
        "query",
        "headers",
    ] {
        let mut removed = full_hook();
        if let Some(object) = removed.as_object_mut() {
            object.remove(field);
        }
        assert_ne!(
            fingerprint(removed),
            base,
            "removing {field} kept the fingerprint"
        );
    }
}

#[test]
fn a_header_given_twice_in_different_case_is_a_problem() {
    let found = webhook_problems(hook(
        "twice",
        json!({"headers": {"X-Token": "secret-one", "x-token": "secret-two"}}),
    ));
    assert_single(&found, "webhook \"twice\"", "headers", "is given twice");
    assert!(!found[0].message.contains("secret"), "{}", found[0].message);
}

// ---------------------------------------------------------------------------
// Limits and the validation of what goes on the wire

#[test]
fn header_names_that_change_routing_or_framing_are_refused() {
    let cases = [
        (":authority", "is a pseudo-header"),
        (":path", "is a pseudo-header"),
        (
            "X-Envoy-Upstream-Rq-Timeout-Ms",
            "x-envoy-* headers change how Envoy",
        ),
        ("x-envoy-retry-on", "x-envoy-* headers change how Envoy"),
        ("Connection", "hop-by-hop or framing header"),
        ("keep-alive", "hop-by-hop or framing header"),
        ("Proxy-Connection", "hop-by-hop or framing header"),
        ("transfer-encoding", "hop-by-hop or framing header"),
        ("TE", "hop-by-hop or framing header"),
        ("upgrade", "hop-by-hop or framing header"),
        ("trailer", "hop-by-hop or framing header"),
        ("HOST", "hop-by-hop or framing header"),
        ("content-length", "hop-by-hop or framing header"),
    ];
    for (name, message) in cases {
        for section in ["webhook", "dead_letter"] {
            let headers = json!({ name: "v" });
            let found = match section {
                "webhook" => webhook_problems(hook("h", json!({ "headers": headers }))),
                _ => problems(json!({"webhooks": [], "dead_letter": {
                    "url": "http://dlq:8080/x", "headers": headers}})),
            };
            let place = if section == "webhook" {
                "webhook \"h\""
            } else {
                "dead_letter"
            };
            assert_single(&found, place, "headers", message);
            assert!(found[0].message.contains(name), "{}", found[0].message);
        }
    }
    // Near misses are ordinary headers.
    let webhook = one(hook(
        "h",
        json!({"headers": {"x-envoy": "a", "envoy-x": "b", "x-teapot": "c", "hosts": "d"}}),
    ));
    assert_eq!(webhook.headers.len(), 4);
}

#[test]
fn header_values_with_control_characters_or_outer_whitespace_are_refused() {
    let cases = [
        ("bell\u{7}", "contains a control character"),
        ("del\u{7f}", "contains a control character"),
        ("esc\u{1b}[0m", "contains a control character"),
        ("cr\rx", "contains a line break or NUL"),
        (" lead", "starts or ends with whitespace"),
        ("trail ", "starts or ends with whitespace"),
        ("\ttab", "starts or ends with whitespace"),
    ];
    for (value, message) in cases {
        for section in ["webhook", "dead_letter"] {
            let headers = json!({ "X-Token": value });
            let found = match section {
                "webhook" => webhook_problems(hook("h", json!({ "headers": headers }))),
                _ => problems(json!({"webhooks": [], "dead_letter": {
                    "url": "http://dlq:8080/x", "headers": headers}})),
            };
            let place = if section == "webhook" {
                "webhook \"h\""
            } else {
                "dead_letter"
            };
            assert_single(&found, place, "headers", message);
            let problem = &found[0].message;
            assert!(
                problem.contains("\"X-Token\""),
                "names the header: {problem}"
            );
            let secret = value.trim_matches(|c: char| c.is_whitespace() || c.is_control());
            assert!(!problem.contains(secret), "echoes the value: {problem}");
        }
    }
    // A tab inside, and text beyond ASCII, are fine.
    let webhook = one(hook(
        "h",
        json!({"headers": {"x-a": "a\tb", "x-b": "café"}}),
    ));
    assert_eq!(webhook.headers.len(), 2);
}

#[test]
fn cluster_names_are_checked() {
    for cluster in [
        "outbound|8080||svc.ns.svc.cluster.local",
        "dynamic_forward_proxy_cluster",
        "a-b.c:d/e",
    ] {
        assert_eq!(
            one(hook("h", json!({ "cluster": cluster }))).cluster,
            cluster
        );
    }
    let cases = [
        ("with space".to_string(), "contains whitespace"),
        ("tab\there".to_string(), "contains whitespace"),
        ("nul\u{0}".to_string(), "contains a control character"),
        ("semi;colon".to_string(), "contains ';'"),
        ("ünicode".to_string(), "contains 'ü'"),
        ("x".repeat(256), "256 bytes long; the limit is 255"),
    ];
    for (cluster, message) in cases {
        let found = webhook_problems(hook("h", json!({ "cluster": cluster })));
        assert_single(&found, "webhook \"h\"", "cluster", message);
        let found = problems(json!({"webhooks": [], "dead_letter": {
            "url": "http://dlq:8080/x", "cluster": cluster}}));
        assert_single(&found, "dead_letter", "cluster", message);
    }
    assert_eq!(
        one(hook("h", json!({"cluster": "x".repeat(255)})))
            .cluster
            .len(),
        255
    );
}

#[test]
fn admin_token_must_be_visible_ascii_and_is_never_echoed() {
    let cases = [
        ("Bearer-ish secret", "contains whitespace at character 11"),
        (" secret", "starts or ends with whitespace"),
        ("secret\n", "starts or ends with whitespace"),
        ("sec\u{0}ret", "contains a control character at character 4"),
        ("sec\u{7f}ret", "contains a control character"),
        ("sécret", "contains a non-ASCII character at character 2"),
    ];
    for (token, message) in cases {
        let found =
            problems(json!({"webhooks": [], "admin": {"path_prefix": "/admin", "token": token}}));
        assert_single(&found, "admin", "token", message);
        let text = ConfigError { problems: found }.to_string();
        assert!(!text.contains("ret"), "the token leaked: {text}");
        // The runtime checks a token from token_env with the same rule.
        let reason = validate_admin_token(token).expect_err("refused");
        assert!(
            reason.contains(message) && !reason.contains("ret"),
            "{reason}"
        );
    }
    assert_eq!(validate_admin_token("abc.DEF-123_~+/="), Ok(()));
    assert_eq!(
        validate_admin_token(""),
        Err("must not be empty".to_string())
    );
}

#[test]
fn per_request_limits() {
    let config = valid(json!({"webhooks": [], "events": {
        "max_events_per_request": 1, "max_deliveries_per_request": 1_000_000}}));
    assert_eq!(config.events.max_events_per_request, 1);
    assert_eq!(config.events.max_deliveries_per_request, 1_000_000);
    for field in ["max_events_per_request", "max_deliveries_per_request"] {
        for bad in [
            json!(0),
            json!(1_000_001),
            json!(-1),
            json!(2.5),
            json!("10"),
        ] {
            let found = problems(json!({"webhooks": [], "events": { field: bad }}));
            assert_single(
                &found,
                "events",
                field,
                "expected a whole number from 1 to 1000000",
            );
        }
    }
}

#[test]
fn held_bytes_bounds_and_relations() {
    const MIB: u64 = 1024 * 1024;
    let config = valid(json!({"webhooks": [], "delivery": {
        "max_held_bytes": 768 * MIB, "max_pending_bytes": 768 * MIB}}));
    assert_eq!(config.delivery.max_held_bytes, 768 * 1024 * 1024);
    assert_eq!(config.delivery.max_pending_bytes, 768 * 1024 * 1024);
    let small = valid(json!({"webhooks": [], "delivery": {
        "max_held_bytes": MIB, "max_pending_bytes": MIB}, "events": {"max_event_bytes": MIB / 2}}));
    assert_eq!(small.delivery.max_held_bytes, 1024 * 1024);

    for bad in [json!(MIB - 1), json!(768 * MIB + 1), json!(8 * 1024 * MIB)] {
        let found = problems(json!({"webhooks": [], "delivery": {"max_held_bytes": bad}}));
        assert_single(
            &found,
            "delivery",
            "max_held_bytes",
            "from 1048576 to 805306368",
        );
    }

    let found = problems(json!({"webhooks": [], "delivery": {"max_pending_bytes": 512 * MIB}}));
    assert_single(
        &found,
        "delivery",
        "max_held_bytes",
        "is 268435456, less than delivery.max_pending_bytes (536870912)",
    );
    let found = problems(json!({"webhooks": [],
        "delivery": {"max_held_bytes": 16 * MIB, "max_pending_bytes": MIB},
        "events": {"max_event_bytes": 9 * MIB}}));
    assert_single(
        &found,
        "delivery",
        "max_held_bytes",
        "less than twice events.max_event_bytes (18874368)",
    );
}

#[test]
fn sizes_beyond_the_heap_are_refused_not_truncated() {
    // 8 GiB is 0 in a 32-bit usize: such values must be refused, never wrapped.
    let eight_gib: u64 = 8 * 1024 * 1024 * 1024;
    for (section, field) in [
        ("delivery", "max_pending_bytes"),
        ("delivery", "max_held_bytes"),
        ("events", "max_event_bytes"),
    ] {
        for value in [eight_gib, eight_gib + 1024, u64::MAX] {
            let found = problems(json!({"webhooks": [], section: { field: value }}));
            assert_single(&found, section, field, "expected a whole number from");
        }
    }
    let found =
        problems(json!({"webhooks": [], "delivery": {"max_pending_bytes": 768 * 1024 * 1024 + 1}}));
    assert_single(
        &found,
        "delivery",
        "max_pending_bytes",
        "from 1024 to 805306368",
    );
}

#[test]
fn a_query_over_the_regex_limits_names_the_webhook_field_and_regex() {
    let cases = [
        (
            "data.name=/[a-z]{1,1000}[0-9]{1,1000}x/",
            "regex /[a-z]{1,1000}[0-9]{1,1000}x/ at column 11 repeats something up to 1000 times; the limit is 100",
        ),
        (
            "a=1 AND b=/(x{20}){20}/i",
            "regex /(x{20}){20}/i at column 11 repeats something up to 400 times",
        ),
        (
            "s=/[a-z]{100}[a-z]{100}[a-z]{100}[a-z]{100}[a-z]{100}[a-z]{100}[a-z]{100}[a-z]{100}[a-z]{100}/",
            "compiles to more than 32768 bytes, the limit",
        ),
    ];
    for (query, message) in cases {
        let found = webhook_problems(hook("big-regex", json!({ "query": query })));
        assert_single(&found, "webhook \"big-regex\"", "query", message);
    }
}

#[test]
fn a_smaller_held_budget_alone_lowers_the_pending_bytes_default() {
    let config = PluginConfig::from_value(
        &json!({"webhooks": [], "delivery": {"max_held_bytes": 33_554_432}}),
    )
    .expect("setting only max_held_bytes is enough");
    assert_eq!(config.delivery.max_held_bytes, 33_554_432);
    assert_eq!(config.delivery.max_pending_bytes, 33_554_432);
    // Both set and inconsistent: refused, naming both.
    let problems = PluginConfig::from_value(&json!({"webhooks": [], "delivery": {
        "max_held_bytes": 33_554_432, "max_pending_bytes": 67_108_864}}))
    .expect_err("inconsistent");
    assert!(
        problems.to_string().contains("max_pending_bytes"),
        "{problems}"
    );
}

/// The fingerprint keys a webhook's status in shared data: it must not change
/// with the toolchain or the build, only with the definition.
#[test]
fn fingerprints_are_stable_sha256_of_the_canonical_definition() {
    use envoy_webhooks::config::fingerprint_of;
    let definition = json!({"url": "http://r/x", "id": "h", "event_type": "assets"});
    // SHA-256 of `{"event_type":"assets","id":"h","url":"http://r/x"}`, first 8 bytes.
    assert_eq!(fingerprint_of(&definition), 0x37f6_0c95_0e08_e9c7);
    let config =
        PluginConfig::from_value(&json!({"webhooks": [definition.clone()]})).expect("valid");
    assert_eq!(config.webhooks[0].fingerprint, fingerprint_of(&definition));
    // Key order in the configuration does not matter; any change of content does.
    let reordered = json!({"event_type": "assets", "id": "h", "url": "http://r/x"});
    assert_eq!(fingerprint_of(&reordered), fingerprint_of(&definition));
    let changed = json!({"event_type": "assets", "id": "h", "url": "http://r/y"});
    assert_ne!(fingerprint_of(&changed), fingerprint_of(&definition));
}

#[test]
fn cluster_state_keeps_records_no_envoy_has_for_orphan_retention_s() {
    let with = |etcd_extra: Value| {
        let mut etcd = json!({"cluster": "etcd", "authority": "etcd:2379"});
        for (key, value) in etcd_extra.as_object().expect("an object") {
            etcd[key] = value.clone();
        }
        json!({"webhooks": [hook("a", json!({}))], "cluster_state": {"etcd": etcd}})
    };
    let default = valid(with(json!({})));
    assert_eq!(
        default.cluster_state.map(|etcd| etcd.orphan_retention_s),
        Some(3600)
    );
    let set = valid(with(json!({"orphan_retention_s": 86400})));
    assert_eq!(
        set.cluster_state.map(|etcd| etcd.orphan_retention_s),
        Some(86400)
    );
    for bad in [
        json!(0),
        json!(-5),
        json!("1h"),
        json!(31_536_001),
        json!(1.5),
    ] {
        let found = problems(with(json!({ "orphan_retention_s": bad })));
        assert_eq!(found.len(), 1, "{bad}: {found:?}");
        assert_eq!(found[0].place, "cluster_state.etcd");
        assert_eq!(found[0].field, "orphan_retention_s");
        assert!(
            found[0].message.contains("from 1 to 31536000"),
            "{}",
            found[0].message
        );
    }
}

#[test]
fn propagate_headers_are_checked_like_configured_headers_and_never_credentials() {
    let with = |names: Value| json!({"webhooks": [], "delivery": {"propagate_headers": names}});
    assert_eq!(
        valid(with(json!(["TraceParent", "b3"])))
            .delivery
            .propagate_headers,
        ["traceparent", "b3"]
    );
    assert!(valid(with(json!([]))).delivery.propagate_headers.is_empty());
    for (names, teaches) in [
        (json!([":path"]), "pseudo-header"),
        (json!(["connection"]), "hop-by-hop"),
        (json!(["x-envoy-retry-on"]), "x-envoy-"),
        (json!(["webhook-signature"]), "set by the filter"),
        (json!(["envoy-webhooks-delivery"]), "set by the filter"),
        (json!(["Authorization"]), "credentials"),
        (json!(["cookie"]), "credentials"),
        (json!(["a b"]), "not a valid header name"),
        (json!(["traceparent", "TRACEPARENT"]), "given twice"),
        (json!([7]), "a header name (a string)"),
        (json!("traceparent"), "a list of header names"),
        (
            json!((0..17).map(|i| format!("h{i}")).collect::<Vec<_>>()),
            "at most 16",
        ),
    ] {
        let found = problems(with(names.clone()));
        assert_eq!(found.len(), 1, "{names}: {found:?}");
        assert_eq!(found[0].place, "delivery");
        assert_eq!(found[0].field, "propagate_headers");
        assert!(
            found[0].message.contains(teaches),
            "{names}: {}",
            found[0].message
        );
    }
}

#[test]
fn delivery_clusters_pick_the_cluster_of_a_webhook_without_one_by_its_urls_scheme() {
    let config = valid(json!({
        "webhooks": [
            hook("plain", json!({"url": "http://receiver.example:8080/in"})),
            hook("secure", json!({"url": "https://receiver.example/in"})),
            hook("named", json!({"url": "https://receiver.example/in", "cluster": "mtls_receiver"})),
        ],
        "delivery": {"clusters": {"http": "dfp_http", "https": "dfp_https"}},
        "dead_letter": {"url": "https://dead-letters.example/in"},
    }));
    let clusters: Vec<&str> = config.webhooks.iter().map(|w| w.cluster.as_str()).collect();
    assert_eq!(clusters, ["dfp_http", "dfp_https", "mtls_receiver"]);
    assert_eq!(
        config.dead_letter.map(|d| d.cluster),
        Some("dfp_https".to_string())
    );
    // Without delivery.clusters: the URL's host, as before.
    let config =
        valid(json!({"webhooks": [hook("plain", json!({"url": "https://receiver:8443/in"}))]}));
    assert_eq!(config.webhooks[0].cluster, "receiver");
}

#[test]
fn a_scheme_some_webhook_needs_without_a_cluster_is_refused() {
    let found = problems(json!({
        "webhooks": [
            hook("secure", json!({"url": "https://receiver.example/in"})),
            hook("named", json!({"url": "https://receiver.example/in", "cluster": "mine"})),
            hook("plain", json!({"url": "http://receiver.example/in"})),
        ],
        "delivery": {"clusters": {"http": "dfp_http"}},
    }));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].place, "webhook \"secure\"");
    assert_eq!(found[0].field, "url");
    assert!(
        found[0]
            .message
            .contains("https:// URL and delivery.clusters names no \"https\" cluster"),
        "{}",
        found[0].message
    );
    let found = problems(json!({
        "webhooks": [],
        "delivery": {"clusters": {"http": "dfp_http"}},
        "dead_letter": {"url": "https://dead-letters.example/in"},
    }));
    assert_eq!(
        (found[0].place.as_str(), found[0].field.as_str()),
        ("dead_letter", "url")
    );
    for (clusters, teaches) in [
        (json!({"ftp": "x"}), "only \"http\" and \"https\""),
        (json!({"https": ""}), "must not be empty"),
        (json!({"https": "bad name"}), "cluster names are letters"),
        (json!({"https": 7}), "a cluster name (a string)"),
        (json!(["dfp"]), "expected {\"http\""),
    ] {
        let found = problems(json!({"webhooks": [], "delivery": {"clusters": clusters}}));
        assert_eq!(found.len(), 1, "{clusters}: {found:?}");
        assert_eq!(
            (found[0].place.as_str(), found[0].field.as_str()),
            ("delivery", "clusters")
        );
        assert!(
            found[0].message.contains(teaches),
            "{clusters}: {}",
            found[0].message
        );
    }
}
