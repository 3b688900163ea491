//! What a request's intake allocates (issue 16: no allocation per request
//! beyond the body copy). A worker's VM is single-threaded and its buffers are
//! reused, so once warm, an event request that matches nothing allocates
//! nothing in the core, and one that matches allocates only what it hands to
//! the delivery engine. Counted per thread by `allocation_counter`, the
//! global allocator of this test binary.

use envoy_webhooks::testing::intake::{Intake, IntakeCounter, IntakeHost, NotQueued};
use envoy_webhooks::testing::message::QueuedEvent;
use envoy_webhooks::testing::plugin::Plugin;
use serde_json::{json, Value};

#[path = "../../benches/support/workload.rs"]
mod workload;

const FORMATS_EVENT: &str = include_str!("../fixtures/seed-formats-event.json");

/// Counts in a fixed array and keeps what it is handed in a buffer made
/// beforehand: the host itself allocates nothing while measured.
struct Host {
    seen: u64,
    matched: u64,
    invalid: u64,
    queued: Vec<QueuedEvent>,
}

impl Host {
    fn new() -> Host {
        Host {
            seen: 0,
            matched: 0,
            invalid: 0,
            queued: Vec::with_capacity(64),
        }
    }
}

impl IntakeHost for Host {
    fn now_ms(&self) -> u64 {
        0
    }

    fn count(&mut self, counter: IntakeCounter, n: u64) {
        match counter {
            IntakeCounter::EventsSeen => self.seen += n,
            IntakeCounter::Matched(_) => self.matched += n,
            IntakeCounter::EventsInvalid => self.invalid += n,
            _ => {}
        }
    }

    fn enqueue(&mut self, event: QueuedEvent) -> Result<(), Box<NotQueued>> {
        self.queued.push(event);
        Ok(())
    }
}

/// The benchmark's 100 definitions but those without a query (which match
/// every event their route reaches); about one in ten routes the formats event.
fn plugin() -> Plugin {
    let mut definitions = workload::definitions(100);
    definitions.retain(|d| d["query"] != "");
    let config = json!({ "webhooks": definitions });
    Plugin::load(config.to_string().as_bytes(), |_| None).expect("valid configuration")
}

/// The formats event with `data` changed so that every query its route
/// reaches is evaluated and none matches.
fn event_matching_nothing() -> String {
    let mut event: Value = serde_json::from_str(FORMATS_EVENT).expect("fixture is JSON");
    event["data"]["status"] = json!("DELETED");
    event["data"]["storage_methods"] = json!(["S3"]);
    event["data"]["deleted_by_user"] = json!("someone");
    event["data"]["archive_status"] = json!("ARCHIVED");
    event["data"]["components"] = json!([{"metadata": {"format": "ProRes", "width": "640", "height": "480", "duration": "10"}}]);
    event["data"]["metadata_values"] = json!({"share": {"field_values": [{"value": "false"}]}});
    event["user_id"] = json!("someone-else");
    event.to_string()
}

/// One event request: its body in `chunks` (the last ends the stream).
fn request(plugin: &Plugin, host: &mut Host, chunks: &[&[u8]]) {
    let mut intake = Intake::start(plugin, Some("application/json"));
    for (i, chunk) in chunks.iter().enumerate() {
        intake.body(plugin, host, chunk, i + 1 == chunks.len());
    }
    intake.done(plugin, host);
}

#[test]
fn a_warm_request_that_matches_nothing_allocates_nothing() {
    let plugin = plugin();
    let event = event_matching_nothing();
    let mut host = Host::new();
    // The first requests grow the worker's reused buffers.
    for _ in 0..3 {
        request(&plugin, &mut host, &[event.as_bytes()]);
    }
    assert_eq!((host.seen, host.matched, host.invalid), (3, 0, 0));

    let info = allocation_counter::measure(|| {
        for _ in 0..100 {
            request(&plugin, &mut host, &[event.as_bytes()]);
        }
    });
    assert_eq!((host.seen, host.matched), (103, 0), "read, matched nothing");
    assert_eq!(info.count_total, 0, "allocated: {info:?}");
}

#[test]
fn a_body_in_pieces_allocates_only_its_copy() {
    let plugin = plugin();
    let event = event_matching_nothing();
    let (first, second) = event.as_bytes().split_at(event.len() / 2);
    let mut host = Host::new();
    request(&plugin, &mut host, &[first, second]);

    let info = allocation_counter::measure(|| {
        for _ in 0..100 {
            request(&plugin, &mut host, &[first, second]);
        }
    });
    assert_eq!((host.seen, host.matched, host.invalid), (101, 0, 0));
    // Each request copies its body (the first piece, then grown once for the second).
    assert!(info.count_total <= 200, "allocated: {info:?}");
    assert_eq!(info.count_current, 0, "nothing kept: {info:?}");
}

#[test]
fn a_matching_request_allocates_only_what_it_hands_over() {
    let plugin = plugin();
    let mut host = Host::new();
    request(&plugin, &mut host, &[FORMATS_EVENT.as_bytes()]);
    let per_event = host.matched;
    assert!(per_event > 0, "the formats event matches some definitions");
    host.queued.clear();

    let info = allocation_counter::measure(|| {
        for _ in 0..10 {
            request(&plugin, &mut host, &[FORMATS_EVENT.as_bytes()]);
        }
    });
    assert_eq!(host.matched, 11 * per_event);
    assert_eq!(host.queued.len(), 10, "one handed-over event a request");
    // Per request, kept: the event's text, its list of targets, its
    // request_id and the request's propagated headers, all handed to the
    // engine (and still held here by the host); freed at the request's end:
    // the list of its matches (grown as they come: this event matches several
    // definitions) and the list of its held events.
    assert_eq!(
        info.count_current, 40,
        "what is kept is what was handed over: {info:?}"
    );
    assert!(info.count_total <= 80, "allocated: {info:?}");
}

mod delivery {
    use std::cell::Cell;
    use std::collections::HashMap;
    use std::rc::Rc;

    use envoy_webhooks::status::Status;
    use envoy_webhooks::testing::call::Answer;
    use envoy_webhooks::testing::engine::Engine;
    use envoy_webhooks::testing::host::{
        Call, Counter, DispatchError, Host, SharedData, StoreError,
    };
    use envoy_webhooks::testing::message::{QueuedEvent, QueuedTarget};
    use envoy_webhooks::testing::plugin::Plugin;
    use serde_json::json;

    /// Shared data in a map; calls only numbered: allocates nothing on the
    /// happy path but what a read of shared data returns.
    #[derive(Default)]
    struct QuietHost {
        now_ms: u64,
        store: HashMap<String, (Vec<u8>, u32)>,
        reads: Cell<u32>,
        calls: u32,
    }

    impl SharedData for QuietHost {
        fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
            self.reads.set(self.reads.get() + 1);
            match self.store.get(key) {
                Some((value, cas)) => (Some(value.clone()), Some(*cas)),
                None => (None, None),
            }
        }

        fn set(&mut self, key: &str, value: &[u8], _cas: Option<u32>) -> Result<(), StoreError> {
            let cas = self.store.get(key).map_or(1, |(_, cas)| cas + 1);
            self.store.insert(key.to_string(), (value.to_vec(), cas));
            Ok(())
        }
    }

    impl Host for QuietHost {
        fn now_ms(&self) -> u64 {
            self.now_ms
        }
        fn random_unit(&mut self) -> f64 {
            0.5
        }
        fn random_id(&mut self) -> u128 {
            u128::from(self.calls)
        }
        fn dispatch(&mut self, _call: Call<'_>) -> Result<u32, DispatchError> {
            self.calls += 1;
            Ok(self.calls)
        }
        fn set_tick_period_ms(&mut self, _period_ms: u64) -> bool {
            true
        }
        fn count(&mut self, _counter: Counter, _n: u64) {}
        fn set_status(&mut self, _id: &str, _status: Status) {}
        fn add_held_bytes(&mut self, _delta: i64) {}
    }

    /// A healthy webhook's deliveries, once the worker is warm (its attempt
    /// log full, its health read): the engine shares the handed-over event's
    /// text and headers with the delivery instead of copying them.
    #[test]
    fn a_healthy_delivery_allocates_its_call_and_its_log_entry_only() {
        let config = json!({"webhooks": [{"id": "a", "event_type": "assets", "url": "http://a:8080/hook", "cluster": "a"}]});
        let plugin = Rc::new(Plugin::load(config.to_string().as_bytes(), |_| None).unwrap());
        let mut host = QuietHost {
            now_ms: 1_700_000_000_000,
            ..QuietHost::default()
        };
        let mut engine = Engine::new(1);
        engine.configure(&mut host, plugin.clone());
        let event = |n: u32| QueuedEvent {
            targets: vec![QueuedTarget {
                webhook: 0,
                fingerprint: plugin.definitions()[0].fingerprint,
            }],
            request_id: Some(format!("req-{n}")),
            headers: Vec::new().into(),
            message_id: None,
            body: br#"{"event_type":"assets"}"#.to_vec().into(),
        };
        let answer = Answer {
            status: Some("204".to_string()),
            retry_after: None,
            body_start: Vec::new(),
        };
        let deliver = |engine: &mut Engine, host: &mut QuietHost, event: QueuedEvent| {
            let accepted = allocation_counter::measure(|| engine.accept(host, event));
            let token = host.calls;
            let finished =
                allocation_counter::measure(|| engine.call_finished(host, token, Some(&answer)));
            host.now_ms += 1;
            (accepted, finished)
        };
        // The attempt log fills (100 entries), the health is read and cached.
        for n in 0..300 {
            deliver(&mut engine, &mut host, event(n));
        }
        let (calls, reads) = (host.calls, host.reads.get());
        for n in 0..100 {
            let read_before = host.reads.get();
            let (accepted, finished) = deliver(&mut engine, &mut host, event(n));
            if host.reads.get() == read_before {
                // The delivery's request_id (the event's may go to several
                // webhooks), its webhook-id and the call's header list.
                assert!(accepted.count_total <= 3, "accept {n}: {accepted:?}");
            }
            // The attempt's log entry (its request_id and webhook-id), which
            // takes the place of the oldest.
            assert!(finished.count_total <= 2, "call finished: {finished:?}");
            assert!(finished.count_current <= 0, "call finished: {finished:?}");
        }
        assert_eq!(host.calls, calls + 100, "one call a delivery");
        // The webhook's health is read again every 100 ms (100 deliveries, 1 ms apart).
        assert!(
            host.reads.get() - reads <= 2,
            "reads: {}",
            host.reads.get() - reads
        );
        assert!(host.store.len() < 10, "the happy path writes no new record");
    }
}

/// What a tenant's webhook costs a worker at rest: its definition, index
/// entries, matcher and scanner paths, its reference and secret. Printed
/// (docs/api.md quotes it); bounded here so that a change that makes it
/// grow is seen.
#[test]
fn a_tenant_webhook_costs_a_worker_a_few_kilobytes() {
    use envoy_webhooks::testing::resource::{apply, Fresh, Target};
    let plugin = Plugin::load(
        json!({
            "api": {"tokens": {}},
            "cluster_state": {"etcd": {"cluster": "etcd", "authority": "etcd:2379"}},
            "delivery": {"clusters": {"https": "egress"}}
        })
        .to_string()
        .as_bytes(),
        |_| None,
    )
    .unwrap();
    let fields = [
        "status", "format", "size", "title", "archived", "owner", "count", "state",
    ];
    let tenants: Vec<_> = (0..10_000)
        .map(|n: usize| {
            let fresh = Fresh {
                id: format!("{:08x}-0000-4000-8000-{:012x}", n, n),
                secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_string(),
                now_ms: 1_765_000_000_000,
            };
            let body = json!({
                "name": format!("webhook {n}"), "event_type": "assets", "status": "ENABLED",
                "realm": "entity", "operation": "update",
                "url": format!("https://hooks-{n}.example.com/webhooks/assets"),
                "query": format!("data.{}=\"x{n}\" AND data.size>100", fields[n % fields.len()]),
                "headers": {"Auth-Token": "abcdefghijklmnopqrstuvwxyz"}
            });
            let domain = format!("{:08x}-0000-4000-8000-000000000000", n / 10);
            let (_, definition) = apply(
                body.to_string().as_bytes(),
                Target::Create {
                    system_domain_id: &domain,
                    fresh: &fresh,
                },
                &|_| Ok(()),
            )
            .unwrap();
            definition
        })
        .collect();
    let (with_tenants, info) = {
        let mut made = None;
        let info =
            allocation_counter::measure(|| made = Some(plugin.with_tenants(tenants.clone())));
        (made.unwrap(), info)
    };
    assert_eq!(with_tenants.definitions().len(), 10_000);
    let per_webhook = info.bytes_current / 10_000;
    println!(
        "a tenant webhook costs a worker {per_webhook} bytes at rest ({} MB for 10,000)",
        info.bytes_current / 1_000_000
    );
    assert!(per_webhook < 8 * 1024, "{per_webhook} bytes a webhook");
}
