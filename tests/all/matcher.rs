//! Which webhooks fire for an event: filters, configuration order, statuses,
//! case-insensitivity, and a property test proving that the index never
//! changes the result of a plain linear scan.

use envoy_webhooks::config::{Operation, PluginConfig, WebhookDefinition};
use envoy_webhooks::matcher::{EventKeys, Matcher};
use envoy_webhooks::status::Status;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

fn definitions(webhooks: Vec<Value>) -> Vec<WebhookDefinition> {
    match PluginConfig::from_value(&json!({ "webhooks": webhooks })) {
        Ok(config) => config.webhooks,
        Err(e) => panic!("test definitions should be valid:\n{e}"),
    }
}

fn matcher(webhooks: Vec<Value>) -> Matcher {
    Matcher::new(definitions(webhooks))
}

/// A webhook `id` on assets, changed by `extra`.
fn hook(id: &str, extra: Value) -> Value {
    let mut webhook = json!({"id": id, "event_type": "assets", "url": "http://receiver/"});
    if let (Some(object), Some(extra)) = (webhook.as_object_mut(), extra.as_object()) {
        object.extend(extra.clone());
    }
    webhook
}

fn fired(matcher: &Matcher, event: &Value) -> Vec<usize> {
    let mut out = Vec::new();
    matcher.matching(event, &mut out);
    out
}

/// The ids of the webhooks that fire for `event`.
fn fired_ids(matcher: &Matcher, event: &Value) -> Vec<String> {
    fired(matcher, event)
        .into_iter()
        .map(|index| matcher.definitions()[index].id.clone())
        .collect()
}

fn seed(name: &str) -> Value {
    let text = match name {
        "formats" => include_str!("../fixtures/seed-formats-event.json"),
        _ => include_str!("../fixtures/seed-metadata-event.json"),
    };
    serde_json::from_str(text).expect("fixture JSON")
}

#[test]
fn results_come_in_configuration_order() {
    // Interleave specific and "any" definitions so that index lists must be merged.
    let m = matcher(vec![
        hook("any-realm-any-op", json!({})),
        hook(
            "formats-update",
            json!({"realm": "formats", "operation": "update"}),
        ),
        hook("collections", json!({"event_type": "collections"})),
        hook("formats-any-op", json!({"realm": "formats"})),
        hook("any-realm-update", json!({"operation": "update"})),
        hook("metadata", json!({"realm": "metadata"})),
        hook(
            "formats-update-again",
            json!({"realm": "formats", "operation": "update"}),
        ),
    ]);
    let event = seed("formats");
    assert_eq!(fired(&m, &event), [0, 1, 3, 4, 6]);
    assert_eq!(
        fired_ids(&m, &seed("metadata")),
        ["any-realm-any-op", "any-realm-update", "metadata"]
    );
}

#[test]
fn matching_appends_to_out_without_touching_what_is_there() {
    let m = matcher(vec![
        hook("b", json!({"realm": "formats"})),
        hook("a", json!({})),
    ]);
    let mut out = vec![42, 7];
    m.matching(&seed("formats"), &mut out);
    assert_eq!(out, [42, 7, 0, 1]);
    m.matching(&seed("formats"), &mut out);
    assert_eq!(out, [42, 7, 0, 1, 0, 1]);
}

#[test]
fn disabled_never_fires_but_failing_and_failed_are_returned() {
    let m = matcher(vec![
        hook("enabled", json!({"status": "ENABLED"})),
        hook("disabled", json!({"status": "DISABLED"})),
        hook("failing", json!({"status": "FAILING"})),
        hook("failed", json!({"status": "failed"})),
        hook(
            "disabled-too",
            json!({"status": "disabled", "realm": "formats"}),
        ),
    ]);
    assert_eq!(fired(&m, &seed("formats")), [0, 2, 3]);
    // Indices still refer to the full configuration, disabled ones included.
    assert_eq!(m.definitions().len(), 5);
    assert_eq!(m.definitions()[1].status, Status::Disabled);
    assert_eq!(m.definitions()[2].id, "failing");
}

#[test]
fn event_type_realm_and_operation_are_case_insensitive() {
    let m = matcher(vec![
        hook(
            "upper-def",
            json!({"event_type": "ASSETS", "realm": "FORMATS", "operation": "UPDATE"}),
        ),
        hook(
            "lower-def",
            json!({"event_type": "assets", "realm": "formats", "operation": "update"}),
        ),
    ]);
    for (event_type, realm, operation) in [
        ("assets", "formats", "update"),
        ("ASSETS", "FORMATS", "UPDATE"),
        ("Assets", "Formats", "Update"),
    ] {
        let event = json!({"event_type": event_type, "realm": realm, "operation": operation});
        assert_eq!(fired(&m, &event), [0, 1], "{event}");
    }
}

#[test]
fn event_type_must_match() {
    let m = matcher(vec![
        hook("assets", json!({})),
        hook("collections", json!({"event_type": "collections"})),
    ]);
    assert_eq!(
        fired_ids(&m, &json!({"event_type": "collections"})),
        ["collections"]
    );
    assert_eq!(fired_ids(&m, &json!({"event_type": "assets"})), ["assets"]);
    assert!(fired(&m, &json!({"event_type": "jobs"})).is_empty());
    assert!(fired(&m, &json!({"event_type": "asset"})).is_empty());
    assert!(fired(&m, &json!({"event_type": "assets "})).is_empty());
}

#[test]
fn missing_or_non_string_event_type_matches_nothing() {
    let m = matcher(vec![hook("any", json!({}))]);
    let mut formats = seed("formats");
    if let Some(object) = formats.as_object_mut() {
        object.remove("event_type");
    }
    assert!(fired(&m, &formats).is_empty());
    for event in [
        json!({"realm": "formats", "operation": "update"}),
        json!({"event_type": null}),
        json!({"event_type": ["assets"]}),
        json!({"event_type": 1}),
        json!({"data": {"event_type": "assets"}}),
        json!(["assets"]),
        json!("assets"),
    ] {
        assert!(fired(&m, &event).is_empty(), "{event}");
    }
}

#[test]
fn realm_filter() {
    let m = matcher(vec![
        hook("metadata", json!({"realm": "metadata"})),
        hook("any", json!({})),
    ]);
    assert_eq!(
        fired_ids(&m, &json!({"event_type": "assets", "realm": "metadata"})),
        ["metadata", "any"]
    );
    assert_eq!(
        fired_ids(&m, &json!({"event_type": "assets", "realm": "formats"})),
        ["any"]
    );
    // An event without a realm (or with a non-string one) only meets "any realm".
    assert_eq!(fired_ids(&m, &json!({"event_type": "assets"})), ["any"]);
    assert_eq!(
        fired_ids(&m, &json!({"event_type": "assets", "realm": 3})),
        ["any"]
    );
}

#[test]
fn operation_filter() {
    let m = matcher(vec![
        hook("create", json!({"operation": "create"})),
        hook("delete", json!({"operation": "delete"})),
        hook("purge", json!({"operation": "purge"})),
        hook("restore", json!({"operation": "restore"})),
        hook("update", json!({"operation": "update"})),
        hook("download", json!({"operation": "download"})),
        hook("all", json!({"operation": "all"})),
        hook("absent", json!({})),
    ]);
    for (index, operation) in ["create", "delete", "purge", "restore", "update", "download"]
        .into_iter()
        .enumerate()
    {
        let event = json!({"event_type": "assets", "operation": operation});
        assert_eq!(fired(&m, &event), [index, 6, 7], "{operation}");
    }
}

#[test]
fn unknown_or_missing_event_operation_only_matches_any_operation() {
    let m = matcher(vec![
        hook("update", json!({"operation": "update"})),
        hook("all", json!({"operation": "ALL"})),
        hook("absent", json!({})),
    ]);
    for event in [
        json!({"event_type": "assets", "operation": "modify"}),
        json!({"event_type": "assets", "operation": "all"}),
        json!({"event_type": "assets", "operation": ""}),
        json!({"event_type": "assets", "operation": 5}),
        json!({"event_type": "assets"}),
    ] {
        assert_eq!(fired(&m, &event), [1, 2], "{event}");
    }
}

#[test]
fn object_id_filter_uses_the_top_level_object_id() {
    let formats_object = "918728e2-bc1c-11ed-aaef-66cff3148306";
    let m = matcher(vec![
        hook("this-object", json!({"object_id": formats_object})),
        hook(
            "other-object",
            json!({"object_id": "1fa53a56-932d-11ed-9b47-7a40066d5234"}),
        ),
        hook("any-object", json!({})),
    ]);
    assert_eq!(
        fired_ids(&m, &seed("formats")),
        ["this-object", "any-object"]
    );
    assert_eq!(
        fired_ids(&m, &seed("metadata")),
        ["other-object", "any-object"]
    );

    // Exact: not case-insensitive, not nested, not a number.
    let cases = [
        json!({"event_type": "assets", "object_id": formats_object.to_uppercase()}),
        json!({"event_type": "assets", "data": {"object_id": formats_object}}),
        json!({"event_type": "assets"}),
        json!({"event_type": "assets", "object_id": null}),
        json!({"event_type": "assets", "object_id": [formats_object]}),
    ];
    for event in cases {
        assert_eq!(fired_ids(&m, &event), ["any-object"], "{event}");
    }
}

#[test]
fn query_filter() {
    let m = matcher(vec![
        hook(
            "seed-query",
            json!({
                "realm": "formats",
                "query": "data.status=\"ACTIVE\" AND (data.components.metadata.format=\"AVC\" OR data.components.metadata.format=\"MPEG-4\")",
            }),
        ),
        hook("online-only", json!({"query": "data.is_online=true"})),
        hook(
            "share",
            json!({"query": "data.metadata_values.share.field_values.value=\"true\""}),
        ),
        hook(
            "by-user",
            json!({"query": "user_id=\"1fb4c6f8-cded-11eb-b943-669489a791b1\""}),
        ),
        hook(
            "deleted-by-nobody",
            json!({"query": "data.deleted_by_user=null"}),
        ),
    ]);
    assert_eq!(
        fired_ids(&m, &seed("formats")),
        ["seed-query", "deleted-by-nobody"]
    );
    assert_eq!(
        fired_ids(&m, &seed("metadata")),
        ["share", "by-user", "deleted-by-nobody"]
    );

    let mut archived = seed("formats");
    archived["data"]["status"] = json!("ARCHIVED");
    archived["data"]["is_online"] = json!(true);
    assert_eq!(
        fired_ids(&m, &archived),
        ["online-only", "deleted-by-nobody"]
    );
}

#[test]
fn all_filters_must_hold_together() {
    let m = matcher(vec![hook(
        "everything",
        json!({
            "realm": "formats",
            "operation": "update",
            "object_id": "918728e2-bc1c-11ed-aaef-66cff3148306",
            "query": "data.status=\"ACTIVE\"",
        }),
    )]);
    let event = seed("formats");
    assert_eq!(fired(&m, &event), [0]);
    for (field, value) in [
        ("event_type", json!("collections")),
        ("realm", json!("metadata")),
        ("operation", json!("create")),
        ("object_id", json!("another")),
    ] {
        let mut changed = event.clone();
        changed[field] = value;
        assert!(fired(&m, &changed).is_empty(), "{field} changed");
    }
    let mut inactive = event.clone();
    inactive["data"]["status"] = json!("DELETED");
    assert!(fired(&m, &inactive).is_empty());
}

#[test]
fn no_definitions_match_nothing() {
    let m = Matcher::new(Vec::new());
    assert!(fired(&m, &seed("formats")).is_empty());
    assert!(m.definitions().is_empty());
}

#[test]
fn event_keys_are_the_top_level_strings() {
    let event = seed("formats");
    let keys = EventKeys::of(&event);
    assert_eq!(keys.event_type, Some("assets"));
    assert_eq!(keys.realm, Some("formats"));
    assert_eq!(keys.operation, Some("update"));
    assert_eq!(keys.object_id, Some("918728e2-bc1c-11ed-aaef-66cff3148306"));
    let odd = json!({"realm": 1, "operation": null});
    let keys = EventKeys::of(&odd);
    assert_eq!(
        (keys.event_type, keys.realm, keys.operation, keys.object_id),
        (None, None, None, None)
    );
}

// ---------------------------------------------------------------------------
// The index against a linear scan

/// What the matcher must compute, written as plainly as possible.
fn naive(definitions: &[WebhookDefinition], event: &Value) -> Vec<usize> {
    let text = |name: &str| event.get(name).and_then(Value::as_str);
    let Some(event_type) = text("event_type") else {
        return Vec::new();
    };
    let operation = text("operation").and_then(Operation::parse);
    definitions
        .iter()
        .enumerate()
        .filter(|(_, d)| d.status != Status::Disabled)
        .filter(|(_, d)| d.event_type.eq_ignore_ascii_case(event_type))
        .filter(|(_, d)| match &d.realm {
            None => true,
            Some(realm) => text("realm").is_some_and(|r| realm.eq_ignore_ascii_case(r)),
        })
        .filter(|(_, d)| d.operation.is_none() || d.operation == operation)
        .filter(|(_, d)| d.object_id.is_none() || d.object_id.as_deref() == text("object_id"))
        .filter(|(_, d)| d.query.matches(event))
        .map(|(index, _)| index)
        .collect()
}

const EVENT_TYPES: [&str; 4] = ["assets", "ASSETS", "collections", "Jobs"];
const REALMS: [&str; 5] = ["metadata", "Metadata", "formats", "files", "FILES"];
const OPERATIONS: [&str; 9] = [
    "create", "delete", "PURGE", "restore", "update", "Update", "download", "all", "bogus",
];
const OBJECT_IDS: [&str; 3] = ["o-1", "o-2", "O-1"];
const STATUSES: [&str; 4] = ["ENABLED", "DISABLED", "FAILING", "FAILED"];
const QUERIES: [&str; 5] = [
    "",
    "data.n>2",
    "data.n<=2 OR data.tag=\"x\"",
    "operation=\"update\"",
    "NOT data.tag=/^y/",
];

fn optional<T: Clone + std::fmt::Debug + 'static>(
    items: &'static [T],
) -> impl Strategy<Value = Option<T>> {
    proptest::option::of(proptest::sample::select(items))
}

fn definition_strategy() -> impl Strategy<Value = Value> {
    (
        proptest::sample::select(&EVENT_TYPES[..]),
        optional(&REALMS[..]),
        optional(&OPERATIONS[..8]),
        optional(&OBJECT_IDS[..]),
        proptest::sample::select(&STATUSES[..]),
        proptest::sample::select(&QUERIES[..]),
    )
        .prop_map(|(event_type, realm, operation, object_id, status, query)| {
            let mut webhook = Map::new();
            webhook.insert("event_type".into(), json!(event_type));
            webhook.insert("url".into(), json!("http://receiver/"));
            webhook.insert("status".into(), json!(status));
            webhook.insert("query".into(), json!(query));
            if let Some(realm) = realm {
                webhook.insert("realm".into(), json!(realm));
            }
            // "download" is only valid for assets.
            if let Some(operation) = operation.filter(|op| {
                !op.eq_ignore_ascii_case("download") || event_type.eq_ignore_ascii_case("assets")
            }) {
                webhook.insert("operation".into(), json!(operation));
            }
            if let Some(object_id) = object_id {
                webhook.insert("object_id".into(), json!(object_id));
            }
            Value::Object(webhook)
        })
}

fn event_strategy() -> impl Strategy<Value = Value> {
    (
        optional(&EVENT_TYPES[..]),
        optional(&REALMS[..]),
        optional(&OPERATIONS[..]),
        optional(&OBJECT_IDS[..]),
        0..5i64,
        proptest::sample::select(&["x", "y", "yes", "z"][..]),
    )
        .prop_map(|(event_type, realm, operation, object_id, n, tag)| {
            let mut event = Map::new();
            for (name, value) in [
                ("event_type", event_type),
                ("realm", realm),
                ("operation", operation),
                ("object_id", object_id),
            ] {
                if let Some(value) = value {
                    event.insert(name.into(), json!(value));
                }
            }
            event.insert("data".into(), json!({"n": n, "tag": tag}));
            Value::Object(event)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn index_gives_the_same_result_as_a_linear_scan(
        webhooks in proptest::collection::vec(definition_strategy(), 0..40),
        events in proptest::collection::vec(event_strategy(), 1..20),
    ) {
        let webhooks: Vec<Value> = webhooks
            .into_iter()
            .enumerate()
            .map(|(index, mut webhook)| {
                webhook["id"] = json!(format!("hook-{index}"));
                webhook
            })
            .collect();
        let defs = definitions(webhooks);
        let m = Matcher::new(defs.clone());
        for event in &events {
            prop_assert_eq!(fired(&m, event), naive(&defs, event), "event {}", event);
        }
    }
}

#[test]
fn the_naive_scan_agrees_on_a_hand_checked_case() {
    // Guards the property test's oracle itself.
    let defs = definitions(vec![
        hook("a", json!({"realm": "metadata", "operation": "update"})),
        hook("b", json!({"status": "DISABLED"})),
        hook("c", json!({"object_id": "o-1", "query": "data.n>2"})),
    ]);
    let event = json!({"event_type": "Assets", "realm": "METADATA", "operation": "Update",
                       "object_id": "o-1", "data": {"n": 3}});
    assert_eq!(naive(&defs, &event), [0, 2]);
    assert_eq!(fired(&Matcher::new(defs), &event), [0, 2]);
}
