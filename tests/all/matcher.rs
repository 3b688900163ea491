//! Which webhooks fire for an event: filters, configuration order, statuses,
//! case-insensitivity, tenants' domains, and a property test proving that
//! the index never changes the result of a plain linear scan.

use envoy_webhooks::config::{Operation, PluginConfig, WebhookDefinition};
use envoy_webhooks::event::view::{scan, Scan, View, Viewed};
use envoy_webhooks::matcher::{EventKeys, Matcher};
use envoy_webhooks::status::Status;
use envoy_webhooks::testing::view::compare_with_oracle;
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
    assert_eq!(keys.system_domain_id, Some(SEED_DOMAIN));
    let odd = json!({"realm": 1, "operation": null, "system_domain_id": 2});
    let keys = EventKeys::of(&odd);
    assert_eq!(
        (
            keys.event_type,
            keys.realm,
            keys.operation,
            keys.object_id,
            keys.system_domain_id
        ),
        (None, None, None, None, None)
    );
}

// ---------------------------------------------------------------------------
// Tenants' definitions: their own domain's events only

/// The seed events' domain.
const SEED_DOMAIN: &str = "1297c8b6-3563-11e7-adf1-6c4008b85488";
const OTHER_DOMAIN: &str = "5b7e2c4a-0d1f-4e8b-9a3c-2f6d8e1b4a70";

/// `webhooks`, each the configuration's (`None`) or a tenant's (its domain).
fn scoped(webhooks: Vec<(Option<&str>, Value)>) -> Matcher {
    let (domains, webhooks): (Vec<_>, Vec<_>) = webhooks.into_iter().unzip();
    let mut defs = definitions(webhooks);
    for (definition, domain) in defs.iter_mut().zip(domains) {
        definition.system_domain_id = domain.map(str::to_string);
    }
    Matcher::new(defs)
}

/// What fires for `event`, checked to be the same from its scanned text
/// (`matching_view`) as from its parsed value (`matching`).
fn fired_both_ways(matcher: &Matcher, event: &Value) -> Vec<usize> {
    let parsed = fired(matcher, event);
    let text = event.to_string();
    let mut view = View::default();
    assert_eq!(
        scan(&text, matcher.paths(), &mut view),
        Scan::Event,
        "{text}"
    );
    let (mut viewed, mut over_budget) = (Vec::new(), Vec::new());
    matcher.matching_view(
        &Viewed {
            text: &text,
            view: &view,
        },
        &mut viewed,
        &mut over_budget,
    );
    assert_eq!(parsed, viewed, "parsed and scanned differ: {text}");
    parsed
}

fn with_domain(mut event: Value, domain: Value) -> Value {
    event["system_domain_id"] = domain;
    event
}

#[test]
fn a_tenant_definition_matches_only_its_own_domains_events() {
    let m = scoped(vec![
        (None, hook("configured", json!({}))),
        (Some(SEED_DOMAIN), hook("seed-tenant", json!({}))),
        (Some(OTHER_DOMAIN), hook("other-tenant", json!({}))),
    ]);
    let formats = seed("formats");
    assert_eq!(fired_both_ways(&m, &formats), [0, 1]);
    let other = with_domain(formats.clone(), json!(OTHER_DOMAIN));
    assert_eq!(fired_both_ways(&m, &other), [0, 2]);
    let unknown = with_domain(
        formats.clone(),
        json!("0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"),
    );
    assert_eq!(fired_both_ways(&m, &unknown), [0]);
}

#[test]
fn an_event_without_a_top_level_string_domain_meets_no_tenant() {
    let m = scoped(vec![
        (Some(SEED_DOMAIN), hook("tenant", json!({}))),
        (None, hook("configured", json!({}))),
    ]);
    let mut formats = seed("formats");
    if let Some(object) = formats.as_object_mut() {
        object.remove("system_domain_id");
    }
    assert_eq!(fired_both_ways(&m, &formats), [1]);
    let mut nested = formats.clone();
    nested["data"]["system_domain_id"] = json!(SEED_DOMAIN);
    assert_eq!(fired_both_ways(&m, &nested), [1]);
    // Exact, as object_id: not case-insensitive, not trimmed, not in an array.
    for domain in [
        json!(null),
        json!(1),
        json!(true),
        json!([SEED_DOMAIN]),
        json!({"id": SEED_DOMAIN}),
        json!(SEED_DOMAIN.to_uppercase()),
        json!(format!(" {SEED_DOMAIN}")),
        json!(""),
    ] {
        let event = with_domain(formats.clone(), domain);
        assert_eq!(fired_both_ways(&m, &event), [1], "{event}");
    }
}

#[test]
fn tenants_with_identical_definitions_each_get_their_own_events() {
    // The same but for the id (ids are unique across all definitions).
    let same = |id: &str| {
        hook(
            id,
            json!({"realm": "formats", "operation": "update", "query": "data.status=\"ACTIVE\""}),
        )
    };
    let m = scoped(vec![
        (Some(OTHER_DOMAIN), same("theirs")),
        (Some(SEED_DOMAIN), same("ours")),
        (
            Some(OTHER_DOMAIN),
            hook("other-collections", json!({"event_type": "collections"})),
        ),
    ]);
    let formats = seed("formats");
    assert_eq!(fired_both_ways(&m, &formats), [1]);
    let other = with_domain(formats.clone(), json!(OTHER_DOMAIN));
    assert_eq!(fired_both_ways(&m, &other), [0]);
    // The shared query's outcome is per event, whichever domain it was for.
    let mut inactive = other.clone();
    inactive["data"]["status"] = json!("DELETED");
    assert!(fired_both_ways(&m, &inactive).is_empty());
    assert_eq!(fired_both_ways(&m, &formats), [1]);
    // A type only a tenant listens to: no configured definition needed.
    let collection = json!({"event_type": "collections", "system_domain_id": OTHER_DOMAIN});
    assert_eq!(fired_both_ways(&m, &collection), [2]);
    let elsewhere = json!({"event_type": "collections", "system_domain_id": SEED_DOMAIN});
    assert!(fired_both_ways(&m, &elsewhere).is_empty());
}

#[test]
fn tenants_and_configured_definitions_come_out_in_definition_order() {
    // Tenants before, between and after configured ones, in several lists
    // (realm's, any realm's, operation's, any operation's).
    let m = scoped(vec![
        (Some(SEED_DOMAIN), hook("t-any", json!({}))),
        (
            None,
            hook(
                "c-formats-update",
                json!({"realm": "formats", "operation": "update"}),
            ),
        ),
        (
            Some(SEED_DOMAIN),
            hook("t-formats", json!({"realm": "formats"})),
        ),
        (Some(OTHER_DOMAIN), hook("o-any", json!({}))),
        (None, hook("c-any", json!({}))),
        (
            Some(SEED_DOMAIN),
            hook("t-update", json!({"operation": "update"})),
        ),
        (
            Some(SEED_DOMAIN),
            hook("t-metadata", json!({"realm": "metadata"})),
        ),
        (None, hook("c-formats", json!({"realm": "formats"}))),
        (
            Some(SEED_DOMAIN),
            hook(
                "t-formats-update",
                json!({"realm": "formats", "operation": "update"}),
            ),
        ),
    ]);
    assert_eq!(fired_both_ways(&m, &seed("formats")), [0, 1, 2, 4, 5, 7, 8]);
    assert_eq!(fired_both_ways(&m, &seed("metadata")), [0, 4, 5, 6]);
}

#[test]
fn tenant_definitions_keep_every_other_filter() {
    let m = scoped(vec![
        (
            Some(SEED_DOMAIN),
            hook("disabled", json!({"status": "DISABLED"})),
        ),
        (
            Some(SEED_DOMAIN),
            hook(
                "this-object",
                json!({"object_id": "918728e2-bc1c-11ed-aaef-66cff3148306"}),
            ),
        ),
        (
            Some(SEED_DOMAIN),
            hook(
                "other-object",
                json!({"object_id": "1fa53a56-932d-11ed-9b47-7a40066d5234"}),
            ),
        ),
        (
            Some(SEED_DOMAIN),
            hook("create", json!({"operation": "create"})),
        ),
        (
            Some(SEED_DOMAIN),
            hook(
                "FORMATS",
                json!({"event_type": "ASSETS", "realm": "FORMATS"}),
            ),
        ),
    ]);
    assert_eq!(fired_both_ways(&m, &seed("formats")), [1, 4]);
    let shouting =
        json!({"event_type": "Assets", "realm": "Formats", "system_domain_id": SEED_DOMAIN});
    assert_eq!(fired_both_ways(&m, &shouting), [4]);
}

#[test]
fn only_no_enabled_definition_at_all_matches_nothing() {
    assert!(Matcher::new(Vec::new()).matches_nothing());
    let tenant_only = scoped(vec![(Some(SEED_DOMAIN), hook("t", json!({})))]);
    assert!(!tenant_only.matches_nothing());
    let disabled = scoped(vec![
        (Some(SEED_DOMAIN), hook("t", json!({"status": "DISABLED"}))),
        (None, hook("c", json!({"status": "DISABLED"}))),
    ]);
    assert!(disabled.matches_nothing());
    let configured_only = scoped(vec![(None, hook("c", json!({})))]);
    assert!(!configured_only.matches_nothing());
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
        .filter(|(_, d)| {
            d.system_domain_id.is_none()
                || d.system_domain_id.as_deref() == text("system_domain_id")
        })
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
const DOMAINS: [&str; 3] = [
    SEED_DOMAIN,
    OTHER_DOMAIN,
    "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0",
];
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

/// A webhook, and the tenant it is of (`None`: the configuration's).
fn definition_strategy() -> impl Strategy<Value = (Value, Option<&'static str>)> {
    (
        proptest::sample::select(&EVENT_TYPES[..]),
        optional(&REALMS[..]),
        optional(&OPERATIONS[..8]),
        optional(&OBJECT_IDS[..]),
        proptest::sample::select(&STATUSES[..]),
        proptest::sample::select(&QUERIES[..]),
        // Tenants' from two domains (the third is only ever an event's).
        optional(&DOMAINS[..2]),
    )
        .prop_map(
            |(event_type, realm, operation, object_id, status, query, domain)| {
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
                    !op.eq_ignore_ascii_case("download")
                        || event_type.eq_ignore_ascii_case("assets")
                }) {
                    webhook.insert("operation".into(), json!(operation));
                }
                if let Some(object_id) = object_id {
                    webhook.insert("object_id".into(), json!(object_id));
                }
                (Value::Object(webhook), domain)
            },
        )
}

/// An event's `system_domain_id`: mostly a domain (the tenants' or not),
/// sometimes not quite one or not a string.
fn domain_strategy() -> impl Strategy<Value = Option<Value>> {
    proptest::option::of(prop_oneof![
        8 => proptest::sample::select(&DOMAINS[..]).prop_map(|domain| json!(domain)),
        1 => Just(json!(SEED_DOMAIN.to_uppercase())),
        1 => proptest::sample::select(vec![json!(null), json!(1), json!([SEED_DOMAIN])]),
    ])
}

fn event_strategy() -> impl Strategy<Value = Value> {
    (
        optional(&EVENT_TYPES[..]),
        optional(&REALMS[..]),
        optional(&OPERATIONS[..]),
        optional(&OBJECT_IDS[..]),
        0..5i64,
        proptest::sample::select(&["x", "y", "yes", "z"][..]),
        domain_strategy(),
    )
        .prop_map(
            |(event_type, realm, operation, object_id, n, tag, domain)| {
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
                if let Some(domain) = domain {
                    event.insert("system_domain_id".into(), domain);
                }
                event.insert("data".into(), json!({"n": n, "tag": tag}));
                Value::Object(event)
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn index_gives_the_same_result_as_a_linear_scan(
        webhooks in proptest::collection::vec(definition_strategy(), 0..40),
        events in proptest::collection::vec(event_strategy(), 1..20),
    ) {
        let (webhooks, domains): (Vec<Value>, Vec<_>) = webhooks
            .into_iter()
            .enumerate()
            .map(|(index, (mut webhook, domain))| {
                webhook["id"] = json!(format!("hook-{index}"));
                (webhook, domain)
            })
            .unzip();
        let mut defs = definitions(webhooks);
        for (definition, domain) in defs.iter_mut().zip(domains) {
            definition.system_domain_id = domain.map(str::to_string);
        }
        let m = Matcher::new(defs.clone());
        for event in &events {
            prop_assert_eq!(fired(&m, event), naive(&defs, event), "event {}", event);
            // The scanned text matches as the parsed value (and so as the oracle).
            let text = event.to_string();
            let scanned = compare_with_oracle(&m, &text);
            prop_assert_eq!(scanned, Ok(Some(true)), "event {}", text);
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
    assert_eq!(fired(&Matcher::new(defs.clone()), &event), [0, 2]);
    // A tenant's definition: only with its domain.
    let mut defs = defs;
    defs[0].system_domain_id = Some(OTHER_DOMAIN.to_string());
    assert_eq!(naive(&defs, &event), [2]);
    let theirs = with_domain(event, json!(OTHER_DOMAIN));
    assert_eq!(naive(&defs, &theirs), [0, 2]);
    assert_eq!(fired(&Matcher::new(defs), &theirs), [0, 2]);
}
