//! The API's requests against an in-memory etcd: tenants see and change only
//! their own webhooks, bounds hold also when two Envoys write at once, a
//! refused request writes nothing, and a write whose answer was lost is
//! neither lost nor made twice.

use envoy_webhooks::config::ApiConfig;
use envoy_webhooks::testing::caller::{Caller, Role};
use envoy_webhooks::testing::etcd::answer_body;
use envoy_webhooks::testing::exchange::{Answer, Context, Exchange, Keys, Operation, Step};
use envoy_webhooks::testing::resource::{definition_of, StoredWebhook};
use serde_json::{json, Value};

use crate::fake_etcd::FakeEtcd;

const A: &str = "9c2f2e2a-6b7d-11ee-8c99-0242ac120002";
const B: &str = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";
const NOW_MS: u64 = 1_765_000_000_000;

struct Api {
    config: ApiConfig,
    keys: Keys,
    counter: u8,
    /// Ids of the webhooks the API enabled.
    enabled: std::cell::RefCell<Vec<String>>,
}

fn api(settings: Value) -> Api {
    let config = ApiConfig::from_value(&settings).unwrap_or_else(|e| panic!("{e}"));
    Api {
        config,
        keys: Keys::new("/envoy-webhooks/"),
        counter: 0,
        enabled: std::cell::RefCell::default(),
    }
}

fn default_api() -> Api {
    api(json!({"tokens": {}}))
}

fn caller(domain: &str) -> Caller {
    Caller::new(domain, &[Role::Read, Role::Write, Role::Delete])
}

impl Api {
    /// Runs one request to its end; etcd answers every step at once.
    fn run(
        &mut self,
        etcd: &mut FakeEtcd,
        operation: Operation,
        who: &Caller,
        body: Value,
    ) -> Answer {
        let body = if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        let (mut exchange, mut step) =
            self.with_context(|context| Exchange::start(operation, who.clone(), body, context));
        loop {
            match step {
                Step::Done(answer) => return answer,
                Step::Etcd { path, body } => {
                    let answer = etcd.answer(path, &[], &body);
                    step = self.with_context(|context| {
                        exchange.next(answer_body(answer.status, &answer.body), context)
                    });
                }
            }
        }
    }

    fn with_context<T>(&mut self, f: impl FnOnce(&mut Context<'_>) -> T) -> T {
        let counter = &mut self.counter;
        let mut random = |buffer: &mut [u8]| {
            for byte in buffer.iter_mut() {
                *counter = counter.wrapping_add(37);
                *byte = *counter;
            }
            true
        };
        let check_url = |url: &str| self.config.urls.check(url).map(|_| ());
        let health = |_: &envoy_webhooks::config::WebhookDefinition| None;
        let enabled = &self.enabled;
        let enable = |definition: &envoy_webhooks::config::WebhookDefinition| {
            enabled.borrow_mut().push(definition.id.clone());
        };
        let mut context = Context {
            config: &self.config,
            keys: &self.keys,
            now_ms: NOW_MS,
            random: &mut random,
            health: &health,
            check_url: &check_url,
            enable: &enable,
        };
        f(&mut context)
    }
}

fn webhook_body(n: usize) -> Value {
    json!({"name": format!("hook {n}"), "event_type": "assets", "status": "ENABLED",
           "url": format!("https://hooks.example.com/{n}")})
}

fn created(api: &mut Api, etcd: &mut FakeEtcd, domain: &str, n: usize) -> Value {
    let answer = api.run(etcd, Operation::Create, &caller(domain), webhook_body(n));
    assert_eq!(answer.status, 201, "{answer:?}");
    answer.body.unwrap()
}

fn id_of(body: &Value) -> String {
    body["id"].as_str().unwrap().to_string()
}

fn stored(etcd: &FakeEtcd) -> Vec<StoredWebhook> {
    etcd.kv
        .iter()
        .filter(|(key, _)| key.starts_with(b"/envoy-webhooks/api/webhooks/"))
        .map(|(_, (value, _))| serde_json::from_slice(value).unwrap())
        .collect()
}

#[test]
fn a_tenant_creates_reads_lists_changes_and_deletes_its_webhooks() {
    let mut api = default_api();
    let mut etcd = FakeEtcd::default();
    let made = created(&mut api, &mut etcd, A, 1);
    let id = id_of(&made);
    assert!(uuid_like(&id), "{id}");
    assert!(made["secret"].as_str().unwrap().starts_with("whsec_"));
    assert_eq!(made["status"], "ENABLED");
    assert_eq!(made["date_created"], "2025-12-06T05:46:40.000Z");

    let read = api.run(
        &mut etcd,
        Operation::Get(id.clone()),
        &caller(A),
        Value::Null,
    );
    assert_eq!(read.status, 200);
    let read = read.body.unwrap();
    assert_eq!(read["name"], "hook 1");
    assert!(
        read.get("secret").is_none(),
        "the secret is shown once: {read}"
    );

    let listed = api.run(&mut etcd, Operation::List, &caller(A), Value::Null);
    assert_eq!(listed.status, 200);
    assert_eq!(listed.body.unwrap()["objects"], json!([read]));

    let changed = api.run(
        &mut etcd,
        Operation::Change(id.clone()),
        &caller(A),
        json!({"name": "renamed", "status": "DISABLED"}),
    );
    assert!(api.enabled.borrow().is_empty());
    assert_eq!(changed.status, 200, "{changed:?}");
    assert_eq!(changed.body.as_ref().unwrap()["name"], "renamed");
    assert_eq!(changed.body.unwrap()["status"], "DISABLED");
    assert_eq!(
        stored(&etcd)[0].secrets.len(),
        1,
        "a change keeps the secret"
    );

    let deleted = api.run(
        &mut etcd,
        Operation::Delete(id.clone()),
        &caller(A),
        Value::Null,
    );
    assert_eq!(
        deleted,
        Answer {
            status: 204,
            body: None
        }
    );
    assert!(stored(&etcd).is_empty());
    let tombstone = format!("/envoy-webhooks/api/deleted/{A}/{id}");
    assert!(
        etcd.kv.contains_key(tombstone.as_bytes()),
        "every Envoy sees the deletion"
    );
    assert_eq!(
        api.run(&mut etcd, Operation::Get(id), &caller(A), Value::Null)
            .status,
        404
    );
}

fn uuid_like(text: &str) -> bool {
    text.len() == 36 && text.chars().filter(|c| *c == '-').count() == 4
}

#[test]
fn another_tenants_webhooks_are_not_there_for_it() {
    let mut api = default_api();
    let mut etcd = FakeEtcd::default();
    let id = id_of(&created(&mut api, &mut etcd, A, 1));
    let before = etcd.kv.clone();
    let b = caller(B);
    assert_eq!(
        api.run(&mut etcd, Operation::List, &b, Value::Null)
            .body
            .unwrap(),
        json!({"objects": []})
    );
    for operation in [
        Operation::Get(id.clone()),
        Operation::Change(id.clone()),
        Operation::Delete(id.clone()),
        Operation::Secret(id.clone()),
        Operation::Rotate(id.clone()),
    ] {
        let answer = api.run(
            &mut etcd,
            operation.clone(),
            &b,
            json!({"name": "mine now"}),
        );
        assert_eq!(answer.status, 404, "{operation:?}: {answer:?}");
        assert_eq!(
            answer.body.unwrap(),
            json!({"errors": {"id": "no such webhook"}})
        );
    }
    assert_eq!(etcd.kv, before, "nothing changed");
}

#[test]
fn roles_are_checked_before_anything_is_read() {
    let mut api = default_api();
    let mut etcd = FakeEtcd::default();
    let id = id_of(&created(&mut api, &mut etcd, A, 1));
    let reader = Caller::new(A, &[Role::Read]);
    let requests = etcd.requests;
    for (operation, role) in [
        (Operation::Create, "can_write_webhooks"),
        (Operation::Change(id.clone()), "can_write_webhooks"),
        (Operation::Secret(id.clone()), "can_write_webhooks"),
        (Operation::Rotate(id.clone()), "can_write_webhooks"),
        (Operation::Delete(id.clone()), "can_delete_webhooks"),
    ] {
        let answer = api.run(&mut etcd, operation, &reader, webhook_body(2));
        assert_eq!(answer.status, 403);
        assert!(answer.body.unwrap()["errors"]["authorization"]
            .as_str()
            .unwrap()
            .contains(role));
    }
    assert_eq!(etcd.requests, requests, "no request reached etcd");
    assert_eq!(
        api.run(&mut etcd, Operation::Get(id), &reader, Value::Null)
            .status,
        200
    );
    // Ids that are not UUIDs name nothing, and never reach a key.
    for id in [
        "../x",
        "abc",
        "",
        "9c2f2e2a-6b7d-11ee-8c99-0242ac120002/../x",
    ] {
        let answer = api.run(
            &mut etcd,
            Operation::Get(id.to_string()),
            &caller(A),
            Value::Null,
        );
        assert_eq!(answer.status, 404, "{id}");
    }
    assert_eq!(etcd.requests, requests + 1);
}

#[test]
fn bad_input_is_refused_with_every_problem_and_writes_nothing() {
    let mut api = default_api();
    let mut etcd = FakeEtcd::default();
    let answer = api.run(
        &mut etcd,
        Operation::Create,
        &caller(A),
        json!({"event_type": "assets", "url": "https://127.0.0.1/x", "query": "data.a ==", "status": "ENABLED"}),
    );
    assert_eq!(answer.status, 400);
    let errors = answer.body.unwrap()["errors"].clone();
    assert!(
        errors.get("url").is_some() && errors.get("query").is_some(),
        "{errors}"
    );
    assert!(etcd.puts.is_empty());
    let id = id_of(&created(&mut api, &mut etcd, A, 1));
    let puts = etcd.puts.len();
    let refused = api.run(
        &mut etcd,
        Operation::Change(id),
        &caller(A),
        json!({"name": "fine", "url": "http://hooks.example.com/"}),
    );
    assert_eq!(refused.status, 400);
    assert_eq!(etcd.puts.len(), puts, "a refused change writes nothing");
    assert_eq!(stored(&etcd)[0].name.as_deref(), Some("hook 1"));
}

#[test]
fn bounds_per_domain_and_in_all_hold() {
    let mut api = api(json!({"tokens": {}, "max_webhooks_per_domain": 2, "max_webhooks": 3}));
    let mut etcd = FakeEtcd::default();
    created(&mut api, &mut etcd, A, 1);
    created(&mut api, &mut etcd, A, 2);
    let third = api.run(&mut etcd, Operation::Create, &caller(A), webhook_body(3));
    assert_eq!(third.status, 400);
    assert!(third.body.unwrap()["errors"]["webhooks"]
        .as_str()
        .unwrap()
        .contains("has 2 webhooks"));
    created(&mut api, &mut etcd, B, 1);
    let fourth = api.run(&mut etcd, Operation::Create, &caller(B), webhook_body(2));
    assert_eq!(fourth.status, 400);
    assert_eq!(stored(&etcd).len(), 3);
}

/// Two Envoys take the same request at once: both read, then both write.
fn race(
    api: &mut Api,
    etcd: &mut FakeEtcd,
    first: (Operation, Value),
    second: (Operation, Value),
) -> (Answer, Answer) {
    let mut start = |(operation, body): (Operation, Value)| {
        api.with_context(|context| {
            Exchange::start(operation, caller(A), body.to_string().into_bytes(), context)
        })
    };
    let (mut one, step_one) = start(first);
    let (mut two, step_two) = start(second);
    let answer =
        |exchange: &mut Exchange, step: Step, etcd: &mut FakeEtcd, api: &mut Api| match step {
            Step::Etcd { path, body } => {
                let answer = etcd.answer(path, &[], &body);
                api.with_context(|context| {
                    exchange.next(answer_body(answer.status, &answer.body), context)
                })
            }
            done => done,
        };
    // Both read before either writes.
    let mut step_one = answer(&mut one, step_one, etcd, api);
    let mut step_two = answer(&mut two, step_two, etcd, api);
    let finish = |exchange: &mut Exchange, mut step: Step, etcd: &mut FakeEtcd, api: &mut Api| loop {
        match step {
            Step::Done(answer) => return answer,
            other => step = answer(exchange, other, etcd, api),
        }
    };
    let a = finish(
        &mut one,
        std::mem::replace(&mut step_one, Step::Done(Answer::error(0, "", ""))),
        etcd,
        api,
    );
    let b = finish(
        &mut two,
        std::mem::replace(&mut step_two, Step::Done(Answer::error(0, "", ""))),
        etcd,
        api,
    );
    (a, b)
}

#[test]
fn two_creates_at_once_never_pass_the_bound() {
    let mut api = api(json!({"tokens": {}, "max_webhooks_per_domain": 1}));
    let mut etcd = FakeEtcd::default();
    let (a, b) = race(
        &mut api,
        &mut etcd,
        (Operation::Create, webhook_body(1)),
        (Operation::Create, webhook_body(2)),
    );
    assert_eq!((a.status, b.status), (201, 400), "{b:?}");
    assert_eq!(stored(&etcd).len(), 1);
    // Without the bound, both are made.
    let mut api = default_api();
    let mut etcd = FakeEtcd::default();
    let (a, b) = race(
        &mut api,
        &mut etcd,
        (Operation::Create, webhook_body(1)),
        (Operation::Create, webhook_body(2)),
    );
    assert_eq!((a.status, b.status), (201, 201));
    assert_eq!(stored(&etcd).len(), 2);
}

#[test]
fn two_changes_at_once_both_count() {
    let mut api = default_api();
    let mut etcd = FakeEtcd::default();
    let id = id_of(&created(&mut api, &mut etcd, A, 1));
    let (a, b) = race(
        &mut api,
        &mut etcd,
        (Operation::Change(id.clone()), json!({"name": "from one"})),
        (
            Operation::Change(id.clone()),
            json!({"description": "from two"}),
        ),
    );
    assert_eq!((a.status, b.status), (200, 200));
    let now = &stored(&etcd)[0];
    assert_eq!(now.name.as_deref(), Some("from one"));
    assert_eq!(now.description.as_deref(), Some("from two"));
}

#[test]
fn a_write_whose_answer_was_lost_is_found_and_made_once() {
    let mut api = default_api();
    let mut etcd = FakeEtcd {
        lose_write_answers: 1,
        ..FakeEtcd::default()
    };
    let made = created(&mut api, &mut etcd, A, 1);
    assert_eq!(stored(&etcd).len(), 1);
    assert_eq!(stored(&etcd)[0].id, id_of(&made));
    etcd.lose_write_answers = 1;
    let id = id_of(&made);
    let deleted = api.run(&mut etcd, Operation::Delete(id), &caller(A), Value::Null);
    assert_eq!(deleted.status, 204);
    assert!(stored(&etcd).is_empty());
}

#[test]
fn etcd_down_answers_503_and_changes_nothing() {
    let mut api = default_api();
    let mut etcd = FakeEtcd::default();
    let id = id_of(&created(&mut api, &mut etcd, A, 1));
    etcd.down = true;
    for operation in [
        Operation::List,
        Operation::Create,
        Operation::Get(id.clone()),
        Operation::Delete(id),
    ] {
        let answer = api.run(&mut etcd, operation, &caller(A), webhook_body(2));
        assert_eq!(answer.status, 503);
        assert!(answer.body.unwrap()["errors"]["service"]
            .as_str()
            .unwrap()
            .contains("cannot be reached"));
    }
    // Down after applying the write: the change may or may not be made, and the answer says so.
    etcd.down = false;
    etcd.down_after_next_write = true;
    let answer = api.run(&mut etcd, Operation::Create, &caller(A), webhook_body(3));
    assert_eq!(answer.status, 503);
    assert!(answer.body.unwrap()["errors"]["service"]
        .as_str()
        .unwrap()
        .contains("may or may not"));
}

#[test]
fn a_rotated_secret_signs_beside_the_new_one_for_a_day() {
    let mut api = default_api();
    let mut etcd = FakeEtcd::default();
    let made = created(&mut api, &mut etcd, A, 1);
    let id = id_of(&made);
    let rotated = api.run(
        &mut etcd,
        Operation::Rotate(id.clone()),
        &caller(A),
        Value::Null,
    );
    assert_eq!(rotated.status, 200);
    let rotated = rotated.body.unwrap();
    assert_ne!(rotated["secret"], made["secret"]);
    assert_eq!(
        rotated["previous"],
        json!([{"expires_at": "2025-12-07T05:46:40.000Z"}])
    );
    let shown = api.run(&mut etcd, Operation::Secret(id), &caller(A), Value::Null);
    assert_eq!(shown.body.unwrap()["secret"], rotated["secret"]);
    let webhook = &stored(&etcd)[0];
    let signers = |now_ms| match definition_of(webhook, now_ms).unwrap().signing {
        Some(envoy_webhooks::config::SecretSource::Secrets(list)) => list.len(),
        other => panic!("{other:?}"),
    };
    assert_eq!(signers(NOW_MS + 1), 2);
    assert_eq!(signers(NOW_MS + 24 * 3600 * 1000), 1);
}
