//! The one-pass scan (`event::view`) and the bound queries against the full
//! parse and `Query::evaluate`, the oracle: the same verdict on the text, the
//! same matches, the same regex-budget outcome, the same routing fields.

use envoy_webhooks::config::PluginConfig;
use envoy_webhooks::event::view::{scan, PathSet, Scan, View, Viewed};
use envoy_webhooks::matcher::Matcher;
use envoy_webhooks::query::Query;
use envoy_webhooks::testing::view::compare_with_oracle;
use proptest::prelude::*;

use crate::fields::path_over;
use serde_json::{json, Value};

const FORMATS: &str = include_str!("../fixtures/seed-formats-event.json");
const METADATA: &str = include_str!("../fixtures/seed-metadata-event.json");

fn matcher_of(hooks: Vec<Value>) -> Matcher {
    let webhooks: Vec<Value> = hooks
        .into_iter()
        .enumerate()
        .map(|(i, mut hook)| {
            hook["id"] = json!(format!("h{i}"));
            hook["url"] = json!("http://r/");
            hook
        })
        .collect();
    let config = PluginConfig::from_value(&json!({ "webhooks": webhooks })).expect("valid config");
    Matcher::new(config.webhooks)
}

fn single(query: &str) -> Matcher {
    matcher_of(vec![json!({"event_type": "assets", "query": query})])
}

#[test]
fn the_seed_events_scan_as_they_parse() {
    let matcher = matcher_of(vec![
        json!({"event_type": "assets", "realm": "formats", "query": r#"data.status="ACTIVE" AND data.is_online=true AND (data.components.metadata.format="AVC" OR data.components.metadata.format="MPEG-4")"#}),
        json!({"event_type": "assets", "query": "data.components.metadata.width>=1920"}),
        json!({"event_type": "assets", "query": "data.components.metadata.format=/MPEG-[2,4]/"}),
        json!({"event_type": "assets", "realm": "metadata", "query": "data.metadata_values.share.field_values.value=\"true\""}),
        json!({"event_type": "assets", "query": "data.deleted_by_user=null"}),
    ]);
    for text in [FORMATS, METADATA] {
        assert_eq!(compare_with_oracle(&matcher, text.trim()), Ok(Some(true)));
    }
    let mut view = View::default();
    let text = FORMATS.trim();
    assert_eq!(scan(text, matcher.paths(), &mut view), Scan::Event);
    let (mut got, mut budget) = (Vec::new(), Vec::new());
    matcher.matching_view(&Viewed { text, view: &view }, &mut got, &mut budget);
    assert!(
        !got.is_empty(),
        "the seed's formats event matches its own query"
    );
}

#[test]
fn the_view_refuses_what_serde_json_refuses() {
    let matcher = single("a = 1 AND b.c = \"x\"");
    let invalid = [
        r#"{"a": 1,}"#,
        r#"{"a": 01}"#,
        r#"{"a": 1.}"#,
        r#"{"a": -}"#,
        r#"{"a": 1e400}"#,
        r#"{"a": 123456789012345678901234567890e300}"#,
        r#"{"b": {"c": "\ud800"}}"#,
        r#"{"b": {"c": "\udc00"}}"#,
        r#"{"b": {"c": "\ud800\n"}}"#,
        r#"{"b": {"c": "\ud800\u0041"}}"#,
        r#"{"b": {"c": "\x"}}"#,
        "{\"b\": \"tab\there\"}",
        r#"{"a": tru}"#,
        r#"{"a": 1} x"#,
        r#"{"a" 1}"#,
        r#"{"a": [1 2]}"#,
        r#"{"a": {"b": 1"#,
    ];
    for text in invalid {
        assert_eq!(
            compare_with_oracle(&matcher, text),
            Ok(Some(false)),
            "{text}"
        );
    }
    let valid = [
        r#"{"a": 1e308, "b": {"c": "\ud83d\ude00"}}"#,
        r#"{"a": 0.1e-400, "b": {"c": "\u0078"}}"#,
        r#"{"a": -0, "b": [{"c": ["x"]}]}"#,
        r#"{"a": 123456789012345678901234567890}"#,
        "{ \"a\" :\t1 ,\r\n\"b\":{ } }",
    ];
    for text in valid {
        assert_eq!(
            compare_with_oracle(&matcher, text),
            Ok(Some(true)),
            "{text}"
        );
    }
}

#[test]
fn nesting_is_refused_where_serde_json_refuses_it() {
    let matcher = single("a = 1");
    for depth in [126, 127, 128, 129] {
        let text = format!(
            "{{\"a\":{}1{}}}",
            "[".repeat(depth - 1),
            "]".repeat(depth - 1)
        );
        let verdict = compare_with_oracle(&matcher, &text);
        assert_eq!(verdict, Ok(Some(depth < 128)), "depth {depth}");
        // The same under a key no path reads (checked without notes), with
        // objects and arrays mixed, and deeper inside a read object.
        for (prefix, suffix) in [("{\"b\":", "}"), ("{\"a\":{\"x\":", "}}")] {
            let levels = depth - prefix.matches('{').count();
            let open: String = (0..levels)
                .map(|i| if i % 2 == 0 { "[" } else { "{\"k\":" })
                .collect();
            let close: String = (0..levels)
                .rev()
                .map(|i| if i % 2 == 0 { "]" } else { "}" })
                .collect();
            let text = format!("{prefix}{open}1{close}{suffix}");
            let verdict = compare_with_oracle(&matcher, &text);
            assert_eq!(verdict, Ok(Some(depth < 128)), "depth {depth}: {text:.80}");
        }
    }
}

#[test]
fn what_the_view_cannot_tell_exactly_is_left_to_the_full_parse() {
    let matcher = single("a.b = 1");
    let mut view = View::default();
    for text in [
        r#"{"a": {"b": 2, "b": 1}}"#,
        r#"{"a": {"\u0062": 1}}"#,
        r#"{"event_type": "\u0061ssets", "a": {"b": 1}}"#,
        r#"{"event_type": "assets", "event_type": "x"}"#,
        r#"[{"a": 1}]"#,
    ] {
        assert_eq!(
            scan(text, matcher.paths(), &mut view),
            Scan::Unsure,
            "{text}"
        );
    }
    // Keys given twice that no path follows change nothing.
    assert_eq!(
        scan(
            r#"{"z": 1, "z": 2, "a": {"y": 1, "y": 2, "b": 1}}"#,
            matcher.paths(),
            &mut view
        ),
        Scan::Event
    );
}

#[test]
fn numbers_compare_by_the_value_serde_json_gives_them() {
    for (query, text) in [
        ("a = 1.5", r#"{"a": 1.50}"#),
        ("a = 100", r#"{"a": 1e2}"#),
        ("a > 9007199254740992", r#"{"a": 9007199254740993}"#),
        ("a = 0", r#"{"a": -0}"#),
        ("a = /^1\\.5$/", r#"{"a": 1.50}"#),
        ("a = /^100$/", r#"{"a": 100}"#),
        ("a = /^1e2$/", r#"{"a": 1e2}"#),
        ("a >= 1920", r#"{"a": " 3840 "}"#),
        ("a = \"x\"", r#"{"a": "\u0078"}"#),
        ("a = null", r#"{"b": 1}"#),
        ("a = null", r#"{"a": []}"#),
        ("a != null", r#"{"a": [[]]}"#),
        ("a = true", r#"{"a": [false, [true]]}"#),
    ] {
        let matcher = single(query);
        let text = format!(
            r#"{{"event_type": "assets", {}"#,
            text.trim_start_matches('{')
        );
        assert_eq!(
            compare_with_oracle(&matcher, &text),
            Ok(Some(true)),
            "{query} on {text}"
        );
    }
}

#[test]
fn an_over_budget_regex_is_reported_as_by_the_oracle() {
    let long = "x".repeat(300_000);
    let matcher = single("a = /y/ AND b = 1");
    let text = format!(r#"{{"event_type": "assets", "a": ["{long}", "{long}"], "b": 1}}"#);
    assert_eq!(compare_with_oracle(&matcher, &text), Ok(Some(true)));
    let mut view = View::default();
    assert_eq!(scan(&text, matcher.paths(), &mut view), Scan::Event);
    let (mut got, mut budget) = (Vec::new(), Vec::new());
    matcher.matching_view(
        &Viewed {
            text: &text,
            view: &view,
        },
        &mut got,
        &mut budget,
    );
    assert_eq!((got, budget), (vec![], vec![0]));
}

#[test]
fn a_path_set_gives_one_id_a_path() {
    let mut paths = PathSet::new();
    let first = paths.add(&["data", "status"]);
    assert_eq!(paths.add(&["data", "status"]), first);
    assert_ne!(paths.add(&["data"]), first);
    assert_eq!(paths.add(&["realm"]), 1);
    let query = Query::parse("data.status = 1 AND data = null").expect("parses");
    let before = paths.len();
    let _ = query.bind(&mut paths);
    assert_eq!(paths.len(), before);
}

// ---------------------------------------------------------------- generated

const KEYS: [&str; 5] = ["a", "b", "c", "d e", "event_type"];

/// Keys as written in the text: mostly plain, sometimes escaped.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        40 => prop::sample::select(KEYS[..4].to_vec()).prop_map(|k| format!("\"{k}\"")),
        1 => Just("\"event_type\"".to_string()),
        20 => prop::sample::select(vec!["f", "g", "h", "i", "j", "k"]).prop_map(|k| format!("\"{k}\"")),
        1 => Just(r#""\u0061""#.to_string()),
    ]
}

fn scalar() -> impl Strategy<Value = String> {
    let valid = prop::sample::select(vec![
        "null",
        "true",
        "false",
        "0",
        "-0",
        "1",
        "-1",
        "1.0",
        "1.50",
        "1e0",
        "1E+2",
        "2.5e-3",
        "1920",
        "3840",
        "60001",
        "9007199254740993",
        "123456789012345678901234567890",
        "1e308",
        "0.1e-400",
        "\"x\"",
        "\"a\"",
        "\"1\"",
        "\" 1 \"",
        "\"2.5\"",
        "\"\"",
        "\"\\u0078\"",
        "\"x\\\"y\"",
        "\"\\ud83d\\ude00\"",
        "\"é\"",
        "\"assets\"",
        "\"1.50\"",
    ]);
    // What serde_json refuses: one in a few events has one.
    let invalid = prop::sample::select(vec![
        "1e400",
        "-1e309",
        "01",
        "1.",
        "-",
        ".5",
        "1e",
        "\"\\ud800\"",
        "\"\\udc00x\"",
        "\"\\q\"",
        "\"tab\there\"",
        "tru",
    ]);
    prop_oneof![60 => valid, 1 => invalid].prop_map(str::to_string)
}

fn space() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["", "", "", " ", "\n\t", "\r\n "])
}

fn value_text() -> impl Strategy<Value = String> {
    scalar().prop_recursive(5, 64, 5, |inner| {
        prop_oneof![
            (
                prop::collection::vec((space(), inner.clone()), 0..5),
                space()
            )
                .prop_map(|(items, end)| {
                    let items: Vec<String> =
                        items.into_iter().map(|(s, v)| format!("{s}{v}")).collect();
                    format!("[{}{end}]", items.join(","))
                }),
            (
                prop::collection::vec((key(), space(), inner), 0..4),
                space()
            )
                .prop_map(|(members, end)| {
                    let members: Vec<String> = members
                        .into_iter()
                        .map(|(k, s, v)| format!("{k}:{s}{v}"))
                        .collect();
                    format!("{{{}{end}}}", members.join(","))
                }),
        ]
    })
}

fn event_text() -> impl Strategy<Value = String> {
    (
        prop_oneof![
            20 => Just("\"assets\""),
            2 => Just("\"collections\""),
            1 => Just("1"),
            1 => Just("\"\\u0061ssets\""),
        ],
        prop::collection::vec((key(), space(), value_text()), 0..6),
        prop::sample::select(
            vec![""; 30]
                .into_iter()
                .chain(["x", ",", "]"])
                .collect::<Vec<_>>(),
        ),
    )
        .prop_map(|(event_type, members, tail)| {
            let mut parts = vec![format!("\"event_type\":{event_type}")];
            parts.extend(members.into_iter().map(|(k, s, v)| format!("{k}:{s}{v}")));
            format!("{{{}}}{tail}", parts.join(","))
        })
}

fn comparison() -> impl Strategy<Value = String> {
    let equality = (
        path_over(&KEYS),
        prop::sample::select(vec!["=", "!="]),
        prop::sample::select(vec![
            "1",
            "1.5",
            "100",
            "0",
            "\"x\"",
            "\"1\"",
            "null",
            "true",
            "false",
            "/x|1/",
            "/^1\\.5$/",
            "/é/i",
        ]),
    );
    // Orderings take numbers only.
    let ordering = (
        path_over(&KEYS),
        prop::sample::select(vec![">", "<=", ">=", "<"]),
        prop::sample::select(vec!["1", "1.5", "100", "0", "-1", "1920"]),
    );
    prop_oneof![3 => equality, 1 => ordering].prop_map(|(p, op, v)| format!("{p} {op} {v}"))
}

fn query() -> impl Strategy<Value = String> {
    prop::collection::vec(
        (prop::collection::vec(comparison(), 1..3), any::<bool>()),
        1..3,
    )
    .prop_map(|groups| {
        groups
            .into_iter()
            .map(|(group, negate)| {
                let group = format!("({})", group.join(" OR "));
                if negate {
                    format!("NOT {group}")
                } else {
                    group
                }
            })
            .collect::<Vec<_>>()
            .join(" AND ")
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn the_view_matches_as_the_full_parse(text in event_text(), queries in prop::collection::vec(query(), 1..4)) {
        let hooks = queries
            .iter()
            .map(|q| json!({"event_type": "assets", "query": q}))
            .collect();
        let matcher = matcher_of(hooks);
        let outcome = compare_with_oracle(&matcher, &text);
        prop_assert!(outcome.is_ok(), "{}", outcome.err().unwrap_or_default());
    }
}

#[test]
fn every_byte_of_a_long_string_is_checked_wherever_it_falls() {
    let matcher = single(r#"a = "xxxxxxxxxxxxxxxxxxxxxxxx""#);
    let mut specials: Vec<String> = (0u8..0x20).map(|b| char::from(b).to_string()).collect();
    specials.extend(["\"", "\\", "\\\"", "\\n", "\u{7f}", "é", "\u{10348}", " "].map(String::from));
    // Around it, plain ASCII or bytes of 0x80 and more (the scan goes eight
    // bytes at a time: every offset in a word, every word of the string).
    let backgrounds = [["x"; 24], ["é"; 24], ["\u{7f}"; 24]];
    let mut verdicts = [0, 0];
    for background in &backgrounds {
        for special in &specials {
            for at in 0..24 {
                let mut units = *background;
                units[at] = special;
                let text = units.concat();
                let event = format!(r#"{{"event_type":"assets","a":"{text}","b":1}}"#);
                let verdict = compare_with_oracle(&matcher, &event);
                assert!(verdict.is_ok(), "{verdict:?}");
                if let Ok(Some(valid)) = verdict {
                    verdicts[usize::from(valid)] += 1;
                }
            }
        }
    }
    // Both kinds were met: control characters and a lone quote or backslash
    // are refused, escapes and other characters taken.
    assert!(
        verdicts[0] > 3 * 24 * 32 && verdicts[1] > 3 * 24 * 4,
        "{verdicts:?}"
    );
}

#[test]
fn a_huge_event_does_not_leave_its_buffers_behind() {
    let matcher = single("a = 1");
    let mut view = View::default();
    let huge = format!(
        r#"{{"event_type":"assets","a":[{}1]}}"#,
        "2,".repeat(100_000)
    );
    assert_eq!(scan(&huge, matcher.paths(), &mut view), Scan::Event);
    assert!(view.room() >= 100_000);
    let small = r#"{"event_type":"assets","a":[1,2,3]}"#;
    assert_eq!(scan(small, matcher.paths(), &mut view), Scan::Event);
    assert!(view.room() < 1_000, "{}", view.room());
}
