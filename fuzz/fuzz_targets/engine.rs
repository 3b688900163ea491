//! Any sequence of host events for the delivery engine: it never panics,
//! keeps within its memory budget, and once settled docs/operations.md's accounting
//! identities hold.
#![no_main]

use std::rc::Rc;

use envoy_webhooks::testing::call::Answer;
use envoy_webhooks::testing::engine::Engine;
use envoy_webhooks::testing::host::WebhookCounter;
use envoy_webhooks::testing::message::{QueuedEvent, QueuedTarget};
use envoy_webhooks::testing::plugin::Plugin;
use envoy_webhooks::testing::FakeHost;
use libfuzzer_sys::fuzz_target;

const IDS: [&str; 4] = ["a", "b", "c", "d"];

fn plugin(version: u8) -> Option<Rc<Plugin>> {
    let webhooks: Vec<_> = IDS
        .iter()
        .map(|id| serde_json::json!({"id": id, "event_type": "assets", "cluster": id,
            "url": format!("http://{id}/v{}", if *id == "b" { version } else { 0 })}))
        .collect();
    let config = serde_json::json!({
        "webhooks": webhooks,
        "events": {"max_event_bytes": 65536},
        "delivery": {"retry_schedule_s": [1, 2], "max_pending": 4, "max_in_flight": 3,
                     "max_pending_bytes": 4096, "max_held_bytes": 1048576, "failure_threshold": 2},
        "dead_letter": {"url": "http://dead/x", "cluster": "dead"},
    });
    Plugin::load(config.to_string().as_bytes(), |_| None).ok().map(Rc::new)
}

fuzz_target!(|data: &[u8]| {
    let Some(mut current) = plugin(0) else { return };
    let mut host = FakeHost { now_ms: 1_000_000, ..FakeHost::default() };
    let mut engine = Engine::new(1);
    engine.configure(&mut host, current.clone());
    let mut accepted = 0u64;
    for op in data.chunks(3) {
        let (kind, a, b) = match op {
            [k, a, b] => (*k, *a, *b),
            _ => break,
        };
        match kind % 6 {
            0 | 1 => {
                let targets: Vec<QueuedTarget> = (0..4u32)
                    .filter(|i| a & (1 << i) != 0)
                    .filter_map(|i| {
                        let index = usize::try_from(i).ok()?;
                        Some(QueuedTarget { webhook: i, fingerprint: current.definitions().get(index)?.fingerprint })
                    })
                    .collect();
                accepted += u64::try_from(targets.len()).unwrap_or(0);
                let body = vec![b'x'; usize::from(b) * 16];
                engine.accept(&mut host, QueuedEvent { targets, request_id: None, headers: Vec::new().into(), message_id: None, body: body.into() });
            }
            2 => {
                if let Some(token) = host.open.keys().nth(usize::from(a % 4)).copied() {
                    host.take(token);
                    let status = [200u16, 204, 410, 429, 500, 503][usize::from(b % 6)].to_string();
                    let answer = Answer { status: Some(status), retry_after: (b > 200).then(|| "1".to_string()), body_start: Vec::new() };
                    engine.call_finished(&mut host, token, Some(&answer));
                }
            }
            3 => {
                if let Some(token) = host.open.keys().nth(usize::from(a % 4)).copied() {
                    host.take(token);
                    engine.call_finished(&mut host, token, None);
                }
            }
            4 => {
                host.now_ms += u64::from(a) * 100;
                engine.tick(&mut host);
            }
            _ => {
                if let Some(next) = plugin(a % 3) {
                    current = next;
                    engine.configure(&mut host, current.clone());
                }
            }
        }
        assert!(engine.held_bytes() <= current.config.delivery.max_held_bytes);
    }
    for _ in 0..100 {
        while let Some(call) = host.oldest_open() {
            host.take(call.token);
            engine.call_finished(&mut host, call.token, Some(&Answer { status: Some("200".into()), ..Answer::default() }));
        }
        if engine.pending() == 0 && engine.in_flight() == 0 {
            break;
        }
        host.now_ms += 10_000;
        engine.tick(&mut host);
    }
    assert_eq!(engine.pending(), 0);
    assert_eq!(engine.in_flight(), 0);
    let mut settled = 0;
    for id in IDS {
        use WebhookCounter::*;
        let count = |c| host.count_of(id, c);
        settled += count(Delivered) + count(Failed) + count(Dropped);
        assert_eq!(count(Failed) + count(Dropped), count(DeadLettered) + count(Lost), "{id}");
    }
    assert_eq!(accepted, settled + host.discarded());
});
