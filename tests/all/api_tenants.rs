//! The API's paths, and every worker following the tenants' webhooks in
//! etcd: the whole set first, then only what changed, deletions included.

use envoy_webhooks::config::{ApiConfig, PluginConfig};
use envoy_webhooks::testing::admin::AdminRoute;
use envoy_webhooks::testing::api::{ApiRoute, Outcome, Tenants, TOMBSTONE_RETENTION_MS};
use envoy_webhooks::testing::caller::{Caller, Role};
use envoy_webhooks::testing::etcd::answer_body;
use envoy_webhooks::testing::exchange::{Answer, Context, Exchange, Keys, Operation, Step};
use envoy_webhooks::testing::plugin::Plugin;
use envoy_webhooks::testing::serve::{self, Entrance, Served};
use serde_json::{json, Value};

use crate::fake_etcd::FakeEtcd;

const A: &str = "9c2f2e2a-6b7d-11ee-8c99-0242ac120002";
const TOKEN: &str = "tok-a-6v3Qx9Lk2Jm8Np4Rs7Tw";
const ADMIN_TOKEN: &str = "admin-Qm4Zr8Tx2Wv6Ny0Ks3Lp";

#[test]
fn api_paths_route_as_iconiks_and_no_spelling_slips_past() {
    let id = "0d3a7f52-1c5b-4f7e-9a41-7f3c2d1e0b9a";
    let op = |method: &str, path: &str| match served(method, path, &[("auth-token", TOKEN)]) {
        Some(Served::Api(route, caller)) => {
            assert_eq!(caller, Caller::new(A, &[Role::Read]));
            route
        }
        other => panic!("{method} {path}: {other:?}"),
    };
    let not_served = |method: &str, path: &str| {
        assert_eq!(
            served(method, path, &[("auth-token", TOKEN)]),
            None,
            "{path}"
        );
    };
    assert_eq!(
        op("GET", "/API/notifications/v1/webhooks/"),
        ApiRoute::Operation(Operation::List)
    );
    assert_eq!(
        op("POST", "/API/notifications/v1/webhooks/"),
        ApiRoute::Operation(Operation::Create)
    );
    assert_eq!(
        op("GET", &format!("/API/notifications/v1/webhooks/{id}/")),
        ApiRoute::Operation(Operation::Get(id.to_string()))
    );
    assert_eq!(
        op(
            "PUT",
            &format!("/api/NOTIFICATIONS/v1/webhooks/{}/", id.to_uppercase())
        ),
        ApiRoute::Operation(Operation::Change(id.to_string()))
    );
    assert_eq!(
        op(
            "DELETE",
            &format!("//API/notifications/./v1/webhooks/{id}?x=1")
        ),
        ApiRoute::Operation(Operation::Delete(id.to_string()))
    );
    assert_eq!(
        op(
            "GET",
            &format!("/API/notifications%2Fv1/webhooks/{id}/secret/")
        ),
        ApiRoute::Operation(Operation::Secret(id.to_string()))
    );
    assert_eq!(
        op(
            "POST",
            &format!("/API/notifications/v1/webhooks/{id}/secret/rotate/")
        ),
        ApiRoute::Operation(Operation::Rotate(id.to_string()))
    );
    assert_eq!(
        op("PATCH", "/API/notifications/v1/webhooks/"),
        ApiRoute::MethodNotAllowed { allow: "GET, POST" }
    );
    assert_eq!(op("GET", "/API/notifications/v2/other"), ApiRoute::NotFound);
    assert_eq!(op("GET", "/API/notifications"), ApiRoute::NotFound);
    not_served("GET", "/API/notificationsX/v1/webhooks/");
    assert_eq!(
        op("GET", "/API/x/../notifications/v1/webhooks/"),
        ApiRoute::Operation(Operation::List)
    );
    not_served("POST", "/api/v1/events");
}

/// Routes a request as the filter does, with both the admin API and the
/// tenant API configured; `headers` are the request's.
fn served(method: &str, path: &str, headers: &[(&str, &str)]) -> Option<Served> {
    let config = json!({
        "webhooks": [],
        "admin": {"token": ADMIN_TOKEN, "path_prefix": "/webhooks-admin"},
        "delivery": {"clusters": {"https": "dynamic_forward_proxy_cluster_https"}},
        "api": {"tokens": {TOKEN: {"system_domain_id": A, "roles": ["can_read_webhooks"]}}},
        "cluster_state": {"etcd": {"cluster": "etcd", "authority": "etcd:2379"}},
    });
    let plugin = Plugin::load(config.to_string().as_bytes(), |_| None).unwrap();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.to_string())
    };
    let served = serve::route(&plugin, method, path, &header);
    // What events.selected_by_routes relies on: serves_path agrees with route.
    assert_eq!(
        serve::serves_path(&plugin, path),
        served.is_some(),
        "{path}"
    );
    served
}

/// Without valid credentials for the API a path is under, the caller learns
/// nothing but 401: not whether the path or the method exists. Neither API
/// takes the other's credentials.
#[test]
fn each_api_takes_only_its_own_credentials_and_tells_nothing_without_them() {
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let refused =
        |entrance: Entrance, method: &str, path: &str, headers: &[(&str, &str)]| match served(
            method, path, headers,
        ) {
            Some(Served::Refused(e, _)) if e == entrance => {}
            other => panic!("{method} {path} {headers:?}: {other:?}"),
        };
    for (method, path) in [
        ("GET", "/API/notifications/v1/webhooks/"),
        ("PATCH", "/API/notifications/v1/webhooks/"),
        ("GET", "/API/notifications/v2/nothing"),
        ("GET", "/api/NOTIFICATIONS"),
    ] {
        for headers in [
            &[][..],
            &[("auth-token", "not-a-token-of-anyone-at-all")][..],
            &[("authorization", bearer.as_str())][..],
            &[("auth-token", ADMIN_TOKEN)][..],
        ] {
            refused(Entrance::Api, method, path, headers);
        }
    }
    for (method, path) in [
        ("GET", "/webhooks-admin/status"),
        ("GET", "/Webhooks-Admin/nothing"),
    ] {
        for headers in [
            &[][..],
            &[("auth-token", TOKEN)][..],
            &[("authorization", "Bearer tok-a-6v3Qx9Lk2Jm8Np4Rs7Tw")][..],
        ] {
            refused(Entrance::Admin, method, path, headers);
        }
    }
    assert_eq!(
        served(
            "GET",
            "/webhooks-admin/status",
            &[("authorization", &bearer)]
        ),
        Some(Served::Admin(AdminRoute::Status))
    );
}

fn etcd_config() -> envoy_webhooks::config::EtcdConfig {
    let config = PluginConfig::from_value(&json!({
        "webhooks": [],
        "cluster_state": {"etcd": {"cluster": "etcd", "authority": "etcd:2379", "sync_interval_ms": 1000}}
    }))
    .unwrap();
    config.cluster_state.unwrap()
}

/// Runs API requests against the fake etcd.
struct Api {
    config: ApiConfig,
    keys: Keys,
    counter: u8,
    now_ms: u64,
}

impl Api {
    fn new() -> Api {
        Api {
            config: ApiConfig::from_value(&json!({"tokens": {}})).unwrap(),
            keys: Keys::new("/envoy-webhooks/"),
            counter: 0,
            now_ms: 1_765_000_000_000,
        }
    }

    fn run(&mut self, etcd: &mut FakeEtcd, operation: Operation, body: Value) -> Answer {
        let who = Caller::new(A, &[Role::Read, Role::Write, Role::Delete]);
        let body = if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        let counter = &mut self.counter;
        let mut random = |buffer: &mut [u8]| {
            for byte in buffer.iter_mut() {
                *counter = counter.wrapping_add(53);
                *byte = *counter;
            }
            true
        };
        let urls = &self.config.urls;
        let check_url = |url: &str| urls.check(url).map(|_| ());
        let health = |_: &envoy_webhooks::config::WebhookDefinition| None;
        let mut context = Context {
            config: &self.config,
            keys: &self.keys,
            now_ms: self.now_ms,
            random: &mut random,
            health: &health,
            check_url: &check_url,
            enable: &|_| {},
        };
        let (mut exchange, mut step) = Exchange::start(operation, who, body, &mut context);
        loop {
            match step {
                Step::Done(answer) => return answer,
                Step::Etcd { path, body } => {
                    let answer = etcd.answer(path, &[], &body);
                    step = exchange.next(answer_body(answer.status, &answer.body), &mut context);
                }
            }
        }
    }
}

/// One worker's poll: the calls `next` asks for, answered at once, until it has none.
fn poll(tenants: &mut Tenants, etcd: &mut FakeEtcd, now_ms: u64) -> Option<Vec<String>> {
    let mut changed = None;
    while let Some((path, body)) = tenants.next(now_ms) {
        let mut headers = Vec::new();
        if let Some(token) = tenants.token() {
            headers.push(("authorization".to_string(), token.to_string()));
        }
        let answer = etcd.answer(path, &headers, &body);
        match tenants.finished(answer_body(answer.status, &answer.body), now_ms) {
            Ok(Outcome::Changed(definitions)) => {
                changed = Some(definitions.iter().map(|d| d.url.text.clone()).collect());
            }
            Ok(Outcome::Same) => {}
            Err(e) => panic!("{e}"),
        }
    }
    changed
}

fn sorted(mut urls: Vec<String>) -> Vec<String> {
    urls.sort();
    urls
}

fn hook(n: usize) -> Value {
    json!({"event_type": "assets", "status": "ENABLED", "url": format!("https://hooks.example.com/{n}")})
}

#[test]
fn a_worker_follows_creates_changes_and_deletes_reading_only_what_changed() {
    let mut etcd = FakeEtcd::default();
    let mut api = Api::new();
    let mut tenants = Tenants::new(&etcd_config(), None);
    let t0 = 1_765_000_000_000;
    assert_eq!(poll(&mut tenants, &mut etcd, t0), None, "nothing yet");
    assert!(tenants.has_read());
    let made = api.run(&mut etcd, Operation::Create, hook(1)).body.unwrap();
    let id = made["id"].as_str().unwrap().to_string();
    // Not before the interval is over.
    assert_eq!(poll(&mut tenants, &mut etcd, t0 + 10), None);
    assert_eq!(
        poll(&mut tenants, &mut etcd, t0 + 1_000),
        Some(vec!["https://hooks.example.com/1".to_string()])
    );
    assert_eq!(
        poll(&mut tenants, &mut etcd, t0 + 2_000),
        None,
        "no change: Same"
    );
    api.run(&mut etcd, Operation::Create, hook(2));
    api.run(
        &mut etcd,
        Operation::Change(id.clone()),
        json!({"url": "https://hooks.example.com/1b"}),
    );
    let largest = etcd.largest_range;
    assert_eq!(
        poll(&mut tenants, &mut etcd, t0 + 3_000).map(sorted),
        Some(vec![
            "https://hooks.example.com/1b".to_string(),
            "https://hooks.example.com/2".to_string()
        ])
    );
    api.run(&mut etcd, Operation::Delete(id.clone()), Value::Null);
    assert_eq!(
        poll(&mut tenants, &mut etcd, t0 + 4_000),
        Some(vec!["https://hooks.example.com/2".to_string()])
    );
    assert!(
        etcd.largest_range <= largest.max(2),
        "changes only: {}",
        etcd.largest_range
    );
    // A second worker starting now reads the whole set: the same.
    let mut fresh = Tenants::new(&etcd_config(), None);
    assert_eq!(
        poll(&mut fresh, &mut etcd, t0 + 4_000),
        Some(vec!["https://hooks.example.com/2".to_string()])
    );
}

#[test]
fn old_tombstones_are_swept_by_a_whole_read_and_none_is_missed() {
    let mut etcd = FakeEtcd::default();
    let mut api = Api::new();
    let mut tenants = Tenants::new(&etcd_config(), None);
    let t0 = api.now_ms;
    let id = api.run(&mut etcd, Operation::Create, hook(1)).body.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(poll(&mut tenants, &mut etcd, t0).is_some());
    api.run(&mut etcd, Operation::Delete(id), Value::Null);
    let tombstones = |etcd: &FakeEtcd| {
        etcd.kv
            .keys()
            .filter(|k| k.starts_with(b"/envoy-webhooks/api/deleted/"))
            .count()
    };
    assert_eq!(tombstones(&etcd), 1);
    assert_eq!(poll(&mut tenants, &mut etcd, t0 + 1_000), Some(vec![]));
    // Half the retention later: a whole read, the tombstone still young.
    let half = t0 + TOMBSTONE_RETENTION_MS / 2 + 2_000;
    assert_eq!(poll(&mut tenants, &mut etcd, half), None);
    assert_eq!(tombstones(&etcd), 1);
    let later = t0 + TOMBSTONE_RETENTION_MS + 5_000;
    assert_eq!(poll(&mut tenants, &mut etcd, later), None);
    assert_eq!(tombstones(&etcd), 0, "swept");
}

#[test]
fn with_credentials_it_authenticates_and_again_when_the_token_expires() {
    let mut etcd = FakeEtcd {
        token: Some("none-yet".to_string()),
        ..FakeEtcd::default()
    };
    let mut api = Api::new();
    api.run(&mut etcd, Operation::Create, hook(1)); // sent without a token: refused
    assert!(etcd.kv.is_empty());
    let mut tenants = Tenants::new(&etcd_config(), Some(("root".to_string(), "pw".to_string())));
    let t0 = api.now_ms;
    let before = etcd.paths.len();
    assert_eq!(poll(&mut tenants, &mut etcd, t0), None);
    assert!(tenants.token().is_some());
    assert_eq!(
        etcd.paths.get(before).map(String::as_str),
        Some("/v3/auth/authenticate")
    );
    // etcd forgets the token: the next round authenticates at once and reads.
    etcd.token = Some("rotated".to_string());
    let (path, body) = tenants.next(t0 + 1_000).unwrap();
    let answer = etcd.answer(
        path,
        &[("authorization".to_string(), "stale".to_string())],
        &body,
    );
    assert!(tenants
        .finished(answer_body(answer.status, &answer.body), t0 + 1_000)
        .is_err());
    assert!(tenants.token().is_none());
    assert_eq!(poll(&mut tenants, &mut etcd, t0 + 1_000), None);
    assert!(tenants.token().is_some());
}
