//! Parsing only the paths that matching reads gives the same matches as a
//! full parse, and accepts or rejects exactly the same texts.

use envoy_webhooks::config::PluginConfig;
use envoy_webhooks::event::fields::FieldTree;
use envoy_webhooks::event::{parse_event, parse_event_routed, parse_event_with};
use envoy_webhooks::matcher::Matcher;
use envoy_webhooks::query::Query;
use proptest::prelude::*;
use serde_json::{json, Value};

const FORMATS: &[u8] = include_bytes!("../fixtures/seed-formats-event.json");
const METADATA: &[u8] = include_bytes!("../fixtures/seed-metadata-event.json");

fn tree_of(queries: &[&str]) -> FieldTree {
    let webhooks: Vec<Value> = queries
        .iter()
        .enumerate()
        .map(|(i, q)| json!({"id": format!("h{i}"), "event_type": "assets", "url": "http://r/", "query": q}))
        .collect();
    let config = PluginConfig::from_value(&json!({ "webhooks": webhooks })).expect("valid config");
    Matcher::new(config.webhooks).field_tree()
}

#[test]
fn only_the_referenced_paths_are_kept() {
    let tree = tree_of(&[
        r#"data.components.metadata.format="AVC""#,
        "data.status != null",
    ]);
    let event = parse_event_with(FORMATS, Some(&tree)).expect("an event");
    assert_eq!(
        event.value,
        json!({
            "event_type": "assets", "realm": "formats", "operation": "update",
            "object_id": "918728e2-bc1c-11ed-aaef-66cff3148306",
            "request_id": "476117422b18ed2f915fe9887b77b702",
            "system_domain_id": "1297c8b6-3563-11e7-adf1-6c4008b85488",
            "data": {"status": "ACTIVE", "components": [
                {"metadata": {"format": "AVC"}}, {"metadata": {"format": "AAC"}}]}
        })
    );
    // The delivered text is still the whole event.
    assert_eq!(event.json.as_bytes(), FORMATS.trim_ascii());
}

#[test]
fn a_path_ending_at_a_subtree_keeps_all_of_it() {
    let mut tree = FieldTree::default();
    tree.add(&["data", "components", "metadata", "format"]);
    tree.add(&["data", "components"]);
    let value = tree
        .parse(std::str::from_utf8(FORMATS).expect("UTF-8"))
        .expect("valid");
    let full: Value = serde_json::from_slice(FORMATS).expect("valid");
    assert_eq!(value["data"]["components"], full["data"]["components"]);
}

#[test]
fn seed_queries_match_the_same_on_both_parses() {
    let queries = [
        r#"data.status="ACTIVE" AND data.is_online=true AND (data.components.metadata.format="AVC" OR data.components.metadata.format="MPEG-4")"#,
        r#"(data.components.metadata.width>=1920 OR data.components.metadata.height>=1920) AND data.components.metadata.duration>6000"#,
        "data.deleted_by_user=null",
        "data.components.metadata.format=/MPEG-[2,4]/",
        r#"data.metadata_values.share.field_values.value="true""#,
        r#"user_id="1fb4c6f8-cded-11eb-b943-669489a791b1""#,
        "data.storage_methods=\"GCS\" AND data.missing != null",
        "data != null",
        "data.metadata = null",
    ];
    let tree = tree_of(&queries);
    for event in [FORMATS, METADATA] {
        let full = parse_event(event).expect("event").value;
        let pruned = parse_event_with(event, Some(&tree)).expect("event").value;
        for query in queries {
            let query = Query::parse(query).expect("query");
            assert_eq!(query.matches(&pruned), query.matches(&full), "{query}");
        }
    }
}

#[test]
fn invalid_text_is_rejected_by_both() {
    let tree = tree_of(&["a=1"]);
    for bad in [
        &br#"{"a": 1, "skipped": [1, 2,]}"#[..],
        br#"{"a": 1, "skipped": "\x"}"#,
        br#"{"a": 1} trailing"#,
        b"{\"a\": 1, \"skipped\": \"\xff\"}",
        br#"{"skipped": {"deep": [[[[[["#,
    ] {
        assert!(parse_event(bad).is_err(), "{bad:?}");
        assert!(parse_event_with(bad, Some(&tree)).is_err(), "{bad:?}");
    }
    // serde_json accepts 127 levels and refuses 128; so must the pruned parse.
    for (depth, ok) in [(126, true), (127, false), (300, false)] {
        // The event object itself is one level.
        let deep = format!(
            "{{\"skipped\": {}{}}}",
            "[".repeat(depth),
            "]".repeat(depth)
        );
        assert_eq!(parse_event(deep.as_bytes()).is_ok(), ok, "full, {depth}");
        assert_eq!(
            parse_event_with(deep.as_bytes(), Some(&tree)).is_ok(),
            ok,
            "pruned, {depth}"
        );
    }
    // Brackets inside strings do not count.
    let text = format!(
        "{{\"skipped\": \"{}\\\"{}\"}}",
        "[".repeat(300),
        "{".repeat(300)
    );
    assert!(parse_event(text.as_bytes()).is_ok());
    assert!(parse_event_with(text.as_bytes(), Some(&tree)).is_ok());
}

/// One acceptance rule whatever the configuration: a value that a full parse
/// refuses is refused by the pruned parse too, read by a query or not.
#[test]
fn acceptance_does_not_depend_on_which_fields_are_read() {
    let events: [&[u8]; 6] = [
        br#"{"event_type": "assets", "x": 1e400}"#,
        br#"{"event_type": "assets", "x": -1e400}"#,
        br#"{"event_type": "assets", "x": "\ud800"}"#,
        br#"{"event_type": "assets", "x": {"y": ["\udc00 alone"]}}"#,
        br#"{"event_type": "assets", "\ud800": 1}"#,
        br#"{"event_type": "assets", "x": [1, {"k": 1E2, "z": 123456789012345678901234567890}]}"#,
    ];
    let trees = [
        tree_of(&[]),
        tree_of(&["x=1"]),
        tree_of(&["x.y=1"]),
        tree_of(&["other=1"]),
    ];
    for event in events {
        let full = parse_event(event).is_ok();
        for tree in &trees {
            assert_eq!(
                parse_event_with(event, Some(tree)).is_ok(),
                full,
                "{}",
                String::from_utf8_lossy(event)
            );
        }
    }
    assert!(parse_event(events[0]).is_err());
    assert!(parse_event(events[2]).is_err());
    assert!(parse_event(events[5]).is_ok());
}

const KEYS: [&str; 4] = ["a", "b", "c", "d e"];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-5i64..5).prop_map(Value::from),
        prop::sample::select(vec!["x", "1", "2.5", "a"]).prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(4, 48, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS.to_vec()), inner), 0..4).prop_map(
                |pairs| Value::Object(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            ),
        ]
    })
}

/// Query paths of one to three of `keys` (quoted where they hold a space).
pub(crate) fn path_over(keys: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(keys.to_vec()), 1..4).prop_map(|segments| {
        segments
            .iter()
            .map(|s| {
                if s.contains(' ') {
                    format!("\"{s}\"")
                } else {
                    s.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join(".")
    })
}

fn comparison() -> impl Strategy<Value = String> {
    (
        path_over(&KEYS),
        prop::sample::select(vec!["=", "!=", ">", "<="]),
        prop::sample::select(vec!["1", "\"x\"", "null", "true", "/a|x/"]),
    )
        .prop_filter("ordering takes numbers", |(_, op, value)| {
            !(op.starts_with('>') || op.starts_with('<')) || *value == "1"
        })
        .prop_map(|(p, op, v)| format!("{p} {op} {v}"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn pruned_and_full_parses_match_alike(
        body in prop::collection::vec((prop::sample::select(KEYS.to_vec()), json_value()), 0..5),
        queries in prop::collection::vec(prop::collection::vec(comparison(), 1..3), 1..4),
    ) {
        let event = Value::Object(body.into_iter().map(|(k, v)| (k.to_string(), v)).collect());
        let text = serde_json::to_vec(&event).expect("serialisable");
        let queries: Vec<String> = queries.iter().map(|q| q.join(" AND ")).collect();
        let tree = tree_of(&queries.iter().map(String::as_str).collect::<Vec<_>>());
        let pruned = parse_event_with(&text, Some(&tree)).expect("valid").value;
        for query in &queries {
            let query = Query::parse(query).expect("generated queries parse");
            prop_assert_eq!(query.matches(&pruned), query.matches(&event), "{}", query);
        }
    }
}

/// The top-level members of a generated event: its routing fields (mostly
/// strings a definition routes on; sometimes other values, missing, given
/// twice), and others, in any order.
fn members() -> impl Strategy<Value = Vec<(String, String)>> {
    let quoted = |names: Vec<&'static str>| {
        prop::sample::select(names).prop_map(|name| format!("\"{name}\""))
    };
    let route = |key: &'static str, values: Vec<&'static str>| {
        prop::option::weighted(
            0.9,
            prop_oneof![
                8 => quoted(values),
                1 => prop::sample::select(vec!["1", "null", "[\"assets\"]"]).prop_map(str::to_string),
            ],
        )
        .prop_map(move |value| value.map(|value| (key.to_string(), value)))
    };
    (
        route("event_type", vec!["assets", "Assets", "collections", "x"]),
        route("realm", vec!["formats", "metadata", "FORMATS", "x"]),
        route("operation", vec!["update", "UPDATE", "create", "x"]),
        prop::option::weighted(0.3, route("event_type", vec!["assets", "collections"])),
        route("system_domain_id", DOMAINS.to_vec()),
        prop::collection::vec(
            (prop::sample::select(KEYS.to_vec()), json_value())
                .prop_map(|(k, v)| (k.to_string(), v.to_string())),
            0..5,
        ),
    )
        .prop_map(
            |(event_type, realm, operation, again, domain, mut others)| {
                others.extend(
                    [event_type, realm, operation, again.flatten(), domain]
                        .into_iter()
                        .flatten(),
                );
                others
            },
        )
        .prop_shuffle()
}

/// Tenants' domains (an event's may be one of them).
const DOMAINS: [&str; 2] = [
    "1297c8b6-3563-11e7-adf1-6c4008b85488",
    "5b7e2c4a-0d1f-4e8b-9a3c-2f6d8e1b4a70",
];

/// A webhook, and the tenant it is of (`None`: the configuration's).
fn definition() -> impl Strategy<Value = (Value, Option<&'static str>)> {
    (
        prop::sample::select(vec!["assets", "collections"]),
        prop::sample::select(vec![None, Some("formats"), Some("metadata")]),
        prop::sample::select(vec![None, Some("update"), Some("create")]),
        prop::collection::vec(comparison(), 0..3),
        prop::option::of(prop::sample::select(DOMAINS.to_vec())),
    )
        .prop_map(|(event_type, realm, operation, query, domain)| {
            let mut hook =
                json!({"event_type": event_type, "url": "http://r/", "query": query.join(" AND ")});
            if let Some(realm) = realm {
                hook["realm"] = json!(realm);
            }
            if let Some(operation) = operation {
                hook["operation"] = json!(operation);
            }
            (hook, domain)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// The route-narrowed parse of the filter against the full parse, the
    /// oracle: the same verdict on the text, the same matches, the same
    /// regex-budget outcome.
    #[test]
    fn the_route_narrowed_parse_matches_as_the_full_parse(
        members in members(),
        hooks in prop::collection::vec(definition(), 1..6),
    ) {
        let text = format!(
            "{{{}}}",
            members.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect::<Vec<_>>().join(",")
        );
        let (webhooks, domains): (Vec<Value>, Vec<_>) = hooks
            .into_iter()
            .enumerate()
            .map(|(i, (mut hook, domain))| {
                hook["id"] = json!(format!("h{i}"));
                (hook, domain)
            })
            .unzip();
        let mut config = PluginConfig::from_value(&json!({ "webhooks": webhooks })).expect("valid config");
        for (definition, domain) in config.webhooks.iter_mut().zip(domains) {
            definition.system_domain_id = domain.map(str::to_string);
        }
        let matcher = Matcher::new(config.webhooks);
        let (tree, router) = (matcher.field_tree(), matcher.route_fields());
        let full = parse_event(text.as_bytes());
        let routed = parse_event_routed(text.as_bytes(), Some(&tree), Some(&router));
        prop_assert_eq!(full.is_ok(), routed.is_ok(), "{}", text);
        if let (Ok(full), Ok(routed)) = (full, routed) {
            let (mut want, mut want_budget) = (Vec::new(), Vec::new());
            let (mut got, mut got_budget) = (Vec::new(), Vec::new());
            matcher.matching_with_budget(&full.value, &mut want, &mut want_budget);
            matcher.matching_with_budget(&routed.value, &mut got, &mut got_budget);
            prop_assert_eq!(want, got, "{}", text);
            prop_assert_eq!(want_budget, got_budget, "{}", text);
            prop_assert_eq!(full.json, routed.json);
        }
    }
}

#[test]
fn an_event_whose_route_reaches_no_definition_keeps_only_its_routing_fields() {
    let config = PluginConfig::from_value(&json!({"webhooks": [
        {"id": "a", "event_type": "assets", "realm": "formats", "operation": "update", "url": "http://r/",
         "query": "data.status = \"ACTIVE\""},
        {"id": "b", "event_type": "collections", "url": "http://r/", "query": "data.title = \"x\""},
    ]}))
    .expect("valid config");
    let matcher = Matcher::new(config.webhooks);
    let (tree, router) = (matcher.field_tree(), matcher.route_fields());
    let parse = |text: &str| {
        parse_event_routed(text.as_bytes(), Some(&tree), Some(&router))
            .expect("an event")
            .value
    };
    // Routed to `a` only: its path, not `b`'s.
    let value = parse(
        r#"{"event_type":"assets","realm":"formats","operation":"update","data":{"status":"ACTIVE","title":"x"}}"#,
    );
    assert_eq!(value["data"], json!({"status": "ACTIVE"}));
    // A realm no definition of the type names: nothing of `data` is kept.
    let value = parse(
        r#"{"event_type":"assets","realm":"metadata","operation":"update","data":{"status":"ACTIVE"}}"#,
    );
    assert_eq!(value.get("data"), None);
    // Routing fields after `data`: the wider set is kept, and matching is the same.
    let value = parse(
        r#"{"data":{"status":"ACTIVE","title":"x"},"event_type":"assets","realm":"formats","operation":"update"}"#,
    );
    assert_eq!(value["data"], json!({"status": "ACTIVE", "title": "x"}));
    // A routing field given twice, after the paths were narrowed by the
    // first: the last counts, as in a full parse.
    let text = r#"{"event_type":"collections","realm":"formats","operation":"update","data":{"status":"ACTIVE"},"event_type":"assets"}"#;
    let mut matched = Vec::new();
    matcher.matching(&parse(text), &mut matched);
    assert_eq!(matched, [0]);
}

#[test]
fn a_tenants_definition_keeps_its_paths_on_its_route() {
    let config = PluginConfig::from_value(&json!({"webhooks": [
        {"id": "configured", "event_type": "assets", "url": "http://r/", "query": "b = 1"},
        {"id": "tenant", "event_type": "assets", "realm": "formats", "operation": "update",
         "url": "http://r/", "query": "a = 1"},
        {"id": "tenant-collections", "event_type": "collections", "url": "http://r/",
         "query": "c = \"x\""},
    ]}))
    .expect("valid config");
    let mut definitions = config.webhooks;
    for definition in definitions.iter_mut().skip(1) {
        definition.system_domain_id = Some(DOMAINS[1].to_string());
    }
    let matcher = Matcher::new(definitions);
    let (tree, router) = (matcher.field_tree(), matcher.route_fields());
    let matched = |text: &str| {
        let value = parse_event_routed(text.as_bytes(), Some(&tree), Some(&router))
            .expect("an event")
            .value;
        let mut matched = Vec::new();
        matcher.matching(&value, &mut matched);
        (value, matched)
    };
    // Routing fields first: the route's trees hold the tenant's paths.
    let domain = DOMAINS[1];
    let (_, fired) = matched(&format!(
        r#"{{"event_type":"assets","realm":"formats","operation":"update","system_domain_id":"{domain}","a":1,"b":1}}"#
    ));
    assert_eq!(fired, [0, 1]);
    // A type only a tenant listens to.
    let (_, fired) = matched(&format!(
        r#"{{"event_type":"collections","system_domain_id":"{domain}","c":"x"}}"#
    ));
    assert_eq!(fired, [2]);
    // A route no definition reaches still keeps the domain.
    let (value, fired) = matched(&format!(
        r#"{{"event_type":"jobs","system_domain_id":"{domain}","a":1}}"#
    ));
    assert!(fired.is_empty());
    assert_eq!(
        value,
        json!({"event_type": "jobs", "system_domain_id": domain})
    );
}
