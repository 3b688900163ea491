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
    // Around it, plain ASCII or bytes of 0x80 and more (the scan goes 16
    // bytes at a time, natively in two words of eight: every offset in a
    // block, every block of the string).
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

// ------------------------------------------------ 16-byte block boundaries

// The scan classifies 16 bytes at once (strings' plain runs and whitespace
// runs, from wherever the run starts; past the text's end, zero bytes):
// what ends a run must be found at every offset in a block, in the first
// block and later ones, and at the text's end.

/// A string's content: plain ASCII, bytes of 0x80 and more, escapes, and
/// now and then what is refused (a control character, a bad escape).
fn block_string() -> impl Strategy<Value = String> {
    let unit = prop_oneof![
        30 => Just("x"),
        4 => Just("é"),
        2 => Just("\u{10348}"),
        2 => Just("\u{7f}"),
        3 => Just("\\\""),
        2 => Just("\\\\"),
        2 => Just("\\n"),
        1 => Just("\\u00e9"),
        1 => Just("\\ud83d\\ude00"),
        1 => Just("\\/"),
        1 => Just(" "),
        1 => Just("\t"),
        1 => Just("\u{1f}"),
        1 => Just("\\q"),
    ];
    prop::collection::vec(unit, 0..48).prop_map(|units| format!("\"{}\"", units.concat()))
}

/// Whitespace runs of every length up to three blocks, mostly short.
fn block_space() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just(String::new()),
        2 => Just(" ".to_string()),
        3 => prop::collection::vec(prop::sample::select(vec![" ", "\n", "\r", "\t"]), 0..48)
            .prop_map(|s| s.concat()),
        1 => (0usize..40).prop_map(|n| format!("\n{}", " ".repeat(n))),
    ]
}

fn block_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        6 => block_string(),
        1 => prop::sample::select(vec!["1", "-2.5e3", "true", "null", "[]", "{}"]).prop_map(String::from),
    ];
    leaf.prop_recursive(8, 64, 4, |inner| {
        prop_oneof![
            (prop::collection::vec((block_space(), inner.clone(), block_space()), 1..4)).prop_map(
                |items| {
                    let items: Vec<String> = items
                        .into_iter()
                        .map(|(a, v, b)| format!("{a}{v}{b}"))
                        .collect();
                    format!("[{}]", items.join(","))
                }
            ),
            prop::collection::vec(
                (
                    prop::sample::select(vec!["\"a\"", "\"b\"", "\"c\"", "\"k\""]),
                    block_space(),
                    block_space(),
                    inner
                ),
                1..4
            )
            .prop_map(|members| {
                let members: Vec<String> = members
                    .into_iter()
                    .map(|(k, a, b, v)| format!("{k}{a}:{b}{v}"))
                    .collect();
                format!("{{{}}}", members.join(","))
            }),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    /// Runs of every length, starting at every offset (`shift` moves the
    /// whole text), with the text cut short now and then (its end falls
    /// anywhere in a block).
    #[test]
    fn runs_end_where_they_end_at_every_block_offset(
        shift in 0usize..33,
        members in prop::collection::vec((block_space(), block_space(), block_value(), block_space()), 0..5),
        end in block_space(),
        cut in prop::option::weighted(0.1, 0usize..400),
    ) {
        let matcher = single("a = \"xx\" OR b.c = 1 OR k = \"é\"");
        let mut text = format!("{{\"event_type\":\"assets\",\"s\":\"{}\"", "y".repeat(shift));
        for (i, (before, after, value, tail)) in members.into_iter().enumerate() {
            let key = ["a", "b", "c", "k", "x"].get(i).copied().unwrap_or("z");
            text.push_str(&format!(",{before}\"{key}\"{after}:{value}{tail}"));
        }
        text.push_str(&end);
        text.push('}');
        if let Some(cut) = cut {
            let mut cut = cut.min(text.len());
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        let text = text.trim_end_matches(|c: char| c.is_ascii_whitespace());
        let outcome = compare_with_oracle(&matcher, text);
        prop_assert!(outcome.is_ok(), "{}", outcome.err().unwrap_or_default());
    }
}

#[test]
fn every_byte_ends_a_run_at_every_offset_of_three_blocks() {
    let matcher = single(r#"a = "x" OR b = 1"#);
    // What may follow a run: every byte below 0x80, and UTF-8 of two to
    // four bytes.
    let mut next: Vec<String> = (0u8..0x80).map(|b| char::from(b).to_string()).collect();
    next.extend(["é", "\u{20ac}", "\u{10348}"].map(String::from));
    let mut verdicts = [0, 0];
    for run in 0..50 {
        for follower in &next {
            // A string's plain run, then the byte.
            let string = format!(
                r#"{{"event_type":"assets","a":"{}{follower}","b":1}}"#,
                "x".repeat(run)
            );
            // A whitespace run (indentation), then the byte: before a value,
            // and before a comma or the end.
            let spaced = format!(
                r#"{{"event_type":"assets","a":{}{follower}"x","b":1{}}}"#,
                " ".repeat(run),
                "\n\t\r ".repeat(run / 4)
            );
            let after = format!(
                r#"{{"event_type":"assets","b":1{}{follower}}}"#,
                " ".repeat(run)
            );
            for text in [string, spaced, after] {
                let verdict = compare_with_oracle(&matcher, &text);
                assert!(verdict.is_ok(), "{verdict:?} on {text:?}");
                if let Ok(Some(valid)) = verdict {
                    verdicts[usize::from(valid)] += 1;
                }
            }
        }
    }
    assert!(verdicts[0] > 0 && verdicts[1] > 0, "{verdicts:?}");
}

#[test]
fn a_text_cut_anywhere_is_judged_as_serde_json_judges_it() {
    // Every length of an indented event with escapes and long strings: the
    // text's end falls at every offset of a block, inside every kind of run.
    let matcher = single(r#"data.status = "ACTIVE" OR a = "x\"y""#);
    let text = format!(
        "{}\n{{\n  \"event_type\": \"assets\",\n  \"a\": \"x\\\"y{}\\u00e9\",\n{}\"data\": {{\"status\": \"ACTIVE\"}}\n}}",
        "",
        "long plain text é ".repeat(3),
        " ".repeat(37)
    );
    let text = text.trim();
    assert_eq!(compare_with_oracle(&matcher, text), Ok(Some(true)));
    for cut in 1..text.len() {
        if let Some(prefix) = text.get(..cut) {
            let prefix = prefix.trim_end_matches(|c: char| c.is_ascii_whitespace());
            assert_eq!(
                compare_with_oracle(&matcher, prefix),
                Ok(Some(false)),
                "{prefix:?}"
            );
        }
    }
}

#[test]
fn deep_nesting_with_whitespace_runs_between_brackets() {
    let matcher = single("a = 1");
    for depth in [120, 127, 128] {
        for gap in [0, 1, 15, 16, 17, 33] {
            let space = " ".repeat(gap);
            let text = format!(
                "{{\"a\":{space}{}1{}{space}}}",
                format!("[{space}").repeat(depth - 1),
                format!("{space}]").repeat(depth - 1)
            );
            let verdict = compare_with_oracle(&matcher, &text);
            assert_eq!(verdict, Ok(Some(depth < 128)), "depth {depth}, gap {gap}");
        }
    }
}
