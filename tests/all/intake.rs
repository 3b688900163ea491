//! A request's intake, natively: when its matches may go, what the bounds
//! skip, and that everything is counted.

use std::collections::BTreeMap;

use envoy_webhooks::testing::intake::{
    carries_events, Intake, IntakeCounter, IntakeHost, NotQueued,
};
use envoy_webhooks::testing::message::QueuedEvent;
use envoy_webhooks::testing::plugin::Plugin;
use serde_json::{json, Value};

#[derive(Default)]
struct Sink {
    counts: BTreeMap<IntakeCounter, u64>,
    queued: Vec<QueuedEvent>,
    refuse: bool,
}

impl IntakeHost for Sink {
    fn now_ms(&self) -> u64 {
        0
    }

    fn count(&mut self, counter: IntakeCounter, n: u64) {
        *self.counts.entry(counter).or_default() += n;
    }

    fn enqueue(&mut self, event: QueuedEvent) -> Result<(), Box<NotQueued>> {
        if self.refuse {
            let why = "Full".to_string();
            return Err(Box::new(NotQueued { event, why }));
        }
        self.queued.push(event);
        Ok(())
    }
}

impl Sink {
    fn count(&self, counter: IntakeCounter) -> u64 {
        self.counts.get(&counter).copied().unwrap_or(0)
    }
}

fn plugin(extra: Value) -> Plugin {
    let mut config = json!({"webhooks": [
        {"id": "a", "event_type": "assets", "url": "http://a/"},
        {"id": "b", "event_type": "assets", "url": "http://b/", "query": "data.n > 1"},
    ]});
    if let Value::Object(extra) = extra {
        for (key, value) in extra {
            config[key] = value;
        }
    }
    Plugin::load(config.to_string().as_bytes(), |_| None).expect("valid")
}

fn line(n: u32) -> String {
    format!("{{\"event_type\":\"assets\",\"request_id\":\"r{n}\",\"data\":{{\"n\":{n}}}}}\n")
}

#[test]
fn requests_carry_events_by_method_and_path() {
    let plugin =
        plugin(json!({"events": {"methods": ["post", "PUT"], "path_prefixes": ["/events"]}}));
    assert!(carries_events(&plugin, "POST", "/events/x"));
    assert!(carries_events(&plugin, "put", "/events"));
    assert!(!carries_events(&plugin, "GET", "/events"));
    assert!(!carries_events(&plugin, "POST", "/other"));
    // No definition that can match: no request carries events (bodies are not read).
    let disabled = Plugin::load(
        json!({"webhooks": [{"id": "a", "event_type": "assets", "url": "http://a/", "status": "DISABLED"}]})
            .to_string()
            .as_bytes(),
        |_| None,
    )
    .expect("valid");
    assert!(!carries_events(&disabled, "POST", "/"));

    // The method or the path alone decides first (the other is read only
    // then): never "no" where the other could make it "yes".
    use envoy_webhooks::testing::intake::{path_first, watches_method, watches_path};
    let every_path = self::plugin(json!({"events": {"methods": ["POST"]}}));
    let methods = ["POST", "put", "GET", ""];
    let paths = ["/events", "/events/x", "/other", "/", "/Events", ""];
    for p in [&plugin, &disabled, &every_path] {
        for path in paths {
            let any = methods.iter().any(|m| carries_events(p, m, path));
            assert_eq!(watches_path(p, path), any, "{path}");
        }
        for method in methods {
            let any = paths.iter().any(|path| carries_events(p, method, path));
            assert_eq!(watches_method(p, method), any, "{method}");
        }
    }
    // The path first where it can leave requests out, else the method.
    assert!(path_first(&plugin));
    assert!(!path_first(&every_path));
    let also_root = self::plugin(json!({"events": {"path_prefixes": ["/events", "/"]}}));
    assert!(!path_first(&also_root));
}

#[test]
fn a_json_body_goes_once_complete_with_its_exact_text() {
    let plugin = plugin(json!({}));
    let mut sink = Sink::default();
    let body = br#"{"event_type":"assets","data":{"n":2},"request_id":"x"}"#;
    let mut intake = Intake::start(&plugin, Some("application/json"));
    intake.body(&plugin, &mut sink, &body[..10], false);
    assert!(sink.queued.is_empty());
    intake.body(&plugin, &mut sink, &body[10..], true);
    assert_eq!(sink.queued.len(), 1, "one message however many matches");
    assert_eq!(&sink.queued[0].body[..], body);
    assert_eq!(sink.queued[0].targets.len(), 2);
    assert_eq!(sink.queued[0].request_id.as_deref(), Some("x"));
    assert_eq!(sink.count(IntakeCounter::EventsSeen), 1);
    assert_eq!(sink.count(IntakeCounter::Matched(0)), 1);
    assert_eq!(sink.count(IntakeCounter::Matched(1)), 1);
    intake.done(&plugin, &mut sink);
    assert_eq!(sink.count(IntakeCounter::Withheld(0)), 0);
    assert_eq!(
        plugin.held.total(),
        0,
        "the request's reservation is given back"
    );
}

#[test]
fn ndjson_lines_wait_for_the_end_of_the_body_and_an_abort_withholds_them() {
    let plugin = plugin(json!({}));
    let mut sink = Sink::default();
    let mut intake = Intake::start(&plugin, Some("application/x-ndjson"));
    intake.body(&plugin, &mut sink, (line(1) + &line(2)).as_bytes(), false);
    assert_eq!(
        sink.count(IntakeCounter::EventsSeen),
        2,
        "matched as they arrive"
    );
    assert!(
        sink.queued.is_empty(),
        "but not delivered before the body is complete"
    );
    assert!(plugin.held.total() > 0);
    intake.done(&plugin, &mut sink);
    assert!(sink.queued.is_empty());
    assert_eq!(sink.count(IntakeCounter::Withheld(0)), 2);
    assert_eq!(sink.count(IntakeCounter::Withheld(1)), 1);
    assert_eq!(plugin.held.total(), 0);

    let mut sink = Sink::default();
    let mut intake = Intake::start(&plugin, Some("application/x-ndjson"));
    intake.body(&plugin, &mut sink, line(1).as_bytes(), false);
    intake.body(&plugin, &mut sink, line(2).as_bytes(), false);
    intake.end_of_body(&plugin, &mut sink);
    assert_eq!(sink.queued.len(), 2);
}

#[test]
fn response_2xx_waits_for_the_upstreams_answer() {
    let plugin = plugin(json!({"events": {"deliver_on": "response_2xx"}}));
    for (status, delivered) in [
        (Some(200), true),
        (Some(204), true),
        (Some(500), false),
        (None, false),
    ] {
        let mut sink = Sink::default();
        let mut intake = Intake::start(&plugin, None);
        intake.body(&plugin, &mut sink, line(5).as_bytes(), true);
        assert!(sink.queued.is_empty());
        intake.response(&plugin, &mut sink, status);
        intake.done(&plugin, &mut sink);
        assert_eq!(!sink.queued.is_empty(), delivered, "{status:?}");
        assert_eq!(
            sink.count(IntakeCounter::Withheld(0)),
            u64::from(!delivered),
            "{status:?}"
        );
    }
    // The request ended before any answer.
    let mut sink = Sink::default();
    let mut intake = Intake::start(&plugin, None);
    intake.body(&plugin, &mut sink, line(5).as_bytes(), true);
    intake.done(&plugin, &mut sink);
    assert_eq!(sink.count(IntakeCounter::Withheld(0)), 1);
}

#[test]
fn the_bounds_skip_and_count() {
    let plugin =
        plugin(json!({"events": {"max_events_per_request": 3, "max_deliveries_per_request": 4}}));
    let mut sink = Sink::default();
    let mut intake = Intake::start(&plugin, Some("application/x-ndjson"));
    let body: String = (0..10).map(line).collect();
    intake.body(&plugin, &mut sink, body.as_bytes(), true);
    assert_eq!(sink.count(IntakeCounter::EventsSeen), 3);
    assert_eq!(sink.count(IntakeCounter::EventsOverLimit), 7);
    // Events 0, 1 match a; event 2 matches a and b: 4 deliveries, none over.
    assert_eq!(sink.count(IntakeCounter::DeliveriesOverLimit), 0);
    let plugin = plugin_with_limits(1, 1);
    let mut sink = Sink::default();
    let mut intake = Intake::start(&plugin, None);
    intake.body(&plugin, &mut sink, line(5).as_bytes(), true);
    assert_eq!(sink.count(IntakeCounter::DeliveriesOverLimit), 1);
    assert_eq!(sink.count(IntakeCounter::Matched(0)), 1);
    assert_eq!(sink.count(IntakeCounter::Matched(1)), 0);
}

fn plugin_with_limits(events: usize, deliveries: usize) -> Plugin {
    plugin(
        json!({"events": {"max_events_per_request": events, "max_deliveries_per_request": deliveries}}),
    )
}

#[test]
fn what_the_budget_cannot_hold_is_counted_dropped_and_lost() {
    let plugin = plugin(json!({"events": {"max_event_bytes": 400_000},
                               "delivery": {"max_held_bytes": 1_048_576}}));
    let pad = "p".repeat(300_000);
    let event = format!("{{\"event_type\":\"assets\",\"data\":{{\"n\":2,\"pad\":\"{pad}\"}}}}\n");
    let mut sink = Sink::default();
    let mut intake = Intake::start(&plugin, Some("application/x-ndjson"));
    intake.body(
        &plugin,
        &mut sink,
        format!("{event}{event}").as_bytes(),
        false,
    );
    // Four deliveries of 300 KB: three fit 1 MiB.
    let matched: u64 = (0..2).map(|i| sink.count(IntakeCounter::Matched(i))).sum();
    let dropped: u64 = (0..2).map(|i| sink.count(IntakeCounter::Dropped(i))).sum();
    let lost: u64 = (0..2).map(|i| sink.count(IntakeCounter::Lost(i))).sum();
    assert_eq!((matched, dropped, lost), (4, 1, 1));
    assert!(plugin.held.total() <= 1_048_576);
    intake.end_of_body(&plugin, &mut sink);
    assert_eq!(
        sink.queued.iter().map(|e| e.targets.len()).sum::<usize>(),
        3
    );
    assert_eq!(plugin.held.total(), 0);
}

#[test]
fn a_queue_that_refuses_counts_dropped_and_lost() {
    let plugin = plugin(json!({}));
    let mut sink = Sink {
        refuse: true,
        ..Sink::default()
    };
    let mut intake = Intake::start(&plugin, None);
    intake.body(&plugin, &mut sink, line(2).as_bytes(), true);
    assert_eq!(sink.count(IntakeCounter::Dropped(0)), 1);
    assert_eq!(sink.count(IntakeCounter::Lost(1)), 1);
}

#[test]
fn invalid_and_oversized_events_are_counted_and_nothing_else() {
    let plugin = plugin(json!({"events": {"max_event_bytes": 100}}));
    let mut sink = Sink::default();
    let mut intake = Intake::start(&plugin, Some("application/x-ndjson"));
    let big = format!(
        "{{\"event_type\":\"assets\",\"x\":\"{}\"}}\n",
        "y".repeat(200)
    );
    intake.body(
        &plugin,
        &mut sink,
        format!("not json\n{big}{{\"n\":1e400}}\n").as_bytes(),
        true,
    );
    assert_eq!(sink.count(IntakeCounter::EventsInvalid), 2);
    assert_eq!(sink.count(IntakeCounter::EventsOversized), 1);
    assert_eq!(sink.count(IntakeCounter::EventsSeen), 0);
    assert!(sink.queued.is_empty());
}

#[test]
fn propagated_headers_are_read_as_configured_and_only_if_they_can_be_sent_as_they_are() {
    use envoy_webhooks::testing::intake::propagated_headers;
    use envoy_webhooks::testing::message::MAX_PROPAGATED_BYTES;
    let load = |delivery: serde_json::Value| {
        let config = serde_json::json!({"webhooks": [], "delivery": delivery});
        envoy_webhooks::testing::plugin::Plugin::load(config.to_string().as_bytes(), |_| None)
            .expect("valid")
    };
    let default = load(serde_json::json!({}));
    let mut asked = Vec::new();
    let read = |name: &str| -> Option<String> {
        match name {
            "traceparent" => Some("00-abc-01".to_string()),
            _ => None,
        }
    };
    let headers = propagated_headers(&default, |name| {
        asked.push(name.to_string());
        read(name)
    });
    assert_eq!(asked, ["traceparent", "tracestate"]);
    assert_eq!(
        headers,
        [("traceparent".to_string(), "00-abc-01".to_string())]
    );

    // No traceparent (or one that cannot be sent): tracestate is not even read,
    // wherever it stands in the list.
    let state_first =
        load(serde_json::json!({"propagate_headers": ["tracestate", "x-a", "traceparent"]}));
    for traceparent in [None, Some("bad\u{1}")] {
        let mut asked = Vec::new();
        let headers = propagated_headers(&state_first, |name| {
            asked.push(name.to_string());
            match name {
                "traceparent" => traceparent.map(str::to_string),
                _ => Some("v".to_string()),
            }
        });
        assert_eq!(asked, ["x-a", "traceparent"], "{traceparent:?}");
        assert_eq!(headers, [("x-a".to_string(), "v".to_string())]);
    }
    let traced = propagated_headers(&state_first, |name| Some(format!("{name}-v")));
    assert_eq!(
        traced,
        [
            ("x-a".to_string(), "x-a-v".to_string()),
            ("traceparent".to_string(), "traceparent-v".to_string()),
            ("tracestate".to_string(), "tracestate-v".to_string()),
        ]
    );
    // Without traceparent configured, tracestate is a header like any other.
    let state_only = load(serde_json::json!({"propagate_headers": ["tracestate"]}));
    assert_eq!(
        propagated_headers(&state_only, |_| Some("s".to_string())),
        [("tracestate".to_string(), "s".to_string())]
    );

    let none = load(serde_json::json!({"propagate_headers": []}));
    assert!(propagated_headers(&none, |_| Some("x".to_string())).is_empty());

    let custom = load(serde_json::json!({"propagate_headers": ["X-Trace", "b", "c", "d"]}));
    let big = "v".repeat(MAX_PROPAGATED_BYTES - 10);
    let headers = propagated_headers(&custom, |name| match name {
        "x-trace" => Some("bad\u{1}value".to_string()),
        "b" => Some(big.clone()),
        "c" => Some("0123456789a".to_string()),
        _ => Some(" padded".to_string()),
    });
    // A control character, past the byte budget, surrounding whitespace: left out.
    assert_eq!(headers, [("b".to_string(), big.clone())]);
}

/// Events the one-pass reader takes and events it leaves to the full parse
/// (a followed key given twice, an escaped key or routing field) are matched,
/// counted and delivered alike.
#[test]
fn events_the_reader_is_unsure_of_are_matched_as_the_others() {
    let plugin = plugin(json!({}));
    let bodies: [(&str, usize); 6] = [
        (
            r#"{"event_type":"assets","request_id":"scanned","data":{"n":2}}"#,
            2,
        ),
        (
            r#"{"event_type":"assets","request_id":"twice","data":{"n":0,"n":2}}"#,
            2,
        ),
        (
            r#"{"event_type":"assets","request_id":"twice-last-low","data":{"n":2,"n":0}}"#,
            1,
        ),
        (
            r#"{"event_type":"assets","request_id":"escaped-key","data":{"\u006e":2}}"#,
            2,
        ),
        (
            r#"{"event_type":"\u0061ssets","request_id":"escaped-type","data":{"n":2}}"#,
            2,
        ),
        (
            r#"{"event_type":"assets","request_id":"r\u0031","data":{"n":2}}"#,
            2,
        ),
    ];
    for (body, targets) in bodies {
        let mut sink = Sink::default();
        let mut intake = Intake::start(&plugin, Some("application/json"));
        intake.body(&plugin, &mut sink, body.as_bytes(), true);
        assert_eq!(sink.count(IntakeCounter::EventsSeen), 1, "{body}");
        assert_eq!(sink.queued.len(), 1, "{body}");
        assert_eq!(sink.queued[0].targets.len(), targets, "{body}");
        assert_eq!(&sink.queued[0].body[..], body.as_bytes());
        let request_id = serde_json::from_str::<Value>(body).expect("JSON")["request_id"].clone();
        assert_eq!(
            sink.queued[0].request_id.as_deref(),
            request_id.as_str(),
            "{body}"
        );
    }
}
