//! Whatever etcd (or anything pretending to be it) answers, in whatever
//! order, the cluster sync never panics, and the webhook's local record
//! stays a record.
#![no_main]

use std::rc::Rc;

use envoy_webhooks::testing::cluster::{ClusterSync, EtcdAnswer};
use envoy_webhooks::testing::call::Answer;
use envoy_webhooks::testing::engine::Engine;
use envoy_webhooks::testing::message::{QueuedEvent, QueuedTarget};
use envoy_webhooks::testing::plugin::Plugin;
use envoy_webhooks::testing::FakeHost;
use envoy_webhooks::testing::store;
use libfuzzer_sys::fuzz_target;

const CONFIG: &str = r#"{
  "webhooks": [{"id": "hook", "event_type": "assets", "url": "http://hook:8080/in", "cluster": "hook"}],
  "delivery": {"failure_threshold": 3, "retry_schedule_s": [1, 2]},
  "cluster_state": {"etcd": {"cluster": "etcd", "authority": "etcd:2379", "sync_interval_ms": 100}}
}"#;

/// Answers etcd would give, as seeds for the mutations.
const SAMPLES: [&[u8]; 6] = [
    br#"{"header":{"revision":"9"},"kvs":[{"key":"L2Vudm95LXdlYmhvb2tzL3dlYmhvb2tzL2hvb2s=","mod_revision":"7","value":"e30="}]}"#,
    br#"{"header":{"revision":"12"},"succeeded":true,"responses":[{"response_put":{}}]}"#,
    br#"{"header":{"revision":"12"},"responses":[{"response_range":{"kvs":[{"key":"YQ==","value":"Yg==","mod_revision":"11"}]}}]}"#,
    br#"{"header":{"revision":"1"},"ID":"7587","TTL":"5"}"#,
    br#"{"result":{"header":{"revision":"1"},"ID":"7587","TTL":"5"}}"#,
    br#"{"error":"etcdserver: invalid auth token","code":16}"#,
];

fuzz_target!(|data: &[u8]| {
    let Ok(plugin) = Plugin::load(CONFIG.as_bytes(), |_| None) else {
        return;
    };
    let plugin = Rc::new(plugin);
    let mut host = FakeHost {
        now_ms: 1_700_000_000_000,
        ..FakeHost::default()
    };
    let mut engine = Engine::new(1);
    engine.configure(&mut host, plugin.clone());
    engine.set_journaling(true);
    let Some(mut sync) = ClusterSync::new(plugin.clone(), 1, "fuzz".to_string()) else {
        return;
    };
    let fingerprint = plugin.definitions()[0].fingerprint;
    let mut rest = data;
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        match op % 6 {
            0 => {
                host.now_ms += u64::from(op) * 10;
                engine.tick(&mut host);
                sync.tick(&mut host, &mut engine);
            }
            1 | 2 => {
                // Answer the oldest etcd call: a mutated sample, or the next bytes.
                let Some(call) = host.open.values().find(|c| c.cluster == "etcd").cloned() else {
                    continue;
                };
                host.take(call.token);
                let len = usize::from(rest.first().copied().unwrap_or(0));
                let (chunk, after) = rest.split_at(len.min(rest.len()));
                rest = after;
                let body = if op % 6 == 1 {
                    SAMPLES[usize::from(op) % SAMPLES.len()].to_vec()
                } else {
                    chunk.to_vec()
                };
                let status = match op / 6 % 4 {
                    0 => None,
                    1 => Some(401),
                    _ => Some(200),
                };
                let answer = EtcdAnswer { status, body };
                sync.call_finished(&mut host, call.token, &answer, &mut engine);
            }
            3 => engine.accept(
                &mut host,
                QueuedEvent {
                    targets: vec![QueuedTarget { webhook: 0, fingerprint }],
                    request_id: None, headers: Vec::new().into(), message_id: None,
                    body: br#"{"event_type":"assets"}"#.to_vec().into(),
                },
            ),
            4 => {
                let Some(call) = host.open.values().find(|c| c.cluster == "hook").cloned() else {
                    continue;
                };
                host.take(call.token);
                let status = if op / 6 % 2 == 0 { "204" } else { "503" };
                let answer = Answer { status: Some(status.to_string()), retry_after: None, body_start: Vec::new() };
                engine.call_finished(&mut host, call.token, Some(&answer));
            }
            _ => {
                sync.stop(&mut host);
                engine.stop(&mut host);
            }
        }
    }
    let definition = &plugin.definitions()[0];
    let health = store::load(&host, definition, host.now_ms / 1000);
    assert_eq!(health.fingerprint, fingerprint);
});
