//! Criterion benchmarks of a delivery's bookkeeping in the engine, natively
//! against the fake host: one whole delivery (accepted, called, answered 200;
//! a tick every 100 deliveries flushes counts and publishes the attempt log),
//! and the attempt log's share of it (recording one attempt, publishing every
//! 100th time, as the tick does at a high rate).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::as_conversions,
    clippy::cast_possible_truncation
)] // Benches may fail loudly.

use std::hint::black_box;
use std::rc::Rc;

use criterion::{criterion_group, criterion_main, Criterion};
use envoy_webhooks::testing::attempts::{Attempt, AttemptLog};
use envoy_webhooks::testing::call::Answer;
use envoy_webhooks::testing::engine::Engine;
use envoy_webhooks::testing::message::{QueuedEvent, QueuedTarget};
use envoy_webhooks::testing::plugin::Plugin;
use envoy_webhooks::testing::FakeHost;
use serde_json::json;

const EVENT: &[u8] = include_bytes!("../tests/fixtures/seed-formats-event.json");

fn bench_delivery(c: &mut Criterion) {
    let config = json!({"webhooks": [{"id": "a", "event_type": "assets", "url": "http://a:8080/hook", "cluster": "a"}]});
    let plugin = Rc::new(Plugin::load(config.to_string().as_bytes(), |_| None).unwrap());
    let mut host = FakeHost {
        now_ms: 1_700_000_000_000,
        ..FakeHost::default()
    };
    let mut engine = Engine::new(1);
    engine.configure(&mut host, plugin.clone());
    let event = QueuedEvent {
        targets: vec![QueuedTarget {
            webhook: 0,
            fingerprint: plugin.definitions()[0].fingerprint,
        }],
        request_id: Some("476117422b18ed2f915fe9887b77b702".to_string()),
        headers: Vec::new().into(),
        message_id: None,
        body: EVENT.to_vec().into(),
    };
    let ok = Answer {
        status: Some("200".to_string()),
        retry_after: None,
        body_start: Vec::new(),
    };
    let mut n = 0u64;
    c.bench_function(
        "one delivery: accept, call, 200 (attempt log included)",
        |b| {
            b.iter(|| {
                engine.accept(&mut host, black_box(event.clone()));
                let token = host.next_token;
                host.open.clear();
                host.calls.clear();
                host.now_ms += 1;
                engine.call_finished(&mut host, token, Some(&ok));
                n += 1;
                if n % 100 == 0 {
                    host.now_ms += 300;
                    engine.tick(&mut host);
                }
            })
        },
    );

    let id: Rc<str> = Rc::from("a");
    let mut log = AttemptLog::default();
    let mut at = 1_700_000_000_000u64;
    let mut k = 0u64;
    c.bench_function(
        "attempt log: record one attempt (publish every 100th)",
        |b| {
            b.iter(|| {
                at += 1;
                log.record(
                    &id,
                    &Attempt {
                        at_ms: at,
                        attempt: 1,
                        status: Some(200),
                        latency_ms: 3,
                        error: None,
                        message_id: None,
                        request_id: Some("476117422b18ed2f915fe9887b77b702"),
                    },
                );
                k += 1;
                if k % 100 == 0 {
                    at += 300;
                    black_box(log.take_changes(at, false));
                }
            })
        },
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(std::time::Duration::from_secs(3));
    targets = bench_delivery
}
criterion_main!(benches);
