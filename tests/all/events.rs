//! Reading events out of request bodies: JSON, JSON arrays and NDJSON,
//! streamed in chunks split anywhere, with the per-event size limit.

use envoy_webhooks::event::{
    parse_event, parse_json_body, BodyCollector, BodyFormat, Event, NotAnEvent,
};
use serde_json::{json, Value};

type Outcome = Result<Event, NotAnEvent>;

const FORMATS: &str = include_str!("../fixtures/seed-formats-event.json");
const METADATA: &str = include_str!("../fixtures/seed-metadata-event.json");

fn event(outcome: &Outcome) -> &Event {
    match outcome {
        Ok(event) => event,
        Err(e) => panic!("expected an event, got {e:?}"),
    }
}

fn invalid_json(outcome: &Outcome) -> &str {
    match outcome {
        Err(NotAnEvent::InvalidJson(reason)) => reason,
        other => panic!("expected InvalidJson, got {other:?}"),
    }
}

/// Pushes `chunks` through a collector, then finishes it.
fn collect(format: BodyFormat, limit: usize, chunks: &[&[u8]]) -> Vec<Outcome> {
    let mut collector = BodyCollector::new(format, limit);
    let mut out = Vec::new();
    for chunk in chunks {
        collector.push(chunk, &mut out);
    }
    collector.finish(&mut out);
    out
}

/// The events of `body` when it arrives in one chunk.
fn whole(format: BodyFormat, limit: usize, body: &[u8]) -> Vec<Outcome> {
    collect(format, limit, &[body])
}

/// Asserts that splitting `body` in two at every byte, and into single bytes,
/// gives the same outcomes as one chunk; returns those outcomes.
fn same_at_every_split(format: BodyFormat, limit: usize, body: &[u8]) -> Vec<Outcome> {
    let expected = whole(format, limit, body);
    for at in 0..=body.len() {
        let (head, tail) = body.split_at(at);
        assert_eq!(
            collect(format, limit, &[head, tail]),
            expected,
            "{format:?} body split at byte {at}"
        );
    }
    let bytes: Vec<&[u8]> = body.chunks(1).collect();
    assert_eq!(
        collect(format, limit, &bytes),
        expected,
        "{format:?} byte by byte"
    );
    let with_empty: Vec<&[u8]> = body.chunks(7).flat_map(|c| [&[][..], c]).collect();
    assert_eq!(
        collect(format, limit, &with_empty),
        expected,
        "{format:?} with empty chunks"
    );
    expected
}

// ---------------------------------------------------------------------------
// parse_json_body

#[test]
fn single_object_keeps_its_exact_text_trimmed() {
    let body = format!(" \r\n\t{}\n\n", FORMATS.trim());
    let events = parse_json_body(body.as_bytes());
    assert_eq!(events.len(), 1);
    let event = event(&events[0]);
    assert_eq!(
        event.json,
        FORMATS.trim(),
        "delivered text is the body's own text"
    );
    assert_eq!(event.value["realm"], "formats");
    let reparsed: Value = serde_json::from_str(&event.json).expect("JSON");
    assert_eq!(reparsed, event.value);
}

#[test]
fn exact_text_keeps_formatting_escapes_and_number_spelling() {
    let text = r#"{ "b":1.50, "a" : "caf\u00e9 \"x\"",  "n":1e2 ,"u":"é"}"#;
    let events = parse_json_body(text.as_bytes());
    let event = event(&events[0]);
    assert_eq!(event.json, text);
    assert_eq!(event.value["a"], "café \"x\"");
}

#[test]
fn array_of_objects_gives_each_element_text() {
    let body = format!("[\n  {}  ,\n{}\n]\n", FORMATS.trim(), METADATA.trim());
    let events = parse_json_body(body.as_bytes());
    assert_eq!(events.len(), 2);
    assert_eq!(event(&events[0]).json, FORMATS.trim());
    assert_eq!(event(&events[1]).json, METADATA.trim());
    assert_eq!(event(&events[1]).value["realm"], "metadata");
}

#[test]
fn array_with_bad_elements_keeps_the_good_ones() {
    let body = br#"[{"a":1}, 42, "text", null, [{"b":2}], true, {"c":3}]"#;
    let events = parse_json_body(body);
    assert_eq!(
        events,
        vec![
            Ok(Event {
                json: r#"{"a":1}"#.to_string(),
                value: json!({"a": 1})
            }),
            Err(NotAnEvent::NotAnObject("number")),
            Err(NotAnEvent::NotAnObject("string")),
            Err(NotAnEvent::NotAnObject("null")),
            Err(NotAnEvent::NotAnObject("array")),
            Err(NotAnEvent::NotAnObject("boolean")),
            Ok(Event {
                json: r#"{"c":3}"#.to_string(),
                value: json!({"c": 3})
            }),
        ]
    );
}

#[test]
fn empty_array_has_no_events() {
    assert!(parse_json_body(b"[]").is_empty());
    assert!(parse_json_body(b" [ ] ").is_empty());
}

#[test]
fn broken_array_is_one_invalid_json() {
    for body in [
        &br#"[{"a":1}, {"b":"#[..],
        br#"[{"a":1},]"#,
        br#"[{"a":1}] trailing"#,
        b"[1 2]",
    ] {
        let events = parse_json_body(body);
        assert_eq!(events.len(), 1, "{}", String::from_utf8_lossy(body));
        invalid_json(&events[0]);
    }
}

#[test]
fn not_json_is_invalid_json_with_the_reason() {
    for body in [
        &b"hello"[..],
        b"{\"a\":",
        b"{'a': 1}",
        b"{\"a\":1} {\"b\":2}",
        b"{\"a\":1}x",
    ] {
        let events = parse_json_body(body);
        assert_eq!(events.len(), 1);
        let reason = invalid_json(&events[0]);
        assert!(reason.contains("line 1 column"), "{reason}");
    }
}

#[test]
fn invalid_utf8_is_invalid_json() {
    for body in [&b"{\"a\":\"\xff\xfe\"}"[..], b"[{\"a\":\"\xc3\x28\"}]"] {
        let events = parse_json_body(body);
        assert_eq!(events.len(), 1, "{body:?}");
        invalid_json(&events[0]);
    }
}

#[test]
fn scalars_are_not_events() {
    let cases: [(&[u8], &str); 5] = [
        (b"42", "number"),
        (b"\"event\"", "string"),
        (b"null", "null"),
        (b"false", "boolean"),
        (b" -1.5e3 ", "number"),
    ];
    for (body, kind) in cases {
        assert_eq!(
            parse_json_body(body),
            vec![Err(NotAnEvent::NotAnObject(kind))]
        );
    }
    assert_eq!(
        NotAnEvent::NotAnObject("number").to_string(),
        "JSON number is not an event object"
    );
}

#[test]
fn empty_and_whitespace_bodies_are_empty() {
    for body in [&b""[..], b" ", b"\n\r\n\t  "] {
        assert_eq!(parse_json_body(body), vec![Err(NotAnEvent::Empty)]);
    }
    assert_eq!(NotAnEvent::Empty.to_string(), "empty body");
}

#[test]
fn deep_nesting_is_a_clear_error_not_a_crash() {
    let depth = 200;
    let objects = format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth));
    let arrays_in_object = format!(r#"{{"a":{}1{}}}"#, "[".repeat(depth), "]".repeat(depth));
    let arrays = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let arrays_of_objects = format!("[{}]", objects);
    for body in [objects, arrays_in_object, arrays, arrays_of_objects] {
        let events = parse_json_body(body.as_bytes());
        assert_eq!(events.len(), 1);
        let reason = invalid_json(&events[0]);
        assert!(reason.contains("recursion limit exceeded"), "{reason}");
        let shown = events[0].as_ref().expect_err("error").to_string();
        assert!(
            shown.starts_with("not valid JSON: recursion limit exceeded"),
            "{shown}"
        );
    }
    // Moderate nesting is fine.
    let moderate = format!("{}1{}", r#"{"a":"#.repeat(100), "}".repeat(100));
    event(&parse_json_body(moderate.as_bytes())[0]);
}

#[test]
fn parse_event_trims_and_checks_one_event() {
    let parsed = parse_event(b"\t{\"a\":1}\r\n");
    assert_eq!(event(&parsed).json, "{\"a\":1}");
    assert_eq!(parse_event(b"  "), Err(NotAnEvent::Empty));
    assert_eq!(
        parse_event(b"[{\"a\":1}]"),
        Err(NotAnEvent::NotAnObject("array"))
    );
    invalid_json(&parse_event(b"{\"a\":1}\n{\"b\":2}"));
}

// ---------------------------------------------------------------------------
// BodyFormat

#[test]
fn body_format_from_content_type() {
    let ndjson = [
        "application/x-ndjson",
        "application/ndjson",
        "application/jsonl",
        "Application/X-NDJSON",
        "application/x-ndjson; charset=utf-8",
        "  application/ndjson ;charset=UTF-8",
    ];
    for content_type in ndjson {
        assert_eq!(
            BodyFormat::from_content_type(Some(content_type)),
            BodyFormat::Ndjson,
            "{content_type}"
        );
    }
    let json = [
        None,
        Some("application/json"),
        Some("application/json; charset=utf-8"),
        Some("text/plain"),
        Some(""),
        Some("application/x-ndjson-seq"),
        Some("text/x-ndjson"),
    ];
    for content_type in json {
        assert_eq!(
            BodyFormat::from_content_type(content_type),
            BodyFormat::Json,
            "{content_type:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// BodyCollector: JSON

#[test]
fn json_collector_gives_events_only_at_the_end() {
    let mut collector = BodyCollector::new(BodyFormat::Json, 1 << 20);
    let mut out = Vec::new();
    let body = format!("[{},{}]", FORMATS, METADATA);
    let (head, tail) = body.as_bytes().split_at(body.len() / 2);
    collector.push(head, &mut out);
    collector.push(tail, &mut out);
    assert!(out.is_empty(), "a JSON body is only complete at its end");
    collector.finish(&mut out);
    assert_eq!(out.len(), 2);
    assert_eq!(event(&out[0]).json, FORMATS.trim());
    assert_eq!(event(&out[1]).json, METADATA.trim());
}

#[test]
fn json_collector_is_the_same_at_every_split() {
    let array = format!("[{},\n{}, 7]", FORMATS, METADATA);
    let bodies: Vec<String> = vec![
        FORMATS.to_string(),
        array,
        "not json".to_string(),
        String::new(),
        "\n".to_string(),
        "{\"a\":\"é\u{1F389}\"}".to_string(),
    ];
    for body in &bodies {
        let outcomes = same_at_every_split(BodyFormat::Json, 1 << 20, body.as_bytes());
        assert_eq!(outcomes, parse_json_body(body.as_bytes()));
    }
}

#[test]
fn json_body_over_the_limit_is_one_oversized() {
    let body = FORMATS.trim().as_bytes();
    let limit = body.len();
    let at_limit = same_at_every_split(BodyFormat::Json, limit, body);
    assert_eq!(
        event(&at_limit[0]).json,
        FORMATS.trim(),
        "exactly the limit is fine"
    );

    let over = same_at_every_split(BodyFormat::Json, limit - 1, body);
    assert_eq!(over, vec![Err(NotAnEvent::Oversized { limit: limit - 1 })]);
    assert_eq!(
        over[0].as_ref().expect_err("oversized").to_string(),
        format!(
            "event larger than max_event_bytes ({} bytes), skipped",
            limit - 1
        )
    );

    // An array counts as a whole: small events, too big together.
    let array = format!("[{},{}]", METADATA.trim(), METADATA.trim());
    let small_limit = METADATA.trim().len() + 10;
    assert_eq!(
        whole(BodyFormat::Json, small_limit, array.as_bytes()),
        vec![Err(NotAnEvent::Oversized { limit: small_limit })]
    );
}

#[test]
fn json_collector_can_be_reused_after_finish() {
    let mut collector = BodyCollector::new(BodyFormat::Json, 10);
    let mut out = Vec::new();
    collector.push(b"{\"a\":\"too long\"}", &mut out);
    collector.finish(&mut out);
    collector.push(b"{\"a\":1}", &mut out);
    collector.finish(&mut out);
    assert_eq!(out.len(), 2);
    assert_eq!(out[0], Err(NotAnEvent::Oversized { limit: 10 }));
    assert_eq!(event(&out[1]).json, "{\"a\":1}");
}

// ---------------------------------------------------------------------------
// BodyCollector: NDJSON

fn ndjson_of(events: &[&str]) -> String {
    events.iter().map(|e| format!("{}\n", e)).collect()
}

#[test]
fn ndjson_lines_come_out_as_soon_as_they_end() {
    let mut collector = BodyCollector::new(BodyFormat::Ndjson, 1 << 20);
    let mut out = Vec::new();
    collector.push(b"{\"n\":1}\n{\"n\":", &mut out);
    assert_eq!(out.len(), 1, "the first line is complete");
    assert_eq!(event(&out[0]).value, json!({"n": 1}));
    collector.push(b"2}", &mut out);
    assert_eq!(out.len(), 1, "the second line has not ended yet");
    collector.push(b"\n", &mut out);
    assert_eq!(out.len(), 2);
    collector.finish(&mut out);
    assert_eq!(out.len(), 2, "nothing left at the end");
}

#[test]
fn ndjson_last_line_without_newline_is_taken_at_finish() {
    let out = whole(BodyFormat::Ndjson, 1 << 20, b"{\"n\":1}\n{\"n\":2}");
    let values: Vec<&Value> = out.iter().map(|o| &event(o).value).collect();
    assert_eq!(values, [&json!({"n": 1}), &json!({"n": 2})]);
}

#[test]
fn ndjson_crlf_and_blank_lines() {
    let body = "\r\n{\"n\":1}\r\n\r\n   \n\t\r\n{\"n\":2} \r\n\n";
    let out = same_at_every_split(BodyFormat::Ndjson, 1 << 20, body.as_bytes());
    let texts: Vec<&str> = out.iter().map(|o| event(o).json.as_str()).collect();
    assert_eq!(
        texts,
        ["{\"n\":1}", "{\"n\":2}"],
        "blank lines are skipped, CR trimmed"
    );
    assert!(whole(BodyFormat::Ndjson, 1 << 20, b"").is_empty());
    assert!(whole(BodyFormat::Ndjson, 1 << 20, b"\n\r\n \n").is_empty());
}

#[test]
fn ndjson_bad_lines_do_not_stop_the_others() {
    let body = ndjson_of(&[r#"{"n":1}"#, "oops", "42", "[{\"n\":9}]", r#"{"n":2}"#]);
    let out = same_at_every_split(BodyFormat::Ndjson, 1 << 20, body.as_bytes());
    assert_eq!(out.len(), 5);
    assert_eq!(event(&out[0]).value, json!({"n": 1}));
    invalid_json(&out[1]);
    assert_eq!(out[2], Err(NotAnEvent::NotAnObject("number")));
    assert_eq!(out[3], Err(NotAnEvent::NotAnObject("array")));
    assert_eq!(event(&out[4]).value, json!({"n": 2}));
}

#[test]
fn ndjson_with_the_seed_events_is_the_same_at_every_split() {
    let formats = serde_json::to_string(&serde_json::from_str::<Value>(FORMATS).expect("JSON"))
        .expect("JSON");
    let metadata = serde_json::to_string(&serde_json::from_str::<Value>(METADATA).expect("JSON"))
        .expect("JSON");
    let body = format!("{formats}\r\n{metadata}\n\n{formats}");
    let out = same_at_every_split(BodyFormat::Ndjson, 1 << 20, body.as_bytes());
    let texts: Vec<&str> = out.iter().map(|o| event(o).json.as_str()).collect();
    assert_eq!(
        texts,
        [formats.as_str(), metadata.as_str(), formats.as_str()]
    );
}

#[test]
fn ndjson_limit_applies_per_line() {
    let small = r#"{"n":1}"#;
    let big = r#"{"n":1,"padding":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#;
    let limit = 20;
    let body = ndjson_of(&[small, big, small, big]);
    let out = same_at_every_split(BodyFormat::Ndjson, limit, body.as_bytes());
    assert_eq!(out.len(), 4);
    assert_eq!(event(&out[0]).json, small);
    assert_eq!(out[1], Err(NotAnEvent::Oversized { limit }));
    assert_eq!(event(&out[2]).json, small);
    assert_eq!(out[3], Err(NotAnEvent::Oversized { limit }));

    // An oversized last line without a newline is reported too.
    let unterminated = format!("{small}\n{big}");
    let out = same_at_every_split(BodyFormat::Ndjson, limit, unterminated.as_bytes());
    assert_eq!(out[1], Err(NotAnEvent::Oversized { limit }));
    assert_eq!(out.len(), 2);
}

#[test]
fn ndjson_line_of_exactly_the_limit_is_kept() {
    let line = r#"{"n":12345}"#;
    let out = same_at_every_split(
        BodyFormat::Ndjson,
        line.len(),
        ndjson_of(&[line, line]).as_bytes(),
    );
    assert_eq!(out.len(), 2);
    assert_eq!(event(&out[0]).json, line);
    assert_eq!(event(&out[1]).json, line);
    let out = whole(
        BodyFormat::Ndjson,
        line.len() - 1,
        ndjson_of(&[line]).as_bytes(),
    );
    assert_eq!(
        out,
        vec![Err(NotAnEvent::Oversized {
            limit: line.len() - 1
        })]
    );
}

#[test]
fn limits_of_one_byte() {
    assert_eq!(
        whole(BodyFormat::Json, 1, b"{}"),
        vec![Err(NotAnEvent::Oversized { limit: 1 })]
    );
    assert_eq!(
        whole(BodyFormat::Ndjson, 1, b"{}\n\n{}"),
        vec![
            Err(NotAnEvent::Oversized { limit: 1 }),
            Err(NotAnEvent::Oversized { limit: 1 })
        ]
    );
}

#[test]
fn finish_with_gives_the_same_events_as_push_then_finish() {
    let bodies: [&[u8]; 5] = [
        br#"{"event_type":"assets","n":1}"#,
        br#" [ {"a":1}, 2, {"b":[3]} ] "#,
        b"not json",
        b"",
        br#"{"a": "0123456789012345678901234567890123456789"}"#,
    ];
    for format in [BodyFormat::Json, BodyFormat::Ndjson] {
        for body in bodies {
            for split in 0..=body.len() {
                let (head, tail) = body.split_at(split);
                let mut expected = Vec::new();
                let mut collector = BodyCollector::new(format, 40);
                collector.push(head, &mut expected);
                collector.push(tail, &mut expected);
                collector.finish(&mut expected);

                let mut got = Vec::new();
                let mut collector = BodyCollector::new(format, 40);
                collector.push(head, &mut got);
                collector.finish_with(tail, &mut got);
                assert_eq!(got, expected, "{format:?} body {body:?} split at {split}");
            }
        }
    }
}

/// `events.max_events_per_request`: the first events are handed out, the rest
/// only counted, whatever the chunking and the format.
#[test]
fn events_past_the_limit_are_counted_not_parsed() {
    let lines: String = (0..10)
        .map(|i| format!("{{\"event_type\":\"assets\",\"n\":{i}}}\n\n"))
        .collect();
    for chunk_size in [1, 7, 64, lines.len()] {
        let mut collector = BodyCollector::new(BodyFormat::Ndjson, 1024).with_max_events(3);
        let mut events = Vec::new();
        for chunk in lines.as_bytes().chunks(chunk_size) {
            collector.push(chunk, &mut events);
        }
        collector.finish(&mut events);
        assert_eq!(events.len(), 3, "chunks of {chunk_size}");
        assert!(events.iter().all(Result::is_ok));
        assert_eq!(collector.events_over_limit(), 7, "chunks of {chunk_size}");
    }
    // Invalid lines count as events too: the bound is on work, not on validity.
    let mut collector = BodyCollector::new(BodyFormat::Ndjson, 1024).with_max_events(2);
    let mut events = Vec::new();
    collector.finish_with(b"not json\n{}\n{\"a\":1}\nlast", &mut events);
    assert_eq!(events.len(), 2);
    assert_eq!(collector.events_over_limit(), 2);

    let array: String = format!(
        "[{}]",
        (0..10)
            .map(|i| format!("{{\"n\":{i}}}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    for split in [array.len(), 5] {
        let mut collector = BodyCollector::new(BodyFormat::Json, 1024).with_max_events(4);
        let mut events = Vec::new();
        let (first, rest) = array.as_bytes().split_at(split);
        collector.push(first, &mut events);
        collector.finish_with(rest, &mut events);
        assert_eq!(events.len(), 4);
        assert_eq!(collector.events_over_limit(), 6);
    }
}
