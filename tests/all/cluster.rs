//! The cluster state, natively: three replicas (each an engine, a sync and
//! its own shared data on a fake host) and one in-memory etcd that
//! interprets the JSON gateway's range and txn requests as etcd does
//! (compare on mod_revision). What docs/cluster-state.md promises: failures add up
//! across replicas, FAILED is written once, an enable anywhere enables
//! everywhere, and etcd failing costs nothing but staleness.

use std::rc::Rc;

use envoy_webhooks::status::Status;
use envoy_webhooks::testing::admin::{self, AdminRequest, AdminRoute};
use envoy_webhooks::testing::call::Answer;
use envoy_webhooks::testing::cluster::{ClusterSync, EtcdAnswer};
use envoy_webhooks::testing::engine::Engine;
use envoy_webhooks::testing::health::WebhookHealth;
use envoy_webhooks::testing::host::Counter;
use envoy_webhooks::testing::message::{QueuedEvent, QueuedTarget};
use envoy_webhooks::testing::plugin::Plugin;
use envoy_webhooks::testing::store;
use envoy_webhooks::testing::FakeHost;
use serde_json::{json, Value};

use crate::fake_etcd::{unb64, FakeEtcd};

const START_MS: u64 = 1_700_000_000_000;

static NEXT_OWNER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

struct Replica {
    host: FakeHost,
    engine: Engine,
    sync: ClusterSync,
    plugin: Rc<Plugin>,
}

fn config(threshold: u64) -> Value {
    json!({
        "webhooks": [{"id": "hook", "event_type": "assets", "url": "http://hook:8080/in", "cluster": "hook"}],
        "delivery": {"failure_threshold": threshold, "retry_schedule_s": []},
        "admin": {"path_prefix": "/admin", "token": "secret-token-1234"},
        "cluster_state": {"etcd": {"cluster": "etcd", "authority": "etcd:2379", "prefix": "/test/",
                                   "sync_interval_ms": 1000}}
    })
}

fn replica(config: &Value) -> Replica {
    let plugin = Rc::new(
        Plugin::load(config.to_string().as_bytes(), |name| {
            (name == "ETCD_USER" || name == "ETCD_PASSWORD").then(|| "x".to_string())
        })
        .expect("valid"),
    );
    let mut host = FakeHost {
        now_ms: START_MS,
        ..FakeHost::default()
    };
    let mut engine = Engine::new(1);
    engine.configure(&mut host, plugin.clone());
    engine.set_journaling(true);
    let owner = format!(
        "owner-{}",
        NEXT_OWNER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let sync = ClusterSync::new(plugin.clone(), 1, owner).expect("cluster_state is configured");
    Replica {
        host,
        engine,
        sync,
        plugin,
    }
}

impl Replica {
    fn local(&self) -> WebhookHealth {
        let definition = &self.plugin.definitions()[0];
        store::load(&self.host, definition, self.host.now_ms / 1000)
    }

    /// Time passes: ticks, and etcd answers every call to it.
    fn run(&mut self, etcd: &mut FakeEtcd, ms: u64) {
        let end = self.host.now_ms + ms;
        while self.host.now_ms < end {
            self.host.now_ms += 100;
            self.engine.tick(&mut self.host);
            self.sync.tick(&mut self.host, &mut self.engine);
            self.answer_etcd(etcd);
        }
    }

    fn answer_etcd(&mut self, etcd: &mut FakeEtcd) {
        loop {
            let Some(call) = self
                .host
                .open
                .values()
                .find(|c| c.cluster == "etcd")
                .cloned()
            else {
                return;
            };
            self.host.take(call.token);
            assert!(self.sync.owns(call.token));
            let answer = etcd.answer_call(&call);
            self.sync
                .call_finished(&mut self.host, call.token, &answer, &mut self.engine);
        }
    }

    /// The calls to etcd in flight.
    fn open_etcd_calls(&self) -> Vec<envoy_webhooks::testing::MadeCall> {
        self.host
            .open
            .values()
            .filter(|c| c.cluster == "etcd")
            .cloned()
            .collect()
    }

    /// etcd answers every call in flight now; the answers reach the filter
    /// later (`receive`), as over a slow link.
    fn answers_now(&mut self, etcd: &mut FakeEtcd) -> Vec<(u32, EtcdAnswer)> {
        let calls = self.open_etcd_calls();
        calls
            .into_iter()
            .map(|call| {
                self.host.take(call.token);
                (call.token, etcd.answer_call(&call))
            })
            .collect()
    }

    fn receive(&mut self, answers: Vec<(u32, EtcdAnswer)>) {
        for (token, answer) in answers {
            self.sync
                .call_finished(&mut self.host, token, &answer, &mut self.engine);
        }
    }

    /// One event for the webhook, whose call gets `status`.
    fn deliver(&mut self, status: &str) {
        self.engine.accept(
            &mut self.host,
            QueuedEvent {
                targets: vec![QueuedTarget {
                    webhook: 0,
                    fingerprint: self.plugin.definitions()[0].fingerprint,
                }],
                request_id: Some("r".to_string()),
                headers: Vec::new().into(),
                message_id: None,
                body: br#"{"event_type":"assets"}"#.to_vec().into(),
            },
        );
        let call = self
            .host
            .open
            .values()
            .find(|c| c.cluster == "hook")
            .cloned()
            .expect("a delivery call");
        self.answer_hook(call.token, status);
    }

    /// The receiver answers the delivery call `token` with `status`.
    fn answer_hook(&mut self, token: u32, status: &str) {
        self.host.take(token);
        let answer = Answer {
            status: Some(status.to_string()),
            retry_after: None,
            body_start: Vec::new(),
        };
        self.engine
            .call_finished(&mut self.host, token, Some(&answer));
    }

    fn delivery_calls(&self) -> usize {
        self.host
            .calls
            .iter()
            .filter(|c| c.cluster == "hook")
            .count()
    }

    fn status_body(&mut self) -> Value {
        let now = self.host.now_ms;
        let answer = admin::answer(
            &self.plugin,
            &mut self.host,
            &AdminRoute::Status,
            AdminRequest::default(),
            now,
        );
        serde_json::from_str(&answer.body).expect("JSON")
    }

    fn errors(&self) -> u64 {
        self.host
            .counts
            .get(&Counter::ClusterStateErrors)
            .copied()
            .unwrap_or(0)
    }
}

fn replicas(n: usize, config: &Value) -> Vec<Replica> {
    (0..n).map(|_| replica(config)).collect()
}

fn run_all(replicas: &mut [Replica], etcd: &mut FakeEtcd, ms: u64) {
    for _ in 0..ms / 100 {
        for replica in replicas.iter_mut() {
            replica.run(etcd, 100);
        }
    }
}

#[test]
fn failures_through_different_envoys_add_up_and_fail_the_webhook_once() {
    let config = config(3);
    let mut etcd = FakeEtcd::default();
    let mut envoys = replicas(3, &config);
    run_all(&mut envoys, &mut etcd, 1_000);
    // One failure through each Envoy: none reaches the threshold of 3 alone.
    for envoy in envoys.iter_mut() {
        envoy.deliver("500");
        assert_eq!(envoy.local().status, Status::Failing);
    }
    run_all(&mut envoys, &mut etcd, 2_000);
    assert_eq!(etcd.record().map(|r| r.status), Some(Status::Failed));
    let failed_writes = etcd
        .statuses()
        .iter()
        .filter(|s| **s == Status::Failed)
        .count();
    assert_eq!(
        failed_writes,
        1,
        "FAILED is written once: {:?}",
        etcd.statuses()
    );
    for envoy in envoys.iter_mut() {
        assert_eq!(envoy.local().status, Status::Failed);
        assert_eq!(envoy.status_body()["webhooks"][0]["status"], "FAILED");
        // And it is no longer called.
        let before = envoy.delivery_calls();
        envoy.engine.accept(
            &mut envoy.host,
            QueuedEvent {
                targets: vec![QueuedTarget {
                    webhook: 0,
                    fingerprint: envoy.plugin.definitions()[0].fingerprint,
                }],
                request_id: None,
                headers: Vec::new().into(),
                message_id: None,
                body: b"{}".to_vec().into(),
            },
        );
        assert_eq!(envoy.delivery_calls(), before);
    }
}

#[test]
fn an_enable_through_one_envoy_enables_every_envoy() {
    let config = config(1);
    let mut etcd = FakeEtcd::default();
    let mut envoys = replicas(3, &config);
    envoys[0].deliver("500");
    run_all(&mut envoys, &mut etcd, 3_000);
    assert!(envoys.iter().all(|e| e.local().status == Status::Failed));
    let route = AdminRoute::Enable("hook".to_string());
    let now = envoys[2].host.now_ms;
    let plugin = envoys[2].plugin.clone();
    let answer = admin::answer(
        &plugin,
        &mut envoys[2].host,
        &route,
        AdminRequest::default(),
        now,
    );
    assert_eq!(answer.status, 200);
    run_all(&mut envoys, &mut etcd, 2_000);
    for envoy in envoys.iter_mut() {
        assert_eq!(envoy.local().status, Status::Enabled);
        envoy.deliver("204");
    }
    assert_eq!(etcd.record().map(|r| r.status), Some(Status::Enabled));
}

#[test]
fn concurrent_failures_from_every_envoy_never_lose_a_count() {
    // All three write against the same revision: two conflict and retry.
    let config = config(100);
    let mut etcd = FakeEtcd::default();
    let mut envoys = replicas(3, &config);
    run_all(&mut envoys, &mut etcd, 1_000);
    for round in 0..5 {
        for envoy in envoys.iter_mut() {
            envoy.deliver("503");
            envoy.deliver("503");
        }
        // Every Envoy starts its write before any answer arrives.
        for envoy in envoys.iter_mut() {
            envoy.host.now_ms += 100;
            envoy.sync.tick(&mut envoy.host, &mut envoy.engine);
        }
        for envoy in envoys.iter_mut() {
            envoy.answer_etcd(&mut etcd);
        }
        run_all(&mut envoys, &mut etcd, 300);
        let record = etcd.record().expect("a record");
        assert_eq!(record.consecutive_failures, 6 * (round + 1));
        assert_eq!(record.status, Status::Failing);
    }
}

#[test]
fn etcd_down_costs_only_staleness_and_no_failed_is_lost() {
    let config = config(2);
    let mut etcd = FakeEtcd::default();
    let mut envoys = replicas(2, &config);
    run_all(&mut envoys, &mut etcd, 1_000);
    etcd.down = true;
    // Deliveries go on; the webhook fails on this Envoy's own state.
    envoys[0].deliver("204");
    envoys[0].deliver("500");
    envoys[0].deliver("500");
    assert_eq!(envoys[0].local().status, Status::Failed);
    run_all(&mut envoys, &mut etcd, 5_000);
    assert!(envoys[0].errors() > 0);
    assert!(
        envoys[0].errors() <= 10,
        "one try per interval: {}",
        envoys[0].errors()
    );
    let body = envoys[0].status_body();
    assert_eq!(body["cluster_state"]["stale"], true, "{body}");
    assert!(body["cluster_state"]["stale_since_ms"].is_u64());
    assert_eq!(envoys[1].local().status, Status::Enabled);
    // etcd back: the FAILED is written and reaches the other Envoy.
    etcd.down = false;
    run_all(&mut envoys, &mut etcd, 3_000);
    assert_eq!(etcd.record().map(|r| r.status), Some(Status::Failed));
    assert_eq!(envoys[1].local().status, Status::Failed);
    let body = envoys[1].status_body();
    assert_eq!(body["cluster_state"]["stale"], false, "{body}");
}

#[test]
fn answers_that_are_not_etcd_are_counted_and_change_nothing() {
    let config = config(2);
    let mut etcd = FakeEtcd::default();
    let mut envoys = replicas(1, &config);
    envoys[0].deliver("500");
    for garbage in [
        (200, b"<html>not json</html>".to_vec()),
        (200, br#"{"kvs": [{"key": "%%%", "value": 7}]}"#.to_vec()),
        (503, b"upstream connect error".to_vec()),
    ] {
        etcd.garbage = Some(garbage);
        let errors = envoys[0].errors();
        run_all(&mut envoys, &mut etcd, 1_000);
        assert!(envoys[0].errors() > errors);
        assert_eq!(envoys[0].local().status, Status::Failing);
    }
    etcd.garbage = None;
    run_all(&mut envoys, &mut etcd, 2_000);
    assert_eq!(etcd.record().map(|r| r.status), Some(Status::Failing));
}

#[test]
fn a_record_that_does_not_decode_is_counted_and_written_over() {
    let config = config(2);
    let mut etcd = FakeEtcd::default();
    let mut envoys = replicas(1, &config);
    run_all(&mut envoys, &mut etcd, 1_000);
    envoys[0].deliver("500");
    run_all(&mut envoys, &mut etcd, 1_500);
    let key = etcd.keys_under("/test/webhooks/hook/")[0]
        .clone()
        .into_bytes();
    etcd.revision += 1;
    etcd.kv
        .insert(key, (b"{not a record".to_vec(), etcd.revision));
    let errors = envoys[0].errors();
    run_all(&mut envoys, &mut etcd, 1_500);
    assert!(envoys[0].errors() > errors);
    assert_eq!(envoys[0].local().status, Status::Failing);
    envoys[0].deliver("500");
    run_all(&mut envoys, &mut etcd, 1_500);
    assert_eq!(etcd.record().map(|r| r.status), Some(Status::Failed));
}

#[test]
fn with_credentials_it_authenticates_and_again_when_the_token_expires() {
    let mut config = config(2);
    config["cluster_state"]["etcd"]["username_env"] = json!("ETCD_USER");
    config["cluster_state"]["etcd"]["password_env"] = json!("ETCD_PASSWORD");
    let mut etcd = FakeEtcd {
        token: Some("not yet".to_string()),
        ..FakeEtcd::default()
    };
    let mut envoys = replicas(1, &config);
    run_all(&mut envoys, &mut etcd, 1_000);
    envoys[0].deliver("500");
    run_all(&mut envoys, &mut etcd, 1_000);
    assert_eq!(etcd.record().map(|r| r.status), Some(Status::Failing));
    // The token expires (etcd restarted): one error, then a new token.
    etcd.token = Some("rotated".to_string());
    envoys[0].deliver("500");
    run_all(&mut envoys, &mut etcd, 2_000);
    assert_eq!(etcd.record().map(|r| r.status), Some(Status::Failed));
    assert!(envoys[0].errors() >= 1);
}

#[test]
fn only_one_root_context_per_envoy_polls() {
    let config = config(2);
    let plugin = Rc::new(Plugin::load(config.to_string().as_bytes(), |_| None).expect("valid"));
    let mut host = FakeHost {
        now_ms: START_MS,
        ..FakeHost::default()
    };
    let mut syncs: Vec<ClusterSync> = (1..=3)
        .map(|vm| ClusterSync::new(plugin.clone(), vm, format!("o{vm}")).expect("configured"))
        .collect();
    let mut engine = Engine::new(9);
    for _ in 0..30 {
        host.now_ms += 100;
        for sync in syncs.iter_mut() {
            sync.tick(&mut host, &mut engine);
        }
    }
    let pollers: Vec<bool> = syncs.iter().map(ClusterSync::is_poller).collect();
    assert_eq!(pollers, vec![false, false, true], "the newest VM polls");
    // The poller goes away (its configuration was replaced): another takes over.
    syncs.pop();
    for _ in 0..40 {
        host.now_ms += 100;
        for sync in syncs.iter_mut() {
            sync.tick(&mut host, &mut engine);
        }
    }
    assert_eq!(syncs.iter().filter(|s| s.is_poller()).count(), 1);
}

fn waiting_config() -> Value {
    let mut config = config(100);
    config["delivery"]["retry_schedule_s"] = json!([60, 60]);
    config
}

impl Replica {
    /// One event whose first attempt fails: it waits for its retry.
    fn leave_waiting(&mut self, n: usize) {
        for _ in 0..n {
            self.deliver("503");
        }
        assert_eq!(self.engine.pending(), n);
    }

    /// Answers every webhook call in flight with `status`; how many there were.
    fn answer_hooks(&mut self, status: &str) -> usize {
        let calls: Vec<_> = self
            .host
            .open
            .values()
            .filter(|c| c.cluster == "hook")
            .cloned()
            .collect();
        for call in &calls {
            self.answer_hook(call.token, status);
        }
        calls.len()
    }

    fn count(&self, counter: envoy_webhooks::testing::host::WebhookCounter) -> u64 {
        self.host.count_of("hook", counter)
    }
}

/// `n` Envoys, and `waiting` deliveries of Envoy 0 that wait for a retry,
/// journaled in etcd.
fn journaled(n: usize, waiting: usize) -> (FakeEtcd, Vec<Replica>) {
    let mut etcd = FakeEtcd::default();
    let mut envoys = replicas(n, &waiting_config());
    run_all(&mut envoys, &mut etcd, 1_000);
    envoys[0].leave_waiting(waiting);
    run_all(&mut envoys, &mut etcd, 2_000);
    assert_eq!(
        etcd.keys_under("/test/handoff/").len(),
        waiting,
        "journaled"
    );
    (etcd, envoys)
}

#[test]
fn deliveries_waiting_in_an_envoy_that_dies_are_made_by_another() {
    use envoy_webhooks::testing::host::WebhookCounter;
    let config = waiting_config();
    let mut etcd = FakeEtcd::default();
    let mut envoys = replicas(2, &config);
    run_all(&mut envoys, &mut etcd, 1_000);
    envoys[0].leave_waiting(3);
    run_all(&mut envoys, &mut etcd, 2_000);
    assert_eq!(etcd.keys_under("/test/handoff/").len(), 3, "journaled");
    assert_eq!(etcd.keys_under("/test/owners/").len(), 1);
    // The other Envoy leaves a live owner's deliveries alone.
    assert_eq!(envoys[1].count(WebhookCounter::Adopted), 0);

    // Envoy 0 is killed: its lease lapses.
    drop(envoys.remove(0));
    kill_owner_leases(&mut etcd);
    run_all(&mut envoys, &mut etcd, 2_000);
    assert_eq!(envoys[0].count(WebhookCounter::Adopted), 3);
    assert_eq!(envoys[0].answer_hooks("204"), 3);
    assert_eq!(envoys[0].count(WebhookCounter::Delivered), 3);
    assert!(etcd.keys_under("/test/handoff/").is_empty());
}

#[test]
fn a_delivery_made_leaves_the_journal_and_a_stopped_filter_hands_off_the_rest() {
    use envoy_webhooks::testing::host::WebhookCounter;
    let config = waiting_config();
    let mut etcd = FakeEtcd::default();
    let mut envoys = replicas(2, &config);
    envoys[0].leave_waiting(3);
    run_all(&mut envoys, &mut etcd, 2_000);
    assert_eq!(etcd.keys_under("/test/handoff/").len(), 3);
    // Retried a minute later: one succeeds, two fail again and wait.
    envoys[0].host.now_ms += 60_000;
    let now_envoy = &mut envoys[0];
    now_envoy.engine.tick(&mut now_envoy.host);
    let retries: Vec<_> = now_envoy
        .host
        .open
        .values()
        .filter(|c| c.cluster == "hook")
        .cloned()
        .collect();
    assert_eq!(retries.len(), 3);
    for (i, call) in retries.iter().enumerate() {
        now_envoy.answer_hook(call.token, if i == 0 { "204" } else { "503" });
    }
    run_all(&mut envoys, &mut etcd, 2_000);
    assert_eq!(
        etcd.keys_under("/test/handoff/").len(),
        2,
        "the delivered one is deleted"
    );

    // Envoy 0's filter stops (a configuration change): it hands off and revokes its lease.
    let stopping = &mut envoys[0];
    stopping.sync.stop(&mut stopping.host);
    stopping.engine.stop(&mut stopping.host);
    stopping.run(&mut etcd, 500);
    assert!(stopping.sync.is_finished());
    assert!(stopping.engine.is_idle());
    assert_eq!(stopping.count(WebhookCounter::HandedOff), 2);
    assert!(etcd.keys_under("/test/owners/").is_empty(), "lease revoked");
    assert_eq!(
        etcd.keys_under("/test/handoff/").len(),
        2,
        "records stay for another Envoy"
    );
    run_all(&mut envoys[1..], &mut etcd, 2_000);
    assert_eq!(envoys[1].count(WebhookCounter::Adopted), 2);
    assert_eq!(envoys[1].answer_hooks("204"), 2);
    assert!(etcd.keys_under("/test/handoff/").is_empty());
    // Every event delivered once: 1 by Envoy 0, 2 by Envoy 1.
    assert_eq!(
        envoys[0].count(WebhookCounter::Delivered) + envoys[1].count(WebhookCounter::Delivered),
        3
    );
}

/// Envoy 1 starts an adoption round whose answers arrive late; Envoy 0
/// journals its waiting deliveries while answer number `cut` of that round
/// is on its way (or a lease lapses and is renewed there, with `lapse`).
/// Returns how many deliveries Envoy 1 adopted and how many records etcd
/// still holds.
fn adoption_round_cut_at(cut: usize, lapse: bool) -> (u64, usize) {
    use envoy_webhooks::testing::host::WebhookCounter;
    let mut etcd = FakeEtcd::default();
    let mut envoys = replicas(2, &waiting_config());
    run_all(&mut envoys, &mut etcd, 1_000);
    if lapse {
        envoys[0].leave_waiting(3);
        run_all(&mut envoys, &mut etcd, 200);
        assert_eq!(etcd.keys_under("/test/handoff/").len(), 3);
        // etcd lost Envoy 0 for longer than its lease: the liveness key goes.
        let leases: Vec<i64> = etcd.leases.keys().copied().collect();
        for lease in leases {
            etcd.expire(lease);
        }
    }
    // Envoy 1's next round starts.
    let adopter = &mut envoys[1];
    adopter.host.now_ms += 1_000;
    adopter.engine.tick(&mut adopter.host);
    adopter.sync.tick(&mut adopter.host, &mut adopter.engine);
    let mut batch = 0;
    loop {
        let answers = envoys[1].answers_now(&mut etcd);
        if answers.is_empty() {
            break;
        }
        if batch == cut {
            let owner = &mut envoys[0];
            if lapse {
                // Envoy 0 is back: its keepalive finds the lease gone and it
                // takes a new one, with its liveness key.
                owner.run(&mut etcd, 1_000);
            } else {
                owner.leave_waiting(3);
                owner.run(&mut etcd, 100);
            }
            assert_eq!(etcd.keys_under("/test/owners/").len(), 1, "Envoy 0 is live");
        }
        envoys[1].receive(answers);
        batch += 1;
    }
    assert!(
        batch > cut,
        "the round had {batch} answers, fewer than {cut}"
    );
    run_all(&mut envoys, &mut etcd, 3_000);
    (
        envoys[1].count(WebhookCounter::Adopted),
        etcd.keys_under("/test/handoff/").len(),
    )
}

#[test]
fn a_live_owners_deliveries_are_not_adopted_whenever_its_journal_lands_in_a_round() {
    // Every point of an adoption round (its range, its reads of owners and
    // journals, its takes) at which the owner's journal can land.
    for cut in 0..2 {
        assert_eq!(
            adoption_round_cut_at(cut, false),
            (0, 3),
            "cut at answer {cut}"
        );
    }
}

#[test]
fn a_lapsed_owner_that_renews_before_the_take_keeps_its_deliveries() {
    // The round read the records as orphaned (the liveness key was gone);
    // the owner renewed before the takes reached etcd.
    assert_eq!(adoption_round_cut_at(1, true), (0, 3));
}

#[test]
fn a_lagging_member_never_makes_a_live_owner_look_gone() {
    use envoy_webhooks::testing::host::WebhookCounter;
    for shift in 0..2 {
        let mut etcd = FakeEtcd::default();
        let mut envoys = replicas(2, &waiting_config());
        run_all(&mut envoys, &mut etcd, 1_000);
        // A member falls behind before Envoy 0 journals; the round-robin
        // sends every other read that any member may serve to it.
        etcd.lag();
        etcd.serializable_reads = shift;
        envoys[0].leave_waiting(3);
        envoys[0].run(&mut etcd, 100);
        assert_eq!(etcd.keys_under("/test/handoff/").len(), 3);
        for _ in 0..5 {
            run_all(&mut envoys[1..], &mut etcd, 1_000);
        }
        assert_eq!(envoys[1].count(WebhookCounter::Adopted), 0, "shift {shift}");
        assert_eq!(etcd.keys_under("/test/handoff/").len(), 3);
    }
}

#[test]
fn a_write_whose_answer_was_lost_is_sent_again_and_counted_once() {
    let config = config(100);
    let mut etcd = FakeEtcd::default();
    let mut envoys = replicas(1, &config);
    run_all(&mut envoys, &mut etcd, 1_000);
    envoys[0].deliver("503");
    etcd.lose_write_answers = 1;
    run_all(&mut envoys, &mut etcd, 2_000);
    let record = etcd.record().expect("a record");
    assert_eq!(record.consecutive_failures, 1, "applied once, not twice");
    assert_eq!(envoys[0].errors(), 0, "the retry found its own write");
}

#[test]
fn a_member_that_does_not_answer_once_costs_no_error() {
    let config = config(100);
    let mut etcd = FakeEtcd::default();
    let mut envoys = replicas(1, &config);
    run_all(&mut envoys, &mut etcd, 1_000);
    etcd.down = true;
    // One call fails (a dead member); its retry goes to a live one.
    let envoy = &mut envoys[0];
    envoy.host.now_ms += 1_000;
    envoy.sync.tick(&mut envoy.host, &mut envoy.engine);
    let call = envoy
        .host
        .open
        .values()
        .find(|c| c.cluster == "etcd")
        .cloned()
        .expect("a read");
    envoy.host.take(call.token);
    envoy.sync.call_finished(
        &mut envoy.host,
        call.token,
        &EtcdAnswer::default(),
        &mut envoy.engine,
    );
    etcd.down = false;
    envoy.answer_etcd(&mut etcd);
    assert_eq!(envoy.errors(), 0);
}

#[test]
fn etcd_down_with_deliveries_waiting_costs_a_few_calls_an_interval() {
    let mut etcd = FakeEtcd::default();
    let mut envoys = replicas(1, &waiting_config());
    run_all(&mut envoys, &mut etcd, 1_000);
    etcd.down = true;
    envoys[0].leave_waiting(3);
    let before = etcd.requests;
    // Answered by hand, a bounded number of times: a journal that sent its
    // next call at once after each failure would never stop.
    for _ in 0..50 {
        let replica = &mut envoys[0];
        replica.host.now_ms += 100;
        replica.engine.tick(&mut replica.host);
        replica.sync.tick(&mut replica.host, &mut replica.engine);
        for _ in 0..10 {
            let answers = replica.answers_now(&mut etcd);
            if answers.is_empty() {
                break;
            }
            replica.receive(answers);
        }
        assert!(
            replica.answers_now(&mut etcd).is_empty(),
            "a failed call is followed by another at once, without end"
        );
    }
    let calls = etcd.requests - before;
    // 5 s at sync_interval_ms 1000: each failed call sent twice, the journal
    // and the poller trying about once an interval each.
    assert!(calls <= 30, "{calls} calls to an etcd that is down in 5 s");
    etcd.down = false;
    run_all(&mut envoys, &mut etcd, 3_000);
    assert_eq!(
        etcd.keys_under("/test/handoff/").len(),
        3,
        "journaled once etcd is back"
    );
}

/// A webhook's definition changed (or was removed) on every Envoy: its old
/// status record and the deliveries an Envoy that went away journaled for it.
fn sweep_configs(retention_s: u64) -> (Value, Value) {
    let mut old = waiting_config();
    old["webhooks"][0]["url"] = json!("http://hook:8080/old");
    let mut new = waiting_config();
    for config in [&mut old, &mut new] {
        config["dead_letter"] = json!({"url": "http://dead:8080/letters", "cluster": "dead"});
        config["cluster_state"]["etcd"]["orphan_retention_s"] = json!(retention_s);
    }
    (old, new)
}

impl Replica {
    fn dead_letters(&self) -> Vec<Value> {
        self.host
            .calls
            .iter()
            .filter(|c| c.cluster == "dead")
            .map(|c| serde_json::from_slice(&c.body).expect("a JSON dead letter"))
            .collect()
    }

    fn global(&self, counter: Counter) -> u64 {
        self.host.counts.get(&counter).copied().unwrap_or(0)
    }

    fn record_key(&self) -> String {
        let definition = &self.plugin.definitions()[0];
        format!(
            "/test/webhooks/{}/{:016x}",
            definition.id, definition.fingerprint
        )
    }
}

fn without_retries(config: &Value) -> Value {
    let mut config = config.clone();
    config["delivery"]["retry_schedule_s"] = json!([]);
    config
}

/// Two Envoys with the `old` definition, one leaving 2 deliveries waiting and
/// one failing a delivery (a status record), with Envoys of `others`; then
/// the two are killed. The Envoys left, and the old definition's record key.
fn old_definition_left_behind(
    etcd: &mut FakeEtcd,
    old: &Value,
    others: &[&Value],
) -> (Vec<Replica>, String) {
    let mut envoys = vec![replica(old), replica(&without_retries(old))];
    envoys.extend(others.iter().map(|config| replica(config)));
    run_all(&mut envoys, etcd, 1_000);
    envoys[0].leave_waiting(2);
    envoys[1].deliver("500");
    run_all(&mut envoys, etcd, 2_000);
    let old_record = envoys[0].record_key();
    assert!(
        etcd.kv.contains_key(old_record.as_bytes()),
        "the old definition's record"
    );
    assert_eq!(etcd.keys_under("/test/handoff/").len(), 2);
    assert_eq!(etcd.keys_under("/test/members/").len(), envoys.len());
    drop(envoys.drain(..2));
    kill_all_leases(etcd);
    (envoys, old_record)
}

/// Every lease lapses (the Envoys holding them were killed).
fn kill_all_leases(etcd: &mut FakeEtcd) {
    let leases: Vec<i64> = etcd.leases.keys().copied().collect();
    for lease in leases {
        etcd.expire(lease);
    }
}

#[test]
fn records_of_a_webhook_no_envoy_has_go_after_the_retention() {
    use envoy_webhooks::testing::host::WebhookCounter;
    let (old, new) = sweep_configs(10);
    let mut etcd = FakeEtcd::default();
    // The other Envoy never had the old definition.
    let (mut envoys, old_record) = old_definition_left_behind(&mut etcd, &old, &[&new]);
    run_all(&mut envoys, &mut etcd, 9_500);
    assert!(
        etcd.kv.contains_key(old_record.as_bytes()),
        "kept for the retention"
    );
    assert_eq!(etcd.keys_under("/test/handoff/").len(), 2);
    assert!(envoys[0].dead_letters().is_empty());

    run_all(&mut envoys, &mut etcd, 6_500);
    assert!(
        !etcd.kv.contains_key(old_record.as_bytes()),
        "removed after it"
    );
    assert!(etcd.keys_under("/test/handoff/").is_empty());
    let letters = envoys[0].dead_letters();
    assert_eq!(letters.len(), 2, "{letters:?}");
    for letter in &letters {
        assert_eq!(letter["reason"], "orphaned");
        assert_eq!(letter["webhook_id"], "hook");
        assert_eq!(letter["event"], json!({"event_type": "assets"}));
        assert_eq!(letter["attempts"], 1);
    }
    assert_eq!(envoys[0].count(WebhookCounter::Orphaned), 2);
    let letter_calls: Vec<u32> = envoys[0]
        .host
        .open
        .values()
        .filter(|c| c.cluster == "dead")
        .map(|c| c.token)
        .collect();
    for token in letter_calls {
        envoys[0].answer_hook(token, "204");
    }
    assert_eq!(envoys[0].count(WebhookCounter::DeadLettered), 2);
    assert_eq!(envoys[0].global(Counter::ClusterStateRecordsRemoved), 1);
    // What is left: the live Envoy's entry (and its webhook's record, once it has one).
    let left = etcd.keys_under("/test/");
    assert!(
        left.iter()
            .all(|k| k.starts_with("/test/members/") || *k == envoys[0].record_key()),
        "{left:?}"
    );
    assert_eq!(etcd.keys_under("/test/members/").len(), 1);
}

#[test]
fn without_a_dead_letter_destination_an_orphaned_delivery_is_counted_lost() {
    use envoy_webhooks::testing::host::WebhookCounter;
    let (mut old, mut new) = sweep_configs(2);
    old.as_object_mut()
        .expect("an object")
        .remove("dead_letter");
    new.as_object_mut()
        .expect("an object")
        .remove("dead_letter");
    let mut etcd = FakeEtcd::default();
    let mut envoys = vec![replica(&old), replica(&new)];
    envoys[0].leave_waiting(1);
    run_all(&mut envoys, &mut etcd, 2_000);
    drop(envoys.remove(0));
    kill_all_leases(&mut etcd);
    run_all(&mut envoys, &mut etcd, 6_000);
    assert!(etcd.keys_under("/test/handoff/").is_empty());
    assert_eq!(envoys[0].count(WebhookCounter::Orphaned), 1);
    assert_eq!(envoys[0].count(WebhookCounter::Lost), 1);
}

#[test]
fn a_webhook_a_live_envoy_has_keeps_its_records_and_its_deliveries_are_adopted() {
    use envoy_webhooks::testing::host::WebhookCounter;
    let (old, new) = sweep_configs(2);
    let mut etcd = FakeEtcd::default();
    // One Envoy with the old definition lives on, one has the new.
    let (mut envoys, old_record) = old_definition_left_behind(&mut etcd, &old, &[&old, &new]);
    run_all(&mut envoys, &mut etcd, 20_000);
    assert_eq!(envoys[0].count(WebhookCounter::Adopted), 2);
    assert!(envoys[1].dead_letters().is_empty());
    assert!(etcd.kv.contains_key(old_record.as_bytes()));
    assert_eq!(envoys[1].global(Counter::ClusterStateRecordsRemoved), 0);
}

#[test]
fn an_envoy_that_comes_up_with_the_webhook_during_a_removal_keeps_its_record() {
    let (old, new) = sweep_configs(2);
    let mut etcd = FakeEtcd::default();
    let mut envoys = vec![replica(&without_retries(&old)), replica(&new)];
    run_all(&mut envoys, &mut etcd, 1_000);
    envoys[0].deliver("500");
    run_all(&mut envoys, &mut etcd, 2_000);
    let old_record = envoys[0].record_key();
    assert!(etcd.kv.contains_key(old_record.as_bytes()));
    drop(envoys.remove(0));
    kill_all_leases(&mut etcd);
    // The sweeping Envoy runs until its removal is on its way to etcd; an
    // Envoy with the old definition registers before it arrives.
    let mut sweeper = envoys.remove(0);
    let mut newcomer = None;
    for _ in 0..200 {
        sweeper.host.now_ms += 100;
        sweeper.engine.tick(&mut sweeper.host);
        sweeper.sync.tick(&mut sweeper.host, &mut sweeper.engine);
        for (token, answer) in sweeper.answers_now_unless_removal(&mut etcd, &mut newcomer, &old) {
            sweeper
                .sync
                .call_finished(&mut sweeper.host, token, &answer, &mut sweeper.engine);
        }
        if newcomer.is_some() {
            break;
        }
    }
    let mut newcomer = newcomer.expect("the sweeper sent a removal");
    assert!(
        etcd.kv.contains_key(old_record.as_bytes()),
        "the removal was refused"
    );
    assert_eq!(sweeper.global(Counter::ClusterStateRecordsRemoved), 0);
    // From here the newcomer names it: it stays.
    for _ in 0..100 {
        sweeper.run(&mut etcd, 100);
        newcomer.run(&mut etcd, 100);
    }
    assert!(etcd.kv.contains_key(old_record.as_bytes()));
}

impl Replica {
    /// Like `answers_now`, but when a status record's removal is among the calls, a new Envoy
    /// with `config` comes up (and registers) before etcd applies it.
    fn answers_now_unless_removal(
        &mut self,
        etcd: &mut FakeEtcd,
        newcomer: &mut Option<Replica>,
        config: &Value,
    ) -> Vec<(u32, EtcdAnswer)> {
        let calls = self.open_etcd_calls();
        let mut answers = Vec::new();
        for call in calls {
            self.host.take(call.token);
            let request: Value = serde_json::from_slice(&call.body).unwrap_or_default();
            let removal = request["success"].as_array().is_some_and(|ops| {
                ops.iter().any(|op| {
                    unb64(&op["request_delete_range"]["key"]).starts_with(b"/test/webhooks/")
                })
            });
            if removal && newcomer.is_none() {
                let mut replica = replica(config);
                replica.run(etcd, 1_000);
                assert_eq!(etcd.keys_under("/test/members/").len(), 2);
                *newcomer = Some(replica);
            }
            answers.push((call.token, etcd.answer_call(&call)));
        }
        answers
    }
}

#[test]
fn an_adopted_delivery_keeps_the_platform_requests_trace_headers() {
    use envoy_webhooks::testing::host::WebhookCounter;
    let config = waiting_config();
    let mut etcd = FakeEtcd::default();
    let mut envoys = replicas(2, &config);
    run_all(&mut envoys, &mut etcd, 1_000);
    let first = &mut envoys[0];
    first.engine.accept(
        &mut first.host,
        QueuedEvent {
            targets: vec![QueuedTarget {
                webhook: 0,
                fingerprint: first.plugin.definitions()[0].fingerprint,
            }],
            request_id: Some("r".to_string()),
            headers: vec![("traceparent".to_string(), "00-abc-def-01".to_string())].into(),
            message_id: None,
            body: br#"{"event_type":"assets"}"#.to_vec().into(),
        },
    );
    assert_eq!(first.answer_hooks("503"), 1);
    run_all(&mut envoys, &mut etcd, 2_000);
    assert_eq!(etcd.keys_under("/test/handoff/").len(), 1);
    drop(envoys.remove(0));
    kill_owner_leases(&mut etcd);
    run_all(&mut envoys, &mut etcd, 2_000);
    assert_eq!(envoys[0].count(WebhookCounter::Adopted), 1);
    let call = envoys[0]
        .host
        .open
        .values()
        .find(|c| c.cluster == "hook")
        .cloned()
        .expect("the adopted delivery's call");
    assert!(call
        .headers
        .contains(&("traceparent".to_string(), "00-abc-def-01".to_string())));
}

#[test]
fn status_is_fresh_again_after_an_outage_while_a_member_entry_call_is_in_flight() {
    let config = config(3);
    let mut etcd = FakeEtcd::default();
    let mut envoy = replica(&config);
    envoy.run(&mut etcd, 1_000);
    etcd.down = true;
    envoy.run(&mut etcd, 3_000);
    assert_eq!(envoy.status_body()["cluster_state"]["stale"], true);
    etcd.down = false;
    // From here the member entry's calls get no answer; every other call does.
    for _ in 0..30 {
        envoy.host.now_ms += 100;
        envoy.engine.tick(&mut envoy.host);
        envoy.sync.tick(&mut envoy.host, &mut envoy.engine);
        let not_a_lease_call = |c: &&envoy_webhooks::testing::MadeCall| {
            c.cluster == "etcd"
                && !c
                    .headers
                    .iter()
                    .any(|(n, v)| n == ":path" && v.starts_with("/v3/lease"))
        };
        while let Some(call) = envoy.host.open.values().find(not_a_lease_call).cloned() {
            envoy.host.take(call.token);
            let answer = etcd.answer_call(&call);
            envoy
                .sync
                .call_finished(&mut envoy.host, call.token, &answer, &mut envoy.engine);
        }
    }
    let state = &envoy.status_body()["cluster_state"];
    assert_eq!(state["stale"], false, "{state}");
}

// Issue 30: at least once across Envoys, under faults.

impl Replica {
    /// The filter stops (a configuration change or a drain), as `on_done` does it.
    fn stop(&mut self, etcd: &mut FakeEtcd) {
        self.sync.stop(&mut self.host);
        self.engine.stop(&mut self.host);
        self.sync.tick(&mut self.host, &mut self.engine);
        self.answer_etcd(etcd);
    }

    /// Every delivery the filter took, by what became of it: (handed off,
    /// lost or dead-lettered, delivered).
    fn outcomes(&self) -> (u64, u64, u64) {
        use envoy_webhooks::testing::host::WebhookCounter::*;
        (
            self.count(HandedOff),
            self.count(Lost) + self.count(DeadLettered),
            self.count(Delivered),
        )
    }
}

/// The counters of `envoys` add up for `accepted` events, once every
/// delivery settled: accepted + adopted = delivered + failed + dropped +
/// handed_off + paused, and every delivery handed off was adopted or is
/// still in etcd.
fn assert_reconciled(envoys: &[&Replica], accepted: u64, etcd: &FakeEtcd) {
    use envoy_webhooks::testing::host::WebhookCounter::*;
    let sum = |counter| envoys.iter().map(|e| e.count(counter)).sum::<u64>();
    assert_eq!(
        accepted + sum(Adopted),
        sum(Delivered) + sum(Failed) + sum(Dropped) + sum(HandedOff) + sum(Paused),
        "accepted + adopted = delivered + failed + dropped + handed_off + paused"
    );
    let in_etcd = u64::try_from(etcd.keys_under("/test/handoff/").len()).expect("a count");
    assert!(
        sum(HandedOff) <= sum(Adopted) + in_etcd,
        "every delivery handed off is adopted or in etcd"
    );
    assert_eq!(
        sum(Failed) + sum(Dropped),
        sum(DeadLettered) + sum(Lost),
        "failed + dropped = dead_lettered + lost"
    );
}

#[test]
fn a_delivery_is_handed_off_only_once_etcd_holds_it_and_else_counted() {
    use envoy_webhooks::testing::host::WebhookCounter;
    // etcd is down when the filter stops: nothing can be written, so nothing
    // is handed off; every waiting delivery is counted (lost: no dead-letter
    // destination here), none silently gone.
    let mut etcd = FakeEtcd::default();
    let mut envoys = replicas(1, &waiting_config());
    run_all(&mut envoys, &mut etcd, 1_000);
    etcd.down = true;
    envoys[0].leave_waiting(3);
    envoys[0].stop(&mut etcd);
    envoys[0].run(&mut etcd, 500);
    assert!(envoys[0].engine.is_idle());
    assert!(envoys[0].sync.is_finished());
    assert_eq!(
        envoys[0].outcomes(),
        (0, 3, 0),
        "(handed off, lost, delivered)"
    );
    assert_eq!(envoys[0].count(WebhookCounter::Dropped), 3);
    etcd.down = false;
    assert!(etcd.keys_under("/test/handoff/").is_empty());
    assert_reconciled(&[&envoys[0]], 3, &etcd);
}

#[test]
fn deliveries_parked_since_the_last_write_are_written_at_stop_and_adopted() {
    use envoy_webhooks::testing::host::WebhookCounter;
    // Parked moments before the stop: the journal had not written them (nor
    // taken a lease yet); the stop writes them first, then hands them off.
    let mut etcd = FakeEtcd::default();
    let mut envoys = replicas(2, &waiting_config());
    run_all(&mut envoys, &mut etcd, 1_000);
    envoys[0].leave_waiting(3);
    assert!(etcd.keys_under("/test/handoff/").is_empty());
    envoys[0].stop(&mut etcd);
    envoys[0].run(&mut etcd, 200);
    assert!(envoys[0].sync.is_finished());
    assert_eq!(envoys[0].outcomes(), (3, 0, 0));
    assert_eq!(etcd.keys_under("/test/handoff/").len(), 3);
    run_all(&mut envoys[1..], &mut etcd, 2_000);
    assert_eq!(envoys[1].count(WebhookCounter::Adopted), 3);
    assert_eq!(envoys[1].answer_hooks("204"), 3);
    assert!(etcd.keys_under("/test/handoff/").is_empty());
    assert_reconciled(&[&envoys[0], &envoys[1]], 3, &etcd);
}

#[test]
fn a_delivery_too_large_to_journal_is_dead_lettered_at_stop_not_handed_off() {
    use envoy_webhooks::testing::host::WebhookCounter;
    let mut etcd = FakeEtcd::default();
    let mut envoys = replicas(1, &waiting_config());
    run_all(&mut envoys, &mut etcd, 1_000);
    let envoy = &mut envoys[0];
    // 200 KB of control characters: 1.2 MB once JSON-escaped in its record.
    let body = vec![1u8; 200_000];
    envoy.engine.accept(
        &mut envoy.host,
        QueuedEvent {
            targets: vec![QueuedTarget {
                webhook: 0,
                fingerprint: envoy.plugin.definitions()[0].fingerprint,
            }],
            request_id: Some("large".to_string()),
            headers: Vec::new().into(),
            message_id: None,
            body: body.into(),
        },
    );
    assert_eq!(envoy.answer_hooks("503"), 1);
    envoy.leave_waiting_more(1);
    envoy.run(&mut etcd, 2_000);
    assert_eq!(etcd.keys_under("/test/handoff/").len(), 1, "the small one");
    assert!(etcd.largest_request < 1_500_000);
    envoy.stop(&mut etcd);
    envoy.run(&mut etcd, 200);
    assert_eq!(envoy.outcomes(), (1, 1, 0));
    assert_eq!(envoy.count(WebhookCounter::Dropped), 1);
    assert_reconciled(&[&envoys[0]], 2, &etcd);
}

#[test]
fn a_batch_of_large_records_stays_under_etcds_request_limit() {
    let mut etcd = FakeEtcd::default();
    let mut envoys = replicas(1, &waiting_config());
    run_all(&mut envoys, &mut etcd, 1_000);
    let envoy = &mut envoys[0];
    // Records of about 300 KB (400 KB in base64): three fit a request, not four.
    for i in 0..6 {
        let mut body = format!(r#"{{"event_type":"assets","i":{i},"pad":""#).into_bytes();
        body.extend(std::iter::repeat_n(b'x', 300_000));
        body.extend_from_slice(b"\"}");
        envoy.engine.accept(
            &mut envoy.host,
            QueuedEvent {
                targets: vec![QueuedTarget {
                    webhook: 0,
                    fingerprint: envoy.plugin.definitions()[0].fingerprint,
                }],
                request_id: Some(format!("r{i}")),
                headers: Vec::new().into(),
                message_id: None,
                body: body.into(),
            },
        );
        envoy.answer_hooks("503");
    }
    assert_eq!(envoy.engine.pending(), 6);
    envoy.run(&mut etcd, 5_000);
    assert_eq!(etcd.keys_under("/test/handoff/").len(), 6);
    assert!(
        etcd.largest_request <= 1_572_864,
        "a request of {} bytes is over etcd's 1.5 MiB",
        etcd.largest_request
    );
    assert_eq!(envoy.errors(), 0);
}

#[test]
fn refused_journal_writes_never_starve_the_lease_keepalives() {
    use envoy_webhooks::testing::host::WebhookCounter;
    let (mut etcd, mut envoys) = journaled(2, 2);
    // etcd's space quota is exceeded: every put is refused, and more
    // deliveries keep waiting, so the journal keeps trying to write.
    etcd.refuse_puts = true;
    let keepalives_before = etcd
        .paths
        .iter()
        .filter(|p| p.ends_with("keepalive"))
        .count();
    for _ in 0..10 {
        envoys[0].leave_waiting_more(1);
        run_all(&mut envoys, &mut etcd, 1_000);
    }
    let keepalives = etcd
        .paths
        .iter()
        .filter(|p| p.ends_with("keepalive"))
        .count()
        - keepalives_before;
    // One a sync interval for the journal (TTL: 5 intervals), plus the
    // member entries' own.
    assert!(keepalives >= 9, "{keepalives} keep-alives in 10 s");
    assert_eq!(
        etcd.keys_under("/test/owners/").len(),
        1,
        "the owner is live"
    );
    assert_eq!(envoys[1].count(WebhookCounter::Adopted), 0);
    // Space again: the waiting deliveries are journaled.
    etcd.refuse_puts = false;
    run_all(&mut envoys, &mut etcd, 2_000);
    assert_eq!(etcd.keys_under("/test/handoff/").len(), 12);
}

impl Replica {
    /// One more event whose first attempt fails, whatever waits already.
    fn leave_waiting_more(&mut self, n: usize) {
        let before = self.engine.pending();
        for _ in 0..n {
            self.deliver("503");
        }
        assert_eq!(self.engine.pending(), before + n);
    }
}

#[test]
fn a_lease_that_lapses_before_its_first_use_is_granted_anew() {
    let mut etcd = FakeEtcd::default();
    let mut envoys = replicas(1, &waiting_config());
    // The member entry's lease lapses between its grant and its put.
    etcd.lapse_next_grant = true;
    run_all(&mut envoys, &mut etcd, 3_000);
    assert_eq!(etcd.keys_under("/test/members/").len(), 1, "member entry");
    // Then the journal's.
    etcd.lapse_next_grant = true;
    envoys[0].leave_waiting(2);
    run_all(&mut envoys, &mut etcd, 3_000);
    assert_eq!(etcd.keys_under("/test/owners/").len(), 1, "liveness key");
    assert_eq!(etcd.keys_under("/test/handoff/").len(), 2);
}

#[test]
fn a_record_whose_write_answer_was_lost_is_deleted_with_its_delivery() {
    let (mut etcd, mut envoys) = journaled(1, 1);
    // The next write applies, but neither its answer nor its retry's comes back.
    etcd.lose_write_answers = 2;
    let envoy = &mut envoys[0];
    envoy.leave_waiting_more(1);
    while etcd.lose_write_answers > 0 {
        envoy.run(&mut etcd, 100);
    }
    assert_eq!(etcd.keys_under("/test/handoff/").len(), 2);
    // The delivery is made before the journal's next write.
    envoy.host.now_ms += 60_000;
    envoy.engine.tick(&mut envoy.host);
    assert_eq!(envoy.answer_hooks("204"), 2);
    envoy.run(&mut etcd, 2_000);
    assert!(
        etcd.keys_under("/test/handoff/").is_empty(),
        "a record left behind would be adopted and sent again once its owner leaves"
    );
}

#[test]
fn an_enable_is_not_undone_by_failures_an_envoy_cut_off_from_etcd_made_before_it() {
    let config = config(3);
    let mut etcd = FakeEtcd::default();
    // What Envoy 0 reaches while it is cut off from etcd.
    let mut unreachable = FakeEtcd {
        down: true,
        ..FakeEtcd::default()
    };
    let mut envoys = replicas(2, &config);
    run_all(&mut envoys, &mut etcd, 1_000);
    // Cut off, Envoy 0 fails the webhook on its own; Envoy 1 does too, in etcd.
    for _ in 0..3 {
        envoys[0].deliver("503");
        envoys[1].deliver("503");
    }
    for _ in 0..20 {
        envoys[0].run(&mut unreachable, 100);
        envoys[1].run(&mut etcd, 100);
    }
    assert_eq!(envoys[0].local().status, Status::Failed);
    assert_eq!(etcd.record().map(|r| r.status), Some(Status::Failed));
    // The operator enables it through Envoy 1.
    let route = AdminRoute::Enable("hook".to_string());
    let now = envoys[1].host.now_ms;
    let plugin = envoys[1].plugin.clone();
    let answer = admin::answer(
        &plugin,
        &mut envoys[1].host,
        &route,
        AdminRequest::default(),
        now,
    );
    assert_eq!(answer.status, 200);
    envoys[1].run(&mut etcd, 1_000);
    assert_eq!(etcd.record().map(|r| r.status), Some(Status::Enabled));
    // Envoy 0 reaches etcd again: its failures were made before the enable.
    run_all(&mut envoys, &mut etcd, 3_000);
    let statuses = etcd.statuses();
    let enabled_at = statuses
        .iter()
        .rposition(|s| *s == Status::Enabled)
        .expect("enabled");
    assert!(
        !statuses[enabled_at..].contains(&Status::Failed),
        "etcd went {statuses:?}"
    );
    assert_eq!(etcd.record().map(|r| r.status), Some(Status::Enabled));
    for envoy in &envoys {
        assert_eq!(envoy.local().status, Status::Enabled);
    }
}

/// Envoy 0 leaves 3 deliveries journaled and dies; Envoy 1 adopts them
/// while `fault` is done to etcd just before its takes.
fn adopt_after_a_lost_take(fault: impl Fn(&mut FakeEtcd)) -> (u64, usize, usize) {
    use envoy_webhooks::testing::host::WebhookCounter;
    let (mut etcd, mut envoys) = journaled(2, 3);
    envoys.remove(0);
    kill_owner_leases(&mut etcd);
    // Envoy 1's member entry is in place (its receipts go under its lease).
    let adopter = &mut envoys[0];
    fault(&mut etcd);
    for _ in 0..10 {
        adopter.run(&mut etcd, 100);
        etcd.down = false;
    }
    adopter.run(&mut etcd, 3_000);
    let delivered = adopter.answer_hooks("204");
    adopter.run(&mut etcd, 1_000);
    assert_eq!(
        adopter.count(WebhookCounter::Adopted),
        adopter.count(WebhookCounter::Delivered),
        "adopted = delivered"
    );
    (
        adopter.count(WebhookCounter::Adopted),
        delivered,
        etcd.keys_under("/test/handoff/").len() + etcd.keys_under("/test/receipts/").len(),
    )
}

/// The journals' leases lapse (their Envoys died): the owners' liveness keys
/// go. Member entries stay: the Envoys that adopt keep theirs, and hold
/// their receipts under them.
fn kill_owner_leases(etcd: &mut FakeEtcd) {
    let members: Vec<Vec<u8>> = etcd
        .keys_under("/test/members/")
        .into_iter()
        .map(String::into_bytes)
        .collect();
    let leases: Vec<i64> = etcd
        .leases
        .iter()
        .filter(|(_, keys)| !keys.iter().any(|k| members.contains(k)))
        .map(|(lease, _)| *lease)
        .collect();
    for lease in leases {
        etcd.expire(lease);
    }
}

#[test]
fn a_take_whose_answer_was_lost_finds_its_receipt_and_adopts() {
    // The take applies; its answer is lost and the take is sent again at
    // once: its compare fails (the record is gone), and it reads its receipt.
    assert_eq!(
        adopt_after_a_lost_take(|etcd| etcd.lose_write_answers = 1),
        (3, 3, 0),
        "(adopted, delivered, records and receipts left)"
    );
}

#[test]
fn a_take_without_any_answer_is_sent_again_next_round_and_adopts() {
    // etcd goes away right after applying the take: neither it nor its
    // resend gets an answer; the next round sends it again.
    assert_eq!(
        adopt_after_a_lost_take(|etcd| etcd.down_after_next_write = true),
        (3, 3, 0),
        "(adopted, delivered, records and receipts left)"
    );
}

#[test]
fn a_write_whose_answers_were_all_lost_is_applied_once() {
    let mut etcd = FakeEtcd::default();
    let mut envoys = replicas(1, &config(100));
    run_all(&mut envoys, &mut etcd, 1_000);
    envoys[0].deliver("503");
    // The write applies, then etcd goes away: neither its answer nor its
    // resend's comes back.
    etcd.down_after_next_write = true;
    run_all(&mut envoys, &mut etcd, 1_500);
    assert!(etcd.down);
    etcd.down = false;
    run_all(&mut envoys, &mut etcd, 3_000);
    let record = etcd.record().expect("a record");
    assert_eq!(record.consecutive_failures, 1, "applied once, not twice");
    envoys[0].deliver("503");
    run_all(&mut envoys, &mut etcd, 2_000);
    assert_eq!(etcd.record().map(|r| r.consecutive_failures), Some(2));
}

#[test]
fn a_write_resent_after_another_envoy_wrote_is_recognised_as_applied() {
    let mut etcd = FakeEtcd::default();
    let mut envoys = replicas(2, &config(100));
    run_all(&mut envoys, &mut etcd, 1_000);
    // Envoy 0's write applies, its answer is lost; it is sent again at once,
    // but Envoy 1 writes before the resend reaches etcd.
    envoys[0].deliver("503");
    envoys[1].deliver("503");
    etcd.lose_write_answers = 1;
    let first = &mut envoys[0];
    first.host.now_ms += 1_000;
    first.engine.tick(&mut first.host);
    first.sync.tick(&mut first.host, &mut first.engine);
    // Envoy 0's round: its read, then its write (applied, answer lost).
    for _ in 0..2 {
        let answers = envoys[0].answers_now(&mut etcd);
        envoys[0].receive(answers);
    }
    assert_eq!(etcd.record().map(|r| r.consecutive_failures), Some(1));
    let resend = envoys[0].open_etcd_calls();
    assert!(!resend.is_empty(), "the write is sent again");
    run_all(&mut envoys[1..], &mut etcd, 1_000);
    assert_eq!(etcd.record().map(|r| r.consecutive_failures), Some(2));
    run_all(&mut envoys, &mut etcd, 2_000);
    assert_eq!(
        etcd.record().map(|r| r.consecutive_failures),
        Some(2),
        "one failure each: Envoy 0's is not applied a second time"
    );
}

#[test]
fn a_clock_set_back_never_stops_the_keepalives_nor_the_rounds() {
    let (mut etcd, mut envoys) = journaled(1, 2);
    // The wall clock is set back 30 s (the lease's TTL is 5 s).
    envoys[0].host.now_ms -= 30_000;
    let count = |etcd: &FakeEtcd, path: &str| etcd.paths.iter().filter(|p| *p == path).count();
    let (keepalives, reads) = (
        count(&etcd, "/v3/lease/keepalive"),
        count(&etcd, "/v3/kv/range"),
    );
    run_all(&mut envoys, &mut etcd, 5_000);
    let keepalives = count(&etcd, "/v3/lease/keepalive") - keepalives;
    let reads = count(&etcd, "/v3/kv/range") - reads;
    assert!(
        keepalives >= 4,
        "{keepalives} keep-alives in 5 s after the step"
    );
    assert!(reads >= 4, "{reads} rounds in 5 s after the step");
}

#[test]
fn adoption_reads_the_journal_a_page_a_time_and_skips_live_owners() {
    use envoy_webhooks::testing::host::WebhookCounter;
    let mut etcd = FakeEtcd::default();
    // A live owner (sorted first) with 2,500 deliveries waiting.
    etcd.kv
        .insert(b"/test/owners/owner-0".to_vec(), (Vec::new(), 1));
    for n in 0..2_500 {
        let key = format!("/test/handoff/owner-0/hook/00000000000000aa/{n}");
        etcd.kv.insert(key.into_bytes(), (b"{}".to_vec(), 1));
    }
    etcd.revision = 2;
    let mut envoys = replicas(2, &waiting_config());
    run_all(&mut envoys, &mut etcd, 1_000);
    envoys[0].leave_waiting(3);
    run_all(&mut envoys, &mut etcd, 2_000);
    assert_eq!(etcd.keys_under("/test/handoff/").len(), 2_503);
    drop(envoys.remove(0));
    kill_owner_leases(&mut etcd);
    etcd.largest_range = 0;
    run_all(&mut envoys, &mut etcd, 4_000);
    assert_eq!(envoys[0].count(WebhookCounter::Adopted), 3);
    assert!(
        etcd.largest_range <= 1_000,
        "a range of {} keys in one answer",
        etcd.largest_range
    );
    assert_eq!(etcd.keys_under("/test/handoff/").len(), 2_500);
}

impl Replica {
    /// A second `on_configure` of the same root context, with `config`.
    fn reconfigure(&mut self, config: &Value) {
        let plugin = Rc::new(Plugin::load(config.to_string().as_bytes(), |_| None).expect("valid"));
        self.engine.configure(&mut self.host, plugin.clone());
        let placeholder = ClusterSync::new(plugin.clone(), 1, "placeholder".to_string())
            .expect("cluster_state is configured");
        let old = std::mem::replace(&mut self.sync, placeholder);
        self.sync = ClusterSync::reconfigure(Some(old), plugin.clone(), 1, "new-owner".to_string())
            .expect("a sync");
        self.plugin = plugin;
    }
}

#[test]
fn a_new_configuration_of_the_same_root_carries_its_journal_on() {
    let mut etcd = FakeEtcd::default();
    let config = waiting_config();
    let mut envoys = replicas(1, &config);
    run_all(&mut envoys, &mut etcd, 1_000);
    envoys[0].leave_waiting(3);
    run_all(&mut envoys, &mut etcd, 2_000);
    let owners = etcd.keys_under("/test/owners/");
    let records = etcd.keys_under("/test/handoff/");
    assert_eq!((owners.len(), records.len()), (1, 3));
    // A second webhook, same cluster_state.
    let mut more = config.clone();
    more["webhooks"]
        .as_array_mut()
        .expect("a list")
        .push(json!({"id": "hook2", "event_type": "assets", "url": "http://hook:8080/2", "cluster": "hook"}));
    envoys[0].reconfigure(&more);
    run_all(&mut envoys, &mut etcd, 3_000);
    assert_eq!(
        etcd.keys_under("/test/owners/"),
        owners,
        "the same owner, alive"
    );
    assert_eq!(etcd.keys_under("/test/handoff/"), records, "journaled once");
    let member = etcd.keys_under("/test/members/");
    let (listing, _) = etcd.kv.get(member[0].as_bytes()).expect("a member entry");
    assert!(
        String::from_utf8_lossy(listing).contains("hook2"),
        "the entry names the new webhook"
    );
    // The deliveries are made, and leave the journal.
    envoys[0].host.now_ms += 60_000;
    let envoy = &mut envoys[0];
    envoy.engine.tick(&mut envoy.host);
    assert_eq!(envoys[0].answer_hooks("204"), 3);
    run_all(&mut envoys, &mut etcd, 2_000);
    assert!(etcd.keys_under("/test/handoff/").is_empty());
}

#[test]
fn a_new_configuration_with_another_cluster_state_moves_the_journal() {
    let mut etcd = FakeEtcd::default();
    let config = waiting_config();
    let mut envoys = replicas(1, &config);
    run_all(&mut envoys, &mut etcd, 1_000);
    envoys[0].leave_waiting(3);
    run_all(&mut envoys, &mut etcd, 2_000);
    assert_eq!(etcd.keys_under("/test/handoff/").len(), 3);
    let mut moved = config.clone();
    moved["cluster_state"]["etcd"]["prefix"] = json!("/other/");
    envoys[0].reconfigure(&moved);
    run_all(&mut envoys, &mut etcd, 3_000);
    assert!(
        etcd.keys_under("/test/handoff/").is_empty(),
        "the old records deleted"
    );
    assert!(
        etcd.keys_under("/test/owners/").is_empty(),
        "the old lease revoked"
    );
    assert!(etcd.keys_under("/test/members/").is_empty());
    assert_eq!(etcd.keys_under("/other/handoff/").len(), 3);
    assert_eq!(etcd.keys_under("/other/owners/").len(), 1);
}

#[test]
fn a_stop_deletes_the_records_of_deliveries_made_even_without_a_lease() {
    let (mut etcd, mut envoys) = journaled(1, 2);
    // The journal's lease lapses and etcd refuses new ones (NOSPACE): the
    // worker is no longer live in etcd, its records look orphaned.
    etcd.refuse_puts = true;
    kill_owner_leases(&mut etcd);
    run_all(&mut envoys, &mut etcd, 2_000);
    assert!(etcd.keys_under("/test/owners/").is_empty());
    // Both deliveries are made, and the filter stops before the next write.
    let envoy = &mut envoys[0];
    envoy.host.now_ms += 60_000;
    envoy.engine.tick(&mut envoy.host);
    assert_eq!(envoy.answer_hooks("204"), 2);
    envoy.stop(&mut etcd);
    envoy.run(&mut etcd, 500);
    assert!(envoy.sync.is_finished());
    assert!(
        etcd.keys_under("/test/handoff/").is_empty(),
        "a record left would be adopted and the delivery made twice"
    );
}

/// A round writes the deltas of the webhooks that changed, found on the
/// dirty list, without looking at every webhook's: at 10,000 tenant
/// webhooks, looking at each every second cost an idle Envoy 8% of a core.
#[test]
fn a_round_looks_only_at_the_webhooks_that_changed() {
    let hooks: Vec<Value> = (0..300)
        .map(|n| {
            json!({"id": format!("hook{n}"), "event_type": "assets",
                        "url": format!("http://hook{n}:8080/in"), "cluster": "hook"})
        })
        .collect();
    let mut config = config(3);
    config["webhooks"] = Value::from(hooks);
    let mut etcd = FakeEtcd::default();
    let mut envoy = replica(&config);
    envoy.run(&mut etcd, 3_000);
    envoy.host.reads.borrow_mut().clear();
    envoy.deliver("500");
    envoy.run(&mut etcd, 5_000);
    let reads = envoy.host.reads.borrow().clone();
    let delta_reads = |id: &str| reads.get(&format!("envoy_webhooks/delta/{id}")).copied();
    assert!(delta_reads("hook0").is_some(), "{reads:?}");
    let others: Vec<&String> = reads
        .keys()
        .filter(|key| key.starts_with("envoy_webhooks/delta/") && !key.ends_with("/hook0"))
        .collect();
    assert!(others.is_empty(), "{others:?}");
    // The failure reached etcd.
    let statuses = etcd.statuses();
    assert_eq!(statuses.last(), Some(&Status::Failing), "{statuses:?}");
}
