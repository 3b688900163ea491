//! Operating webhooks through the admin API, natively: pause and enable,
//! test events and redriven dead letters (`deliver`), the attempt log, and
//! per-webhook rate limits.

use std::rc::Rc;

use envoy_webhooks::status::Status;
use envoy_webhooks::testing::admin::{self, AdminRequest, AdminRoute};
use envoy_webhooks::testing::call::Answer;
use envoy_webhooks::testing::engine::Engine;
use envoy_webhooks::testing::host::WebhookCounter;
use envoy_webhooks::testing::message::{QueuedEvent, QueuedTarget};
use envoy_webhooks::testing::plugin::Plugin;
use envoy_webhooks::testing::serve::{self, Served};
use envoy_webhooks::testing::store;
use envoy_webhooks::testing::{FakeHost, MadeCall};
use serde_json::{json, Value};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const EVENT: &[u8] = br#"{"event_type":"assets","object_id":"1","request_id":"req-9","n":1E2}"#;

fn answer(status: &str) -> Answer {
    Answer {
        status: Some(status.to_string()),
        retry_after: None,
        body_start: Vec::new(),
    }
}

fn load(webhooks: Value) -> Rc<Plugin> {
    let config = json!({
        "webhooks": webhooks,
        "delivery": {"retry_schedule_s": [5], "failure_threshold": 2},
        "dead_letter": {"url": "http://dead:8080/letters", "cluster": "dead"},
        "admin": {"token": "s3cret-Token", "path_prefix": "/webhooks-admin"},
    });
    match Plugin::load(config.to_string().as_bytes(), |_| None) {
        Ok(plugin) => Rc::new(plugin),
        Err(problems) => panic!("invalid test configuration: {problems:?}"),
    }
}

fn hook(id: &str) -> Value {
    json!({"id": id, "event_type": "assets", "url": format!("http://{id}:8080/hook"), "cluster": id, "secret": SECRET})
}

fn started(plugin: &Rc<Plugin>) -> (Engine, FakeHost) {
    let mut host = FakeHost {
        now_ms: 1_700_000_000_000,
        ..FakeHost::default()
    };
    // VM 1, as the filter numbers the VM that registers first.
    let vm = store::unique_vm_number(&mut host).expect("a number");
    let mut engine = Engine::new(vm);
    engine.configure(&mut host, plugin.clone());
    (engine, host)
}

fn matched(plugin: &Plugin, id: &str) -> QueuedEvent {
    let index = plugin
        .definitions()
        .iter()
        .position(|d| d.id == id)
        .expect("configured");
    QueuedEvent {
        targets: vec![QueuedTarget {
            webhook: u32::try_from(index).expect("few"),
            fingerprint: plugin.definitions()[index].fingerprint,
        }],
        request_id: Some("req-1".to_string()),
        headers: Vec::new().into(),
        message_id: None,
        body: EVENT.to_vec().into(),
    }
}

fn ask(plugin: &Plugin, host: &mut FakeHost, route: AdminRoute, body: &[u8]) -> (u32, Value) {
    let request = AdminRequest { body, nonce: 7 };
    let now = host.now_ms;
    let answer = admin::answer(plugin, host, &route, request, now);
    let value = serde_json::from_str(&answer.body).expect("JSON");
    (answer.status, value)
}

fn deliver(
    plugin: &Plugin,
    host: &mut FakeHost,
    id: &str,
    body: &[u8],
) -> (u32, Value, Option<QueuedEvent>) {
    let request = AdminRequest { body, nonce: 7 };
    let now = host.now_ms;
    let route = AdminRoute::Deliver(id.to_string());
    let answer = admin::answer(plugin, host, &route, request, now);
    let value = serde_json::from_str(&answer.body).expect("JSON");
    (answer.status, value, answer.deliver)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Routes a request as the filter does; `None`: not the operator's.
fn served(method: &str, path: &str, authorization: Option<&str>) -> Option<AdminRoute> {
    let plugin = load(json!([hook("a")]));
    let header = |name: &str| {
        (name == "authorization")
            .then(|| authorization.map(str::to_string))
            .flatten()
    };
    match serve::route(&plugin, method, path, &header) {
        Some(Served::Admin(route)) => Some(route),
        _ => None,
    }
}

fn route(method: &str, path: &str) -> AdminRoute {
    served(method, path, Some("Bearer s3cret-Token")).unwrap()
}

#[test]
fn the_new_routes_and_their_methods() {
    let cases = [
        ("POST", "disable", AdminRoute::Disable("a".into())),
        ("GET", "attempts", AdminRoute::Attempts("a".into())),
        ("POST", "deliver", AdminRoute::Deliver("a".into())),
    ];
    for (method, action, expected) in cases {
        let path = format!("/webhooks-admin/webhooks/a/{action}");
        assert_eq!(route(method, &path), expected);
        let other = if method == "GET" { "POST" } else { "GET" };
        assert_eq!(
            route(other, &path),
            AdminRoute::MethodNotAllowed {
                allow: if method == "GET" { "GET" } else { "POST" }
            },
            "{other} {path}"
        );
    }
    assert!(route("POST", "/webhooks-admin/webhooks/a/deliver").needs_body());
    assert!(!route("POST", "/webhooks-admin/webhooks/a/disable").needs_body());
    for action in ["disable", "attempts", "deliver"] {
        let path = format!("/webhooks-admin/webhooks/a/{action}");
        assert_eq!(served("POST", &path, None), None);
    }
}

#[test]
fn unknown_webhooks_are_404_on_every_new_route() {
    let plugin = load(json!([hook("a")]));
    let (_, mut host) = started(&plugin);
    for route in [
        AdminRoute::Disable("nope".into()),
        AdminRoute::Attempts("nope".into()),
        AdminRoute::Deliver("nope".into()),
    ] {
        let (status, body) = ask(&plugin, &mut host, route, EVENT);
        assert_eq!(status, 404);
        assert_eq!(body["error"], "no webhook with id nope");
    }
}

#[test]
fn a_paused_webhook_is_not_called_its_matches_are_counted_and_its_retries_wait() {
    let plugin = load(json!([hook("a"), hook("b")]));
    let (mut engine, mut host) = started(&plugin);
    // A delivery that failed once waits for its retry when the pause begins.
    engine.accept(&mut host, matched(&plugin, "a"));
    let first = host.calls[0].token;
    host.take(first);
    engine.call_finished(&mut host, first, Some(&answer("503")));
    assert_eq!(engine.pending(), 1);

    let (status, entry) = ask(&plugin, &mut host, AdminRoute::Disable("a".into()), b"");
    assert_eq!(status, 200);
    assert_eq!(entry["status"], "DISABLED");
    assert_eq!(entry["configured_status"], "ENABLED");
    assert_eq!(entry["paused_at_ms"], host.now_ms);
    let paused_at = host.now_ms;
    // As the worker's root does after one of its admin requests.
    engine.forget_health();

    for _ in 0..3 {
        engine.accept(&mut host, matched(&plugin, "a"));
    }
    engine.accept(&mut host, matched(&plugin, "b"));
    host.now_ms += 60_000;
    engine.tick(&mut host);
    let to =
        |cluster: &str, host: &FakeHost| host.calls.iter().filter(|c| c.cluster == cluster).count();
    assert_eq!(to("a", &host), 1, "no call to a paused receiver");
    assert_eq!(
        to("dead", &host),
        0,
        "a pause does not flood the dead letters"
    );
    assert_eq!(to("b", &host), 1, "other webhooks are called");
    assert_eq!(host.count_of("a", WebhookCounter::Paused), 3);
    assert_eq!(host.count_of("a", WebhookCounter::Dropped), 0);
    assert_eq!(engine.pending(), 1, "the retry still waits");

    // Pausing again changes nothing, not even the time.
    host.now_ms += 1_000;
    let (_, again) = ask(&plugin, &mut host, AdminRoute::Disable("a".into()), b"");
    assert_eq!(again["paused_at_ms"], paused_at);

    let (status, entry) = ask(&plugin, &mut host, AdminRoute::Enable("a".into()), b"");
    assert_eq!(status, 200);
    assert_eq!(entry["status"], "ENABLED");
    assert_eq!(entry["paused_at_ms"], Value::Null);
    host.now_ms += 1_000;
    engine.tick(&mut host);
    assert_eq!(to("a", &host), 2, "the waiting retry goes after enable");
    assert_eq!(engine.pending(), 0);
}

fn health_reads(host: &FakeHost, id: &str) -> u64 {
    let key = format!("envoy_webhooks/health/{id}");
    host.reads.borrow().get(&key).copied().unwrap_or(0)
}

fn health_writes(host: &FakeHost, id: &str) -> u64 {
    let key = format!("envoy_webhooks/health/{id}");
    host.writes.get(&key).copied().unwrap_or(0)
}

#[test]
fn a_healthy_webhooks_deliveries_read_and_write_no_shared_data() {
    let plugin = load(json!([hook("a")]));
    let (mut engine, mut host) = started(&plugin);
    let deliver = |engine: &mut Engine, host: &mut FakeHost| {
        engine.accept(host, matched(&plugin, "a"));
        let token = host.oldest_open().expect("a call").token;
        host.take(token);
        engine.call_finished(host, token, Some(&answer("204")));
    };
    deliver(&mut engine, &mut host);
    let (reads, writes) = (health_reads(&host, "a"), health_writes(&host, "a"));
    for _ in 0..50 {
        host.now_ms += 1;
        deliver(&mut engine, &mut host);
    }
    assert_eq!(host.count_of("a", WebhookCounter::Delivered), 51);
    assert_eq!(
        health_reads(&host, "a"),
        reads,
        "no read in 50 ms of deliveries"
    );
    assert_eq!(health_writes(&host, "a"), writes, "no write until the tick");
    // The tick adds them to the shared counts, in one write.
    host.now_ms += 250;
    engine.tick(&mut host);
    assert_eq!(health_writes(&host, "a"), writes + 1);
    let stored = store::load(&host, &plugin.definitions()[0], host.now_ms / 1000);
    assert_eq!(stored.delivered, 51);
    // And the record is read again, once, by the next delivery.
    let reads = health_reads(&host, "a");
    deliver(&mut engine, &mut host);
    assert_eq!(health_reads(&host, "a"), reads + 1);
}

/// Webhook `a` delivered once (its clean record read), then paused by an
/// admin request this engine is not told of (another worker's).
fn delivered_then_paused_elsewhere() -> (Rc<Plugin>, Engine, FakeHost) {
    let plugin = load(json!([hook("a")]));
    let (mut engine, mut host) = started(&plugin);
    engine.accept(&mut host, matched(&plugin, "a"));
    let token = host.oldest_open().expect("a call").token;
    host.take(token);
    engine.call_finished(&mut host, token, Some(&answer("204")));
    let (status, _) = ask(&plugin, &mut host, AdminRoute::Disable("a".into()), b"");
    assert_eq!(status, 200);
    (plugin, engine, host)
}

#[test]
fn a_pause_made_on_another_worker_is_seen_within_a_tenth_of_a_second() {
    let (plugin, mut engine, mut host) = delivered_then_paused_elsewhere();
    host.now_ms += 100;
    engine.accept(&mut host, matched(&plugin, "a"));
    assert_eq!(
        host.calls.len(),
        1,
        "not called once the pause is 100 ms old"
    );
    assert_eq!(host.count_of("a", WebhookCounter::Paused), 1);
}

#[test]
fn a_clock_stepping_back_does_not_keep_an_old_read_fresh() {
    let (plugin, mut engine, mut host) = delivered_then_paused_elsewhere();
    // The host's clock steps back an hour (NTP, an operator): the record is read again.
    host.now_ms -= 3_600_000;
    engine.accept(&mut host, matched(&plugin, "a"));
    assert_eq!(host.calls.len(), 1, "paused: not called");
    assert_eq!(host.count_of("a", WebhookCounter::Paused), 1);
}

#[test]
fn a_webhook_disabled_in_the_configuration_stays_so() {
    let mut quiet = hook("quiet");
    quiet["status"] = json!("DISABLED");
    let plugin = load(json!([quiet]));
    let (_, mut host) = started(&plugin);
    let (status, entry) = ask(&plugin, &mut host, AdminRoute::Disable("quiet".into()), b"");
    assert_eq!(status, 200);
    assert_eq!(entry["status"], "DISABLED");
    assert_eq!(entry["paused_at_ms"], Value::Null, "not paused: configured");
    let (status, body) = ask(&plugin, &mut host, AdminRoute::Enable("quiet".into()), b"");
    assert_eq!(status, 409);
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("DISABLED in the configuration"));
    let (status, body, event) = deliver(&plugin, &mut host, "quiet", EVENT);
    assert_eq!(status, 409);
    assert!(event.is_none());
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("DISABLED in the configuration"));
}

#[test]
fn a_test_event_is_delivered_signed_with_a_new_message_id_each_time() {
    let plugin = load(json!([hook("a")]));
    let (mut engine, mut host) = started(&plugin);
    let (status, body, event) = deliver(&plugin, &mut host, "a", EVENT);
    assert_eq!(status, 202);
    let message_id = body["message_id"]
        .as_str()
        .expect("a message_id")
        .to_string();
    assert!(message_id.starts_with("msg_"), "{message_id}");
    let event = event.expect("an event for the engine");
    assert_eq!(event.message_id.as_deref(), Some(message_id.as_str()));
    assert_eq!(
        event.request_id.as_deref(),
        Some("req-9"),
        "the event's own"
    );
    assert_eq!(&event.body[..], EVENT, "byte for byte");
    engine.accept(&mut host, event);
    let call = host.calls.last().expect("a call").clone();
    assert_eq!(call.body, EVENT);
    assert_eq!(
        header(&call.headers, "webhook-id"),
        Some(message_id.as_str())
    );
    assert!(header(&call.headers, "webhook-signature").is_some());
    assert_eq!(host.count_of("a", WebhookCounter::Injected), 1);
    host.take(call.token);
    engine.call_finished(&mut host, call.token, Some(&answer("200")));
    assert_eq!(host.count_of("a", WebhookCounter::Delivered), 1);

    let other = AdminRequest {
        body: EVENT,
        nonce: 8,
    };
    let now = host.now_ms;
    let again = admin::answer(
        &plugin,
        &mut host,
        &AdminRoute::Deliver("a".into()),
        other,
        now,
    );
    assert!(
        !again.body.contains(&message_id),
        "a test event is new each time"
    );
}

#[test]
fn a_redriven_dead_letter_keeps_its_message_id_and_its_event_bytes() {
    let plugin = load(json!([hook("a")]));
    let (mut engine, mut host) = started(&plugin);
    // A delivery that fails both attempts goes to the dead letters.
    engine.accept(&mut host, matched(&plugin, "a"));
    for _ in 0..2 {
        let call = host.oldest_open().expect("an attempt");
        host.take(call.token);
        engine.call_finished(&mut host, call.token, Some(&answer("500")));
        host.now_ms += 10_000;
        engine.tick(&mut host);
    }
    let letter = host.oldest_open().expect("the dead letter");
    assert_eq!(letter.cluster, "dead");
    let record: Value = serde_json::from_slice(&letter.body).expect("a record");
    let original_id = record["message_id"]
        .as_str()
        .expect("its message_id")
        .to_string();
    host.take(letter.token);
    engine.call_finished(&mut host, letter.token, Some(&answer("200")));
    // The receiver is fixed; the operator enables it and redrives the record.
    let (status, _) = ask(&plugin, &mut host, AdminRoute::Enable("a".into()), b"");
    assert_eq!(status, 200);
    let (status, body, event) = deliver(&plugin, &mut host, "a", &letter.body);
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["message_id"], original_id.as_str());
    let event = event.expect("an event");
    assert_eq!(
        &event.body[..],
        EVENT,
        "the record's event, byte for byte (1E2 stays)"
    );
    engine.accept(&mut host, event);
    let call = host.calls.last().expect("a call").clone();
    assert_eq!(call.cluster, "a");
    assert_eq!(
        header(&call.headers, "webhook-id"),
        Some(original_id.as_str())
    );
    assert_eq!(call.body, EVENT);

    // The record is for its own webhook only.
    let plugin2 = load(json!([hook("a"), hook("b")]));
    let (_, mut host2) = started(&plugin2);
    let (status, body, _) = deliver(&plugin2, &mut host2, "b", &letter.body);
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("is for webhook \"a\", not b"),
        "{body}"
    );
}

#[test]
fn deliver_refuses_what_it_cannot_deliver_and_says_why() {
    let plugin = load(json!([hook("a")]));
    let (_, mut host) = started(&plugin);
    for (body, why) in [
        (&b"not json"[..], "not JSON"),
        (b"", "not JSON"),
        (b"[1,2]", "JSON an array, not an event"),
        (b"42", "JSON a number"),
        (
            br#"{"webhook_id":"a","event":"{broken"}"#,
            "not a JSON object",
        ),
        (
            br#"{"webhook_id":7,"event":{}}"#,
            "webhook_id is not a string",
        ),
        (
            br#"{"webhook_id":"a","event":{},"message_id":"bad\nid"}"#,
            "message_id must be",
        ),
    ] {
        let (status, answer, event) = deliver(&plugin, &mut host, "a", body);
        assert_eq!(status, 400, "{}", String::from_utf8_lossy(body));
        assert!(answer["error"].as_str().unwrap().contains(why), "{answer}");
        assert!(event.is_none());
    }
    // FAILED: 409 with the last error, and the way out.
    let definition = &plugin.definitions()[0];
    let policy = plugin.config.delivery.clone();
    for _ in 0..2 {
        store::update(&mut host, definition, 0, |h| {
            h.record_failure("HTTP 500", 0, &policy)
        });
    }
    let (status, answer, event) = deliver(&plugin, &mut host, "a", EVENT);
    assert_eq!(status, 409);
    assert!(event.is_none());
    let error = answer["error"].as_str().unwrap();
    assert!(
        error.contains("is FAILED (last error: HTTP 500)"),
        "{error}"
    );
    assert!(error.contains("/webhooks/a/enable"), "{error}");
    // Paused: 409 too.
    ask(&plugin, &mut host, AdminRoute::Enable("a".into()), b"");
    ask(&plugin, &mut host, AdminRoute::Disable("a".into()), b"");
    let (status, answer, _) = deliver(&plugin, &mut host, "a", EVENT);
    assert_eq!(status, 409);
    assert!(
        answer["error"].as_str().unwrap().contains("paused"),
        "{answer}"
    );
}

#[test]
fn the_attempt_log_shows_each_attempt_newest_first() {
    let plugin = load(json!([hook("a")]));
    let (mut engine, mut host) = started(&plugin);
    engine.accept(&mut host, matched(&plugin, "a"));
    let call = host.oldest_open().expect("an attempt");
    host.take(call.token);
    host.now_ms += 12;
    engine.call_finished(&mut host, call.token, Some(&answer("503")));
    host.now_ms += 10_000;
    engine.tick(&mut host);
    let retry = host.oldest_open().expect("the retry");
    host.take(retry.token);
    host.now_ms += 30;
    engine.call_finished(&mut host, retry.token, Some(&answer("201")));
    assert!(
        (1..=250).contains(&host.tick_ms),
        "a tick publishes the log soon: {} ms",
        host.tick_ms
    );
    host.now_ms += 1_000;
    engine.tick(&mut host);

    let (status, body) = ask(&plugin, &mut host, AdminRoute::Attempts("a".into()), b"");
    assert_eq!(status, 200);
    let attempts = body["attempts"].as_array().expect("a list");
    assert_eq!(attempts.len(), 2, "{body}");
    let message_id = header(&retry.headers, "webhook-id").expect("signed");
    assert_eq!(attempts[0]["attempt"], 2);
    assert_eq!(attempts[0]["status"], 201);
    assert_eq!(attempts[0]["error"], Value::Null);
    assert_eq!(attempts[0]["latency_ms"], 30);
    assert_eq!(attempts[0]["message_id"], message_id);
    assert_eq!(attempts[0]["request_id"], "req-1");
    assert_eq!(attempts[1]["attempt"], 1);
    assert_eq!(attempts[1]["status"], 503);
    assert_eq!(attempts[1]["error"], "HTTP 503");
    assert_eq!(attempts[1]["latency_ms"], 12);
    assert!(attempts[0]["at_ms"].as_u64() > attempts[1]["at_ms"].as_u64());
    let keys: Vec<&str> = attempts[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected = vec![
        "at_ms",
        "attempt",
        "error",
        "latency_ms",
        "message_id",
        "request_id",
        "status",
    ];
    expected.sort_unstable();
    assert_eq!(keys, expected);

    // No answer at all: status null, the error says so.
    engine.accept(&mut host, matched(&plugin, "a"));
    let lost = host.oldest_open().expect("a call");
    host.take(lost.token);
    engine.call_finished(&mut host, lost.token, None);
    host.now_ms += 1_000;
    engine.tick(&mut host);
    let (_, body) = ask(&plugin, &mut host, AdminRoute::Attempts("a".into()), b"");
    assert_eq!(body["attempts"][0]["status"], Value::Null);
    assert_eq!(
        body["attempts"][0]["error"],
        "no response (connection refused or reset)"
    );
}

#[test]
fn the_attempt_log_keeps_the_latest_hundred_across_workers() {
    let plugin = load(json!([hook("a")]));
    let mut host = FakeHost {
        now_ms: 1_700_000_000_000,
        ..FakeHost::default()
    };
    // Two workers (VMs 1 and 2) share the host's shared data.
    let mut workers: Vec<Engine> = (1..=2).map(Engine::new).collect();
    for engine in &mut workers {
        engine.configure(&mut host, plugin.clone());
    }
    store::unique_vm_number(&mut host);
    store::unique_vm_number(&mut host);
    for n in 0..80 {
        for engine in &mut workers {
            engine.accept(&mut host, matched(&plugin, "a"));
            let call = host.oldest_open().expect("a call");
            host.take(call.token);
            engine.call_finished(&mut host, call.token, Some(&answer("200")));
        }
        host.now_ms += 1 + n % 2;
    }
    host.now_ms += 1_000;
    for engine in &mut workers {
        engine.tick(&mut host);
    }
    let (_, body) = ask(&plugin, &mut host, AdminRoute::Attempts("a".into()), b"");
    let attempts = body["attempts"].as_array().expect("a list");
    assert_eq!(attempts.len(), 100);
    let ats: Vec<u64> = attempts
        .iter()
        .map(|a| a["at_ms"].as_u64().unwrap())
        .collect();
    assert!(ats.windows(2).all(|w| w[0] >= w[1]), "newest first");
    assert_eq!(host.count_of("a", WebhookCounter::Delivered), 160);
}

#[test]
fn a_rate_limited_webhook_is_called_at_its_rate_and_loses_nothing() {
    let mut slow = hook("slow");
    slow["rate_limit_per_s"] = json!(20);
    let plugin = load(json!([slow, hook("fast")]));
    let (mut engine, mut host) = started(&plugin);
    let start = host.now_ms;
    for _ in 0..100 {
        engine.accept(&mut host, matched(&plugin, "slow"));
        engine.accept(&mut host, matched(&plugin, "fast"));
    }
    let mut times: Vec<u64> = Vec::new();
    let mut fast = 0;
    // Answer every call at once; the engine's ticks come when it asks.
    for _ in 0..10_000 {
        while let Some(call) = host.oldest_open() {
            host.take(call.token);
            if call.cluster == "slow" {
                times.push(host.now_ms - start);
            } else {
                fast += 1;
            }
            engine.call_finished(&mut host, call.token, Some(&answer("200")));
        }
        if engine.pending() == 0 {
            break;
        }
        host.now_ms += host.tick_ms.max(1);
        engine.tick(&mut host);
    }
    assert_eq!(fast, 100, "the other webhook is not slowed");
    assert_eq!(times.len(), 100, "nothing lost");
    assert_eq!(
        times[..20].iter().filter(|t| **t == 0).count(),
        20,
        "the burst (default: the rate) goes at once"
    );
    let span = times[99] - times[20];
    // 79 intervals of 50 ms after the burst.
    assert!(
        (3_950..=4_100).contains(&span),
        "{span} ms for 80 calls at 20/s"
    );
    assert_eq!(host.count_of("slow", WebhookCounter::Throttled), 80);
    assert_eq!(host.count_of("slow", WebhookCounter::Delivered), 100);
    assert_eq!(host.count_of("fast", WebhookCounter::Throttled), 0);
    let health = store::load(&host, &plugin.definitions()[0], 0);
    assert_eq!(health.status, Status::Enabled, "waiting is not failing");
    assert_eq!(health.consecutive_failures, 0);
}

#[test]
fn rate_limit_settings_are_checked() {
    let problems = |extra: Value| {
        let mut webhook = hook("a");
        for (key, value) in extra.as_object().expect("fields") {
            webhook[key] = value.clone();
        }
        let config = json!({"webhooks": [webhook]});
        match Plugin::load(config.to_string().as_bytes(), |_| None) {
            Ok(plugin) => {
                let limit = plugin.definitions()[0].rate_limit;
                Ok(limit.map(|l| (l.per_s, l.burst)))
            }
            Err(problems) => Err(problems.join("\n")),
        }
    };
    assert_eq!(problems(json!({})), Ok(None));
    assert_eq!(
        problems(json!({"rate_limit_per_s": 20})),
        Ok(Some((20, 20)))
    );
    assert_eq!(
        problems(json!({"rate_limit_per_s": 20, "rate_limit_burst": 100})),
        Ok(Some((20, 100)))
    );
    for (bad, says) in [
        (
            json!({"rate_limit_per_s": 0}),
            "'rate_limit_per_s': expected a whole number from 1 to 100000, found 0",
        ),
        (
            json!({"rate_limit_per_s": 2.5}),
            "'rate_limit_per_s': expected a whole number",
        ),
        (
            json!({"rate_limit_per_s": "20"}),
            "'rate_limit_per_s': expected a whole number",
        ),
        (
            json!({"rate_limit_burst": 5}),
            "'rate_limit_burst': needs rate_limit_per_s",
        ),
        (
            json!({"rate_limit_per_s": 5, "rate_limit_burst": 0}),
            "'rate_limit_burst': expected a whole number",
        ),
    ] {
        let error = problems(bad.clone()).expect_err("refused");
        assert!(
            error.contains("webhook \"a\"") && error.contains(says),
            "{bad}: {error}"
        );
    }
}

/// `webhook-id` is one message's: every attempt of a delivery carries the
/// same, and the same event text delivered twice (the platform sent it
/// twice) is two messages with two ids.
#[test]
fn each_delivery_has_its_own_webhook_id_and_keeps_it_through_retries() {
    let plugin = load(json!([hook("a")]));
    let (mut engine, mut host) = started(&plugin);
    engine.accept(&mut host, matched(&plugin, "a"));
    engine.accept(&mut host, matched(&plugin, "a"));
    let first = host.oldest_open().expect("the first delivery");
    host.take(first.token);
    let second = host.oldest_open().expect("the second delivery");
    host.take(second.token);
    assert_eq!(first.body, second.body, "the same event text");
    let id = |call: &MadeCall| header(&call.headers, "webhook-id").map(str::to_string);
    assert!(id(&first).is_some_and(|id| id.starts_with("msg_") && id.len() == 36));
    assert_ne!(id(&first), id(&second));
    engine.call_finished(&mut host, first.token, Some(&answer("503")));
    host.now_ms += 10_000;
    engine.tick(&mut host);
    let retry = host.oldest_open().expect("the retry");
    assert_eq!(id(&retry), id(&first));
}
