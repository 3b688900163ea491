//! The delivery engine, natively, against a fake host: attempts, retries,
//! dead letters, bounds, epochs, reloads, and docs/operations.md's accounting
//! identities under long random sequences of host events.

use std::collections::BTreeMap;
use std::rc::Rc;

use envoy_webhooks::status::Status;
use envoy_webhooks::testing::admin::{self, AdminRequest, AdminRoute};
use envoy_webhooks::testing::call::Answer;
use envoy_webhooks::testing::engine::{Engine, MAX_TURN_BYTES};
use envoy_webhooks::testing::host::WebhookCounter;
use envoy_webhooks::testing::message::{QueuedEvent, QueuedTarget};
use envoy_webhooks::testing::plugin::Plugin;

use crate::tenant_webhook;
use envoy_webhooks::testing::store;
use envoy_webhooks::testing::{FakeHost, MadeCall};
use proptest::prelude::*;
use serde_json::{json, Value};

fn answer(status: &str) -> Answer {
    Answer {
        status: Some(status.to_string()),
        retry_after: None,
        body_start: Vec::new(),
    }
}

fn load(config: Value) -> Rc<Plugin> {
    match Plugin::load(config.to_string().as_bytes(), |_| None) {
        Ok(plugin) => Rc::new(plugin),
        Err(problems) => panic!("invalid test configuration: {problems:?}"),
    }
}

fn hook(id: &str) -> Value {
    json!({"id": id, "event_type": "assets", "url": format!("http://{id}:8080/hook"), "cluster": id})
}

fn config(hooks: &[&str], delivery: Value, dead_letter: bool) -> Value {
    let mut config = json!({
        "webhooks": hooks.iter().map(|id| hook(id)).collect::<Vec<_>>(),
        "delivery": delivery,
        "events": {"max_event_bytes": 524_288},
    });
    if dead_letter {
        config["dead_letter"] = json!({"url": "http://dead:8080/letters", "cluster": "dead"});
    }
    config
}

fn event_for(plugin: &Plugin, ids: &[&str], body: &[u8]) -> QueuedEvent {
    let targets = ids
        .iter()
        .filter_map(|id| plugin.definitions().iter().position(|d| d.id == *id))
        .map(|index| QueuedTarget {
            webhook: u32::try_from(index).expect("few webhooks"),
            fingerprint: plugin.definitions()[index].fingerprint,
        })
        .collect();
    QueuedEvent {
        targets,
        request_id: Some("req-1".to_string()),
        headers: Vec::new().into(),
        message_id: None,
        body: body.to_vec().into(),
    }
}

fn started(plugin: &Rc<Plugin>) -> (Engine, FakeHost) {
    let mut host = FakeHost {
        now_ms: 1_700_000_000_000,
        ..FakeHost::default()
    };
    let mut engine = Engine::new(1);
    engine.configure(&mut host, plugin.clone());
    (engine, host)
}

/// Advances the clock by `ms` and ticks.
fn wait(engine: &mut Engine, host: &mut FakeHost, ms: u64) {
    host.now_ms += ms;
    engine.tick(host);
}

fn header<'a>(call: &'a MadeCall, name: &str) -> Option<&'a str> {
    call.headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

const EVENT: &[u8] = br#"{"event_type":"assets","object_id":"1","n":1E2}"#;

#[test]
fn a_match_is_one_post_of_the_exact_event_and_a_2xx_delivers_it() {
    let plugin = load(config(&["a"], json!({}), false));
    let (mut engine, mut host) = started(&plugin);
    engine.accept(&mut host, event_for(&plugin, &["a"], EVENT));
    assert_eq!(host.calls.len(), 1);
    let call = host.calls[0].clone();
    assert_eq!(call.cluster, "a");
    assert_eq!(call.body, EVENT);
    assert_eq!(header(&call, ":path"), Some("/hook"));
    assert_eq!(header(&call, ":authority"), Some("a:8080"));
    assert_eq!(header(&call, "envoy-webhooks-delivery"), Some("1"));
    assert!(host.held_gauge > 0, "a call in flight holds its body");
    engine.call_finished(&mut host, call.token, Some(&answer("204")));
    assert_eq!(host.count_of("a", WebhookCounter::Delivered), 1);
    assert_eq!(host.held_gauge, 0);
    assert_eq!(engine.in_flight(), 0);
}

#[test]
fn failed_attempts_are_retried_on_the_schedule_then_dead_lettered() {
    let plugin = load(config(&["a"], json!({"retry_schedule_s": [5, 30]}), true));
    let (mut engine, mut host) = started(&plugin);
    engine.accept(&mut host, event_for(&plugin, &["a"], EVENT));
    let first = host.oldest_open().expect("a call");
    host.take(first.token);
    engine.call_finished(&mut host, first.token, Some(&answer("500")));
    assert_eq!(engine.pending(), 1);
    // ±20% jitter, here exactly the schedule (random 0.5).
    wait(&mut engine, &mut host, 4_999);
    assert!(host.open.is_empty(), "not before its time");
    wait(&mut engine, &mut host, 1);
    let second = host.oldest_open().expect("the second attempt");
    host.take(second.token);
    engine.call_finished(&mut host, second.token, None);
    wait(&mut engine, &mut host, 30_000);
    let third = host.oldest_open().expect("the third attempt");
    host.take(third.token);
    engine.call_finished(&mut host, third.token, Some(&answer("503")));
    // Exhausted: failed, and a dead letter is sent.
    assert_eq!(host.count_of("a", WebhookCounter::Failed), 1);
    assert_eq!(host.count_of("a", WebhookCounter::Retried), 2);
    let letter = host.oldest_open().expect("the dead letter");
    assert_eq!(letter.cluster, "dead");
    let record: Value = serde_json::from_slice(&letter.body).expect("JSON");
    assert_eq!(record["reason"], "retries_exhausted");
    assert_eq!(record["attempts"], 3);
    assert_eq!(record["last_error"], "HTTP 503");
    assert!(
        String::from_utf8_lossy(&letter.body).contains(std::str::from_utf8(EVENT).expect("UTF-8"))
    );
    host.take(letter.token);
    engine.call_finished(&mut host, letter.token, Some(&answer("200")));
    assert_eq!(host.count_of("a", WebhookCounter::DeadLettered), 1);
    let health = store::load(&host, &plugin.definitions()[0], 0);
    assert_eq!(health.status, Status::Failing);
}

/// The engine publishes its queue into shared data and any worker's admin
/// API reads it back: the record's bytes and the view are pinned here.
#[test]
fn a_waiting_retry_is_published_and_shown_by_the_pending_view() {
    let plugin = load(config(&["a", "b"], json!({}), false));
    let (mut engine, mut host) = started(&plugin);
    // As the root context does: the view reads the VMs that registered.
    assert_eq!(store::unique_vm_number(&mut host), Some(1));
    let now = host.now_ms;
    engine.accept(&mut host, event_for(&plugin, &["a"], EVENT));
    let token = host.calls[0].token;
    engine.call_finished(&mut host, token, Some(&answer("503")));
    let due = now + 5_000;
    let record = host
        .data
        .get("envoy_webhooks/pending/1")
        .map(|(bytes, _)| String::from_utf8_lossy(bytes).into_owned());
    let a = format!(r#""a":{{"dead_letters":0,"deliveries":1,"next_due_ms":{due}}}"#);
    assert_eq!(
        record,
        Some(format!(r#"{{"updated_at_ms":{now},"webhooks":{{{a}}}}}"#))
    );
    let view = admin::answer(
        &plugin,
        &mut host,
        &AdminRoute::Pending,
        AdminRequest::default(),
        now,
    );
    assert_eq!(view.status, 200);
    let a = format!(
        r#"{{"dead_letters_pending":0,"id":"a","next_due_at":{},"pending":1}}"#,
        due / 1000
    );
    let b = r#"{"dead_letters_pending":0,"id":"b","next_due_at":null,"pending":0}"#;
    assert_eq!(
        view.body,
        format!(r#"{{"webhooks":[{a},{b}],"workers_with_backlog":1}}"#)
    );
}

#[test]
fn on_stop_waiting_retries_are_dead_lettered_with_reason_shutdown() {
    let plugin = load(config(&["a"], json!({"retry_schedule_s": [60]}), true));
    let (mut engine, mut host) = started(&plugin);
    engine.accept(&mut host, event_for(&plugin, &["a"], EVENT));
    engine.accept(&mut host, event_for(&plugin, &["a"], EVENT));
    let calls: Vec<MadeCall> = host.open.values().cloned().collect();
    // One waits for its retry, one is still in flight when Envoy stops the filter.
    host.take(calls[0].token);
    engine.call_finished(&mut host, calls[0].token, Some(&answer("500")));
    assert_eq!(engine.pending(), 1);
    engine.stop(&mut host);
    assert_eq!(engine.pending(), 0);
    assert!(!engine.is_idle(), "calls are in flight");
    let letter = host
        .open
        .values()
        .find(|c| c.cluster == "dead")
        .cloned()
        .expect("a dead letter");
    let record: Value = serde_json::from_slice(&letter.body).expect("JSON");
    assert_eq!(record["reason"], "shutdown");
    // The call in flight fails: not retried any more, dead-lettered at once.
    host.take(calls[1].token);
    engine.call_finished(&mut host, calls[1].token, Some(&answer("503")));
    let letters: Vec<MadeCall> = host.open.values().cloned().collect();
    assert_eq!(letters.len(), 2);
    for letter in letters {
        host.take(letter.token);
        engine.call_finished(&mut host, letter.token, Some(&answer("200")));
    }
    assert!(engine.is_idle());
    assert_eq!(host.count_of("a", WebhookCounter::DeadLettered), 2);
    assert_eq!(host.count_of("a", WebhookCounter::Dropped), 2);
    assert_eq!(host.count_of("a", WebhookCounter::Lost), 0);
}

#[test]
fn without_a_dead_letter_destination_a_failed_delivery_is_lost() {
    let plugin = load(config(&["a"], json!({"retry_schedule_s": []}), false));
    let (mut engine, mut host) = started(&plugin);
    engine.accept(&mut host, event_for(&plugin, &["a"], EVENT));
    let call = host.oldest_open().expect("a call");
    engine.call_finished(&mut host, call.token, Some(&answer("500")));
    assert_eq!(host.count_of("a", WebhookCounter::Failed), 1);
    assert_eq!(host.count_of("a", WebhookCounter::Lost), 1);
}

#[test]
fn an_unknown_cluster_fails_the_attempt() {
    let plugin = load(config(&["a"], json!({"retry_schedule_s": []}), false));
    let (mut engine, mut host) = started(&plugin);
    host.missing_clusters.push("a".to_string());
    engine.accept(&mut host, event_for(&plugin, &["a"], EVENT));
    assert_eq!(host.count_of("a", WebhookCounter::Failed), 1);
    let health = store::load(&host, &plugin.definitions()[0], 0);
    assert_eq!(
        health.last_error.as_deref(),
        Some("cannot call cluster 'a'")
    );
}

#[test]
fn outcomes_of_calls_made_before_an_enable_do_not_count() {
    let plugin = load(config(
        &["a"],
        json!({"retry_schedule_s": [], "failure_threshold": 1}),
        false,
    ));
    let (mut engine, mut host) = started(&plugin);
    let definition = plugin.definitions()[0].clone();
    // Two calls in flight; the first fails the webhook.
    engine.accept(&mut host, event_for(&plugin, &["a"], EVENT));
    engine.accept(&mut host, event_for(&plugin, &["a"], EVENT));
    let tokens: Vec<u32> = host.open.keys().copied().collect();
    engine.call_finished(&mut host, tokens[0], Some(&answer("500")));
    assert_eq!(store::load(&host, &definition, 0).status, Status::Failed);
    // An operator enables it; then the older call's failure arrives.
    store::update(&mut host, &definition, 0, |health| health.enable()).expect("stored");
    engine.call_finished(&mut host, tokens[1], Some(&answer("500")));
    let health = store::load(&host, &definition, 0);
    assert_eq!(health.status, Status::Enabled, "the receiver may be fixed");
    assert_eq!(health.failed, 2, "still counted as a failed delivery");
    assert_eq!(host.count_of("a", WebhookCounter::Failed), 2);
    // A call made after the enable counts again.
    engine.accept(&mut host, event_for(&plugin, &["a"], EVENT));
    let token = *host.open.keys().last().expect("a new call");
    engine.call_finished(&mut host, token, Some(&answer("500")));
    assert_eq!(store::load(&host, &definition, 0).status, Status::Failed);
}

#[test]
fn a_failed_webhook_is_not_called_and_its_deliveries_are_dead_lettered() {
    let mut failed = config(&["a"], json!({}), true);
    failed["webhooks"][0]["status"] = json!("FAILED");
    let plugin = load(failed);
    let (mut engine, mut host) = started(&plugin);
    engine.accept(&mut host, event_for(&plugin, &["a"], EVENT));
    assert_eq!(host.count_of("a", WebhookCounter::Dropped), 1);
    let letter = host.oldest_open().expect("a dead letter");
    assert_eq!(letter.cluster, "dead");
    let record: Value = serde_json::from_slice(&letter.body).expect("JSON");
    assert_eq!(record["reason"], "webhook_failed");
}

#[test]
fn what_does_not_fit_the_held_bytes_budget_is_dropped_not_held() {
    let plugin = load(config(
        &["a", "b", "c"],
        json!({"max_held_bytes": 1_048_576, "max_pending_bytes": 1_048_576}),
        false,
    ));
    let (mut engine, mut host) = started(&plugin);
    let body = vec![b' '; 400 * 1024];
    engine.accept(&mut host, event_for(&plugin, &["a", "b", "c"], &body));
    // Two bodies of 400 KiB fit 1 MiB; the third does not.
    assert_eq!(host.open.len(), 2);
    assert_eq!(host.count_of("c", WebhookCounter::Dropped), 1);
    assert_eq!(host.count_of("c", WebhookCounter::Lost), 1);
    assert!(engine.held_bytes() <= 1_048_576);
    assert_eq!(plugin.held.total(), engine.held_bytes());
}

#[test]
fn one_callback_starts_a_bounded_amount_of_work() {
    let ids: Vec<String> = (0..20).map(|i| format!("h{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let plugin = load(config(&refs, json!({}), false));
    let (mut engine, mut host) = started(&plugin);
    let body = vec![b' '; 1024 * 1024];
    engine.accept(&mut host, event_for(&plugin, &refs, &body));
    let per_turn = MAX_TURN_BYTES / body.len();
    assert_eq!(
        host.calls.len(),
        per_turn,
        "the rest waits for the next tick"
    );
    assert_eq!(engine.pending(), 20 - per_turn);
    assert!(host.tick_ms > 0, "a tick is scheduled");
    wait(&mut engine, &mut host, 10);
    assert_eq!(host.calls.len(), 2 * per_turn);
    for _ in 0..10 {
        wait(&mut engine, &mut host, 10);
    }
    assert_eq!(host.calls.len(), 20);
    assert_eq!(
        host.count_of("h0", WebhookCounter::Retried),
        0,
        "waiting is not retrying"
    );
}

#[test]
fn call_slots_make_deliveries_wait_not_drop() {
    let plugin = load(config(&["a"], json!({"max_in_flight": 2}), false));
    let (mut engine, mut host) = started(&plugin);
    for _ in 0..5 {
        engine.accept(&mut host, event_for(&plugin, &["a"], EVENT));
    }
    assert_eq!(host.open.len(), 2);
    assert_eq!(engine.pending(), 3);
    while let Some(call) = host.oldest_open() {
        host.take(call.token);
        engine.call_finished(&mut host, call.token, Some(&answer("200")));
        wait(&mut engine, &mut host, 50);
    }
    assert_eq!(host.count_of("a", WebhookCounter::Delivered), 5);
    assert_eq!(host.count_of("a", WebhookCounter::Dropped), 0);
}

#[test]
fn a_reload_never_sends_a_delivery_with_another_definition() {
    let plugin = load(config(&["a", "b"], json!({"retry_schedule_s": [5]}), false));
    let (mut engine, mut host) = started(&plugin);
    engine.accept(&mut host, event_for(&plugin, &["a", "b"], EVENT));
    let calls: Vec<MadeCall> = host.open.values().cloned().collect();
    // Both fail once and wait for a retry.
    for call in &calls {
        host.take(call.token);
        engine.call_finished(&mut host, call.token, Some(&answer("500")));
    }
    assert_eq!(engine.pending(), 2);
    // The reload reorders them and changes b's URL.
    let mut reloaded = config(&["b", "a"], json!({"retry_schedule_s": [5]}), false);
    reloaded["webhooks"][0]["url"] = json!("http://b:8080/new");
    let reloaded = load(reloaded);
    engine.configure(&mut host, reloaded.clone());
    wait(&mut engine, &mut host, 5_000);
    let retried: Vec<MadeCall> = host.open.values().cloned().collect();
    assert_eq!(retried.len(), 1, "{retried:?}");
    assert_eq!(
        retried[0].cluster, "a",
        "a kept its definition, at a new position"
    );
    assert_eq!(
        host.discarded(),
        1,
        "b's old delivery is not sent to its new URL"
    );
}

// ---------------------------------------------------------------------------
// The accounting identities under random sequences

#[derive(Debug, Clone)]
enum Step {
    /// An event matching these webhooks (indexes into the current list), with a body size.
    Event(Vec<usize>, usize),
    /// Answers the open call at this position.
    Answer(usize, u16),
    /// The open call at this position ends without an answer.
    NoAnswer(usize),
    /// Time passes (ms), then a tick.
    Wait(u64),
    /// A reload: webhook `i` (if present) gets a new URL; maybe one is added.
    Reload(usize, bool),
    /// An operator enables webhook `i`.
    Enable(usize),
    /// An operator pauses webhook `i` (`disable`).
    Pause(usize),
    /// An operator hands an event to webhook `i` (`deliver`).
    Inject(usize),
    /// Envoy stops the filter (`on_done`).
    Stop,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (proptest::collection::vec(0usize..6, 1..4), 1usize..3_000).prop_map(|(w, n)| Step::Event(w, n)),
        4 => (0usize..8, prop_oneof![Just(200u16), Just(204), Just(500), Just(503), Just(410), Just(429)])
            .prop_map(|(i, s)| Step::Answer(i, s)),
        1 => (0usize..8).prop_map(Step::NoAnswer),
        3 => prop_oneof![Just(10u64), Just(200), Just(5_000), Just(40_000)].prop_map(Step::Wait),
        1 => (0usize..6, any::<bool>()).prop_map(|(i, add)| Step::Reload(i, add)),
        1 => (0usize..6).prop_map(Step::Enable),
        1 => (0usize..6).prop_map(Step::Pause),
        1 => (0usize..6).prop_map(Step::Inject),
        1 => Just(Step::Stop),
    ]
}

fn identities_hold(steps: Vec<Step>, dead_letter: bool, small: bool) -> Result<(), TestCaseError> {
    identities_hold_journaling(steps, dead_letter, small, false)
}

/// The stand-in journal of `identities_hold_journaling`: etcd holds the
/// odd-numbered records.
fn in_etcd(number: u64) -> bool {
    number % 2 == 1
}

fn identities_hold_journaling(
    steps: Vec<Step>,
    dead_letter: bool,
    small: bool,
    journaling: bool,
) -> Result<(), TestCaseError> {
    let mut ids: Vec<String> = (0..4).map(|i| format!("h{i}")).collect();
    let mut urls: BTreeMap<String, u32> = BTreeMap::new();
    let delivery = if small {
        json!({"retry_schedule_s": [5, 30], "max_pending": 3, "max_in_flight": 2,
               "max_held_bytes": 1_048_576, "max_pending_bytes": 8_192, "failure_threshold": 2})
    } else {
        json!({"retry_schedule_s": [5, 30], "failure_threshold": 3})
    };
    let make = |ids: &[String], urls: &BTreeMap<String, u32>| {
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let mut config = config(&refs, delivery.clone(), dead_letter);
        for (i, id) in ids.iter().enumerate() {
            if let Some(version) = urls.get(id) {
                config["webhooks"][i]["url"] = json!(format!("http://{id}:8080/v{version}"));
            }
        }
        // h1 is rate-limited: its deliveries wait in line, never fail for it.
        config["webhooks"][1]["rate_limit_per_s"] = json!(2);
        config["webhooks"][1]["rate_limit_burst"] = json!(1);
        load(config)
    };
    let mut plugin = make(&ids, &urls);
    let (mut engine, mut host) = started(&plugin);
    engine.set_journaling(journaling);
    let mut matched: BTreeMap<String, u64> = BTreeMap::new();
    let mut accepted = 0u64;
    for step in steps {
        match step {
            Step::Event(which, size) => {
                let chosen: Vec<&str> = which
                    .iter()
                    .filter_map(|i| ids.get(*i).map(String::as_str))
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
                for id in &chosen {
                    *matched.entry(id.to_string()).or_default() += 1;
                    accepted += 1;
                }
                engine.accept(&mut host, event_for(&plugin, &chosen, &vec![b'x'; size]));
            }
            Step::Answer(position, status) => {
                if let Some(token) = host.open.keys().nth(position).copied() {
                    host.take(token);
                    engine.call_finished(&mut host, token, Some(&answer(&status.to_string())));
                }
            }
            Step::NoAnswer(position) => {
                if let Some(token) = host.open.keys().nth(position).copied() {
                    host.take(token);
                    engine.call_finished(&mut host, token, None);
                }
            }
            Step::Wait(ms) => wait(&mut engine, &mut host, ms),
            Step::Reload(i, add) => {
                if let Some(id) = ids.get(i) {
                    *urls.entry(id.clone()).or_default() += 1;
                }
                if add {
                    ids.push(format!("h{}", ids.len()));
                }
                plugin = make(&ids, &urls);
                engine.configure(&mut host, plugin.clone());
            }
            Step::Enable(i) => {
                if let Some(definition) = plugin.definitions().get(i) {
                    store::update(&mut host, definition, 0, |health| health.enable());
                }
            }
            Step::Pause(i) => {
                if let Some(definition) = plugin.definitions().get(i) {
                    let now_ms = host.now_ms;
                    store::update(&mut host, definition, 0, |health| health.pause(now_ms));
                }
            }
            Step::Inject(i) => {
                if let Some(id) = ids.get(i) {
                    *matched.entry(id.to_string()).or_default() += 1;
                    accepted += 1;
                    let mut event = event_for(&plugin, &[id.as_str()], EVENT);
                    event.message_id = Some(format!("msg_injected_{accepted}"));
                    engine.accept(&mut host, event);
                }
            }
            Step::Stop => {
                engine.stop(&mut host);
                prop_assert_eq!(engine.pending(), 0, "nothing waits once stopped");
                // The journal wrote the odd-numbered records, not the rest:
                // those are handed off, the others dead-lettered.
                engine.hand_off(&mut host, in_etcd);
                prop_assert!(!engine.is_leaving());
            }
        }
        prop_assert!(engine.held_bytes() <= plugin.config.delivery.max_held_bytes);
    }
    // Settle: paused webhooks enabled again (their retries waited), every
    // call answered 200 or left unanswered, time runs out the schedule.
    for definition in plugin.definitions() {
        store::update(&mut host, definition, 0, |health| {
            if health.is_paused() {
                health.enable()
            } else {
                None
            }
        });
    }
    for round in 0..200 {
        // A stopped filter's delivery that failed (in the steps, or just now)
        // leaves once the journal has written, as the journal's turn does.
        engine.hand_off(&mut host, in_etcd);
        while let Some(call) = host.oldest_open() {
            host.take(call.token);
            let outcome = if round % 2 == 0 {
                Some(answer("200"))
            } else {
                None
            };
            engine.call_finished(&mut host, call.token, outcome.as_ref());
            engine.hand_off(&mut host, in_etcd);
        }
        if engine.is_idle() {
            break;
        }
        wait(&mut engine, &mut host, 60_000);
    }
    prop_assert_eq!(engine.pending(), 0);
    prop_assert_eq!(engine.in_flight(), 0);
    prop_assert!(
        !engine.is_leaving(),
        "every leaving delivery was handed off or dead-lettered"
    );
    prop_assert_eq!(host.held_gauge, 0);
    let mut settled = 0;
    for (id, matched) in &matched {
        let count = |c| host.count_of(id, c);
        use WebhookCounter::*;
        settled +=
            count(Delivered) + count(Failed) + count(Dropped) + count(HandedOff) + count(Paused);
        if !journaling {
            prop_assert_eq!(count(HandedOff), 0);
        }
        prop_assert_eq!(
            count(Failed) + count(Dropped),
            count(DeadLettered) + count(Lost),
            "failed + dropped = dead_lettered + lost for {} (matched {})",
            id,
            matched
        );
    }
    prop_assert_eq!(
        accepted,
        settled + host.discarded(),
        "matched + injected = delivered + failed + dropped + handed_off + paused (+ discarded by reloads)"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn identities_hold_with_dead_letters(steps in proptest::collection::vec(step(), 1..80)) {
        identities_hold(steps, true, false)?;
    }

    #[test]
    fn identities_hold_without_dead_letters(steps in proptest::collection::vec(step(), 1..80)) {
        identities_hold(steps, false, false)?;
    }

    #[test]
    fn identities_hold_when_journaling_for_the_cluster(steps in proptest::collection::vec(step(), 1..80), dead_letter in any::<bool>()) {
        identities_hold_journaling(steps, dead_letter, false, true)?;
    }

    #[test]
    fn identities_hold_under_tight_bounds(steps in proptest::collection::vec(step(), 1..80), dead_letter in any::<bool>()) {
        identities_hold(steps, dead_letter, true)?;
    }
}

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[test]
fn the_platform_requests_trace_headers_go_with_every_attempt_and_its_dead_letter() {
    let mut config = config(&["a", "b"], json!({"retry_schedule_s": [5]}), true);
    // A header the operator configured for a webhook keeps its value.
    config["webhooks"][1]["headers"] = json!({"tracestate": "configured"});
    let plugin = load(config);
    let (mut engine, mut host) = started(&plugin);
    let mut event = event_for(&plugin, &["a", "b"], EVENT);
    event.headers = vec![
        ("traceparent".to_string(), TRACEPARENT.to_string()),
        ("tracestate".to_string(), "congo=t61rcWkgMzE".to_string()),
    ]
    .into();
    engine.accept(&mut host, event);
    let calls: Vec<MadeCall> = host.calls.clone();
    assert_eq!(calls.len(), 2);
    for call in &calls {
        assert_eq!(header(call, "traceparent"), Some(TRACEPARENT));
        let tracestate: Vec<&str> = call
            .headers
            .iter()
            .filter(|(n, _)| n == "tracestate")
            .map(|(_, v)| v.as_str())
            .collect();
        let expected = if call.cluster == "b" {
            "configured"
        } else {
            "congo=t61rcWkgMzE"
        };
        assert_eq!(tracestate, [expected], "once, {}", call.cluster);
        host.take(call.token);
        engine.call_finished(&mut host, call.token, Some(&answer("503")));
    }
    // The retries come after the request ended, with the same headers.
    wait(&mut engine, &mut host, 6_000);
    let retries: Vec<MadeCall> = host.open.values().cloned().collect();
    assert_eq!(retries.len(), 2);
    for call in &retries {
        assert_eq!(header(call, "traceparent"), Some(TRACEPARENT));
        host.take(call.token);
        engine.call_finished(&mut host, call.token, Some(&answer("503")));
    }
    let letters: Vec<MadeCall> = host.open.values().cloned().collect();
    assert_eq!(letters.len(), 2);
    for letter in &letters {
        assert_eq!(letter.cluster, "dead");
        assert_eq!(header(letter, "traceparent"), Some(TRACEPARENT));
    }
}

#[test]
fn a_request_without_trace_headers_sends_none() {
    let plugin = load(config(&["a"], json!({}), false));
    let (mut engine, mut host) = started(&plugin);
    engine.accept(&mut host, event_for(&plugin, &["a"], EVENT));
    let call = host.calls[0].clone();
    assert_eq!(header(&call, "traceparent"), None);
    assert_eq!(header(&call, "tracestate"), None);
}

#[test]
fn a_receiver_not_reached_over_https_points_at_tls_and_the_clusters_stats() {
    let mut config = config(&["plain", "secure"], json!({"retry_schedule_s": []}), false);
    config["webhooks"][1]["url"] = json!("https://receiver.example/in");
    config["webhooks"][1]["cluster"] = json!("dfp_https");
    let plugin = load(config);
    let (mut engine, mut host) = started(&plugin);
    engine.accept(&mut host, event_for(&plugin, &["plain", "secure"], EVENT));
    let refused = Answer {
        status: Some("503".to_string()),
        retry_after: None,
        body_start: b"upstream connect error or disconnect/reset before headers. reset reason: remote connection failure".to_vec(),
    };
    for call in host.calls.clone() {
        host.take(call.token);
        engine.call_finished(&mut host, call.token, Some(&refused));
    }
    let error_of = |index: usize| {
        store::load(&host, &plugin.definitions()[index], 0)
            .last_error
            .unwrap_or_default()
    };
    let plain = error_of(0);
    assert!(
        plain.contains("not reached: upstream connect error"),
        "{plain}"
    );
    assert!(!plain.contains("TLS"), "{plain}");
    let secure = error_of(1);
    assert!(secure.contains("not reached over TLS"), "{secure}");
    assert!(
        secure.contains("cluster.dfp_https.ssl.fail_verify_*"),
        "{secure}"
    );
    assert_eq!(host.count_of("secure", WebhookCounter::Failed), 1);
}

/// A tenant change makes every worker configure its engine anew: only the
/// webhooks that changed have their health records read and written, not
/// every tenant's (10,000 of them would be 20,000 host calls a change).
#[test]
fn a_tenant_change_touches_only_the_changed_webhooks_records() {
    let base = load(json!({
        "webhooks": [hook("configured")],
        "api": {"tokens": {}},
        "cluster_state": {"etcd": {"cluster": "etcd", "authority": "etcd:2379"}},
        "delivery": {"clusters": {"https": "egress"}}
    }));
    let tenants: Vec<_> = (0..50)
        .map(|n| tenant_webhook(n, "ENABLED", "hooks.example.com"))
        .collect();
    let mut host = FakeHost::default();
    let mut engine = Engine::new(1);
    engine.configure(&mut host, Rc::new(base.with_tenants(tenants.clone())));
    let key = |n: usize| format!("envoy_webhooks/health/{n:08x}-0000-4000-8000-000000000000");
    assert_eq!(
        host.writes.get(&key(7)),
        Some(&1),
        "a new webhook gets its record"
    );

    // One more webhook, one with a new URL (its record starts afresh), one
    // disabled (its record stays: the matcher reads the status).
    let mut changed = tenants.clone();
    changed[3] = tenant_webhook(3, "ENABLED", "elsewhere.example.com");
    changed[4] = tenant_webhook(4, "DISABLED", "hooks.example.com");
    changed.push(tenant_webhook(50, "ENABLED", "hooks.example.com"));
    engine.configure(&mut host, Rc::new(base.with_tenants(changed)));
    for n in (0..50).filter(|n| *n != 3) {
        assert_eq!(host.writes.get(&key(n)), Some(&1), "webhook {n}");
    }
    assert_eq!(host.writes.get(&key(3)), Some(&2));
    assert_eq!(host.writes.get(&key(50)), Some(&1));
    // The configuration's own webhooks are configured every time.
    assert_eq!(
        host.writes.get("envoy_webhooks/health/configured"),
        Some(&2)
    );
}
