//! One API request, from its route to its answer: the etcd reads and
//! conditional writes it takes, as steps the host carries out one at a time.
//!
//! Every write is an etcd transaction that applies only if what it was
//! decided from still holds, so two Envoys writing at once lose nothing: the
//! one that loses reads again and decides again. A write whose answer is
//! lost is checked by reading the key before anything is said.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::{json, Value};

use super::resource::{self, FieldErrors, Fresh, StoredSecret, StoredWebhook, Target};
use crate::cluster::etcd::{
    self, Condition, EtcdError, KeyValue, RangeRead, Read, Write, TXN_PATH,
};
use crate::config::{ApiConfig, Caller, Role, WebhookDefinition};
use crate::webhook::health::WebhookHealth;

/// How long a rotated-out secret still signs: receivers switch meanwhile.
pub const ROTATION_OVERLAP_MS: u64 = 24 * 3600 * 1000;

/// Reads and decisions made again after losing a race, before giving up.
const MAX_ROUNDS: u8 = 5;

/// What the API asks for (the path's meaning; see `super::route`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    List,
    Create,
    Get(String),
    Change(String),
    Delete(String),
    /// `GET .../{id}/secret/`
    Secret(String),
    /// `POST .../{id}/secret/rotate/`
    Rotate(String),
}

impl Operation {
    /// The role it needs. Reading a secret lets one sign as the platform:
    /// it needs the write role.
    fn role(&self) -> Role {
        match self {
            Operation::List | Operation::Get(_) => Role::Read,
            Operation::Create
            | Operation::Change(_)
            | Operation::Secret(_)
            | Operation::Rotate(_) => Role::Write,
            Operation::Delete(_) => Role::Delete,
        }
    }

    fn id(&self) -> Option<&str> {
        match self {
            Operation::List | Operation::Create => None,
            Operation::Get(id)
            | Operation::Change(id)
            | Operation::Delete(id)
            | Operation::Secret(id)
            | Operation::Rotate(id) => Some(id),
        }
    }
}

/// An answer: status and JSON body (`None`: no body, as for 204).
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub body: Option<Value>,
}

impl Answer {
    fn json(status: u16, body: Value) -> Answer {
        Answer {
            status,
            body: Some(body),
        }
    }

    /// iconik's error body with one message under `field`.
    pub fn error(status: u16, field: &str, message: impl Into<String>) -> Answer {
        let mut errors = FieldErrors::default();
        errors.add(field, message);
        Answer::json(status, errors.body())
    }
}

/// What the host does next.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Call etcd (`cluster_state.etcd`) at `path` with `body`, then `Exchange::next`.
    Etcd {
        path: &'static str,
        body: Vec<u8>,
    },
    Done(Answer),
}

/// Where tenants' webhooks are kept: `{prefix}api/webhooks/{domain}/{id}`,
/// and a tombstone `{prefix}api/deleted/{domain}/{id}` for each one deleted,
/// so that every Envoy sees the deletion among the keys written since it
/// last looked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    live: String,
    deleted: String,
}

impl Keys {
    /// `prefix` is `cluster_state.etcd.prefix` (ends with `/`).
    pub fn new(prefix: &str) -> Keys {
        Keys {
            live: format!("{prefix}api/webhooks/"),
            deleted: format!("{prefix}api/deleted/"),
        }
    }

    /// Every tenant's webhooks.
    pub fn all(&self) -> &str {
        &self.live
    }

    /// Every tombstone.
    pub fn all_deleted(&self) -> &str {
        &self.deleted
    }

    pub fn domain(&self, domain: &str) -> String {
        format!("{}{domain}/", self.live)
    }

    pub fn webhook(&self, domain: &str, id: &str) -> String {
        format!("{}{domain}/{id}", self.live)
    }

    pub fn tombstone(&self, domain: &str, id: &str) -> String {
        format!("{}{domain}/{id}", self.deleted)
    }
}

/// What the host gives each step.
pub struct Context<'a> {
    pub config: &'a ApiConfig,
    pub keys: &'a Keys,
    pub now_ms: u64,
    /// Fills the buffer with unpredictable bytes (WASI `random_get`); `false` if it cannot.
    pub random: &'a mut dyn FnMut(&mut [u8]) -> bool,
    /// The webhook's health record, as every worker shares it.
    pub health: &'a dyn Fn(&WebhookDefinition) -> Option<WebhookHealth>,
    /// The tenant URL policy (`api.urls`).
    pub check_url: &'a dyn Fn(&str) -> Result<(), String>,
    /// Enables the webhook's health record (a FAILED one is called again),
    /// on this Envoy and, through the cluster state, on every other.
    pub enable: &'a dyn Fn(&WebhookDefinition),
}

/// What to answer once a write applied: rendered then, so that it shows
/// the webhook's health as it is after the write.
#[derive(Debug, Clone, PartialEq)]
enum Then {
    /// The webhook (`secret`: shown once, on creation); `enable`: the
    /// request asked for ENABLED, which also clears a FAILED health record.
    Show {
        status: u16,
        webhook: Box<StoredWebhook>,
        secret: Option<String>,
        enable: bool,
    },
    Secret(Box<StoredWebhook>),
    Deleted,
}

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    /// Waiting for the read the operation decides from.
    Reading,
    /// Waiting for a conditional write: `written` is the key and the value
    /// put (`None`: deleted), `then` what to do once it applied.
    Writing {
        key: String,
        written: Option<Vec<u8>>,
        then: Then,
    },
    /// The write's answer was lost: reading the key to see whether it applied.
    Verifying {
        key: String,
        written: Option<Vec<u8>>,
        then: Then,
    },
}

/// One API request in progress.
#[derive(Debug, Clone)]
pub struct Exchange {
    operation: Operation,
    caller: Caller,
    body: Vec<u8>,
    phase: Phase,
    rounds: u8,
}

impl Exchange {
    /// Starts `operation` for `caller` with the request's `body` (empty if none).
    pub fn start(
        operation: Operation,
        caller: Caller,
        body: Vec<u8>,
        context: &mut Context<'_>,
    ) -> (Exchange, Step) {
        let mut exchange = Exchange {
            operation,
            caller,
            body,
            phase: Phase::Reading,
            rounds: 0,
        };
        let step = exchange.first(context);
        (exchange, step)
    }

    fn first(&mut self, context: &mut Context<'_>) -> Step {
        let role = self.operation.role();
        if !self.caller.may(role) {
            return Step::Done(Answer::error(
                403,
                "authorization",
                format!("this needs the role {}", role.name()),
            ));
        }
        if let Some(id) = self.operation.id() {
            // Ids are UUIDs the server made: anything else names nothing
            // (and never reaches a key).
            if uuid::Uuid::try_parse(id).is_err() {
                return Step::Done(not_found());
            }
        }
        self.read(context)
    }

    /// The read the operation decides from.
    fn read(&mut self, context: &mut Context<'_>) -> Step {
        self.phase = Phase::Reading;
        self.rounds = self.rounds.saturating_add(1);
        if self.rounds > MAX_ROUNDS {
            return Step::Done(Answer::error(
                503,
                "service",
                "other changes kept winning the race to the webhook store; try again",
            ));
        }
        let domain = &self.caller.system_domain_id;
        let body = match self.operation.id() {
            Some(id) => etcd::txn_reads(&[Read::Key(context.keys.webhook(domain, id).as_bytes())]),
            None if self.operation == Operation::List => etcd::txn_reads(&[Read::Prefix {
                prefix: context.keys.domain(domain).as_bytes(),
                limit: context.config.max_webhooks_per_domain,
                since: 0,
            }]),
            None => etcd::txn_reads(&[
                Read::Count(context.keys.domain(domain).as_bytes()),
                Read::Count(context.keys.all().as_bytes()),
            ]),
        };
        Step::Etcd {
            path: TXN_PATH,
            body,
        }
    }

    /// Goes on with etcd's answer to the last step (`Err`: none, or an error).
    pub fn next(&mut self, answer: Result<&[u8], EtcdError>, context: &mut Context<'_>) -> Step {
        match std::mem::replace(&mut self.phase, Phase::Reading) {
            Phase::Reading => match answer.and_then(|body| {
                let expected = if self.operation == Operation::Create { 2 } else { 1 };
                etcd::parse_reads(body, expected)
            }) {
                Ok((revision, reads)) => self.decide(revision, reads, context),
                Err(e) => Step::Done(unavailable(&e)),
            },
            Phase::Writing { key, written, then } => match answer.and_then(etcd::parse_txn_applied) {
                Ok(true) => Step::Done(finish(then, context)),
                // Lost a race: decide again from what is there now.
                Ok(false) => self.read(context),
                Err(EtcdError::NoAnswer) => {
                    let body = etcd::txn_reads(&[Read::Key(key.as_bytes())]);
                    self.phase = Phase::Verifying { key, written, then };
                    Step::Etcd {
                        path: TXN_PATH,
                        body,
                    }
                }
                Err(e) => Step::Done(unavailable(&e)),
            },
            Phase::Verifying {
                key: _,
                written,
                then,
            } => match answer.and_then(|body| etcd::parse_reads(body, 1)) {
                Ok((_, reads)) => {
                    let now = reads.first().and_then(|read| read.kvs.first());
                    let applied = match (&written, now) {
                        (None, None) => true,
                        (Some(value), Some(kv)) => kv.value == *value,
                        _ => false,
                    };
                    if applied {
                        Step::Done(finish(then, context))
                    } else {
                        // Not applied (or overwritten since, which only a
                        // later request can have done): decide again.
                        self.read(context)
                    }
                }
                Err(_) => Step::Done(Answer::error(
                    503,
                    "service",
                    "the webhook store (etcd) stopped answering during the change: it may or may not have been made; read the webhook before trying again",
                )),
            },
        }
    }

    fn decide(&mut self, revision: i64, reads: Vec<RangeRead>, context: &mut Context<'_>) -> Step {
        let domain = self.caller.system_domain_id.clone();
        let mut reads = reads.into_iter();
        let first = reads.next().unwrap_or_default();
        if self.operation == Operation::List {
            let mut webhooks: Vec<StoredWebhook> = first
                .kvs
                .iter()
                .filter_map(|kv| decode(kv, &domain))
                .collect();
            webhooks.sort_by(|a, b| (a.date_created_ms, &a.id).cmp(&(b.date_created_ms, &b.id)));
            let objects: Vec<Value> = webhooks
                .iter()
                .map(|webhook| render(webhook, context))
                .collect();
            return Step::Done(Answer::json(200, json!({ "objects": objects })));
        }
        if self.operation == Operation::Create {
            let in_domain = first.count;
            let in_all = reads.next().unwrap_or_default().count;
            return self.create(revision, in_domain, in_all, context);
        }
        let Some(kv) = first.kvs.first() else {
            return Step::Done(not_found());
        };
        let Some(current) = decode(kv, &domain) else {
            return Step::Done(Answer::error(
                500,
                "service",
                "the stored webhook does not decode; an operator must repair or delete its key in etcd",
            ));
        };
        let key = context.keys.webhook(&domain, &current.id);
        match self.operation.clone() {
            Operation::Get(_) => Step::Done(Answer::json(200, render(&current, context))),
            Operation::Secret(_) => Step::Done(Answer::json(200, secret_body(&current))),
            Operation::Change(_) => {
                let changed = resource::apply(
                    &self.body,
                    Target::Change {
                        current: &current,
                        now_ms: context.now_ms,
                    },
                    context.check_url,
                );
                match changed {
                    Err(errors) => Step::Done(Answer::json(400, errors.body())),
                    Ok((webhook, _)) => {
                        let then = Then::Show {
                            status: 200,
                            secret: None,
                            enable: asks_enabled(&self.body),
                            webhook: Box::new(webhook.clone()),
                        };
                        self.put(key, kv.mod_revision, &webhook, then)
                    }
                }
            }
            Operation::Rotate(_) => {
                let Some(secret) = new_secret(context) else {
                    return Step::Done(no_randomness());
                };
                let mut webhook = current;
                webhook
                    .secrets
                    .retain(|s| s.expires_at_ms.is_none_or(|at| at > context.now_ms));
                for old in webhook
                    .secrets
                    .iter_mut()
                    .filter(|s| s.expires_at_ms.is_none())
                {
                    old.expires_at_ms = Some(context.now_ms.saturating_add(ROTATION_OVERLAP_MS));
                }
                webhook.secrets.push(StoredSecret {
                    secret,
                    expires_at_ms: None,
                });
                webhook.date_modified_ms = context.now_ms;
                let then = Then::Secret(Box::new(webhook.clone()));
                self.put(key, kv.mod_revision, &webhook, then)
            }
            Operation::Delete(_) => {
                let tombstone = context.keys.tombstone(&domain, &current.id);
                let mark = json!({"deleted_at_ms": context.now_ms}).to_string();
                let body = etcd::txn_if(
                    &[Condition::Unchanged(key.as_bytes(), kv.mod_revision)],
                    &[
                        Write::Delete(key.as_bytes()),
                        Write::Put(tombstone.as_bytes(), mark.as_bytes()),
                    ],
                );
                self.phase = Phase::Writing {
                    key,
                    written: None,
                    then: Then::Deleted,
                };
                Step::Etcd {
                    path: TXN_PATH,
                    body,
                }
            }
            Operation::List | Operation::Create => Step::Done(not_found()),
        }
    }

    fn create(
        &mut self,
        revision: i64,
        in_domain: u64,
        in_all: u64,
        context: &mut Context<'_>,
    ) -> Step {
        let limit = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        if in_domain >= limit(context.config.max_webhooks_per_domain) {
            return Step::Done(Answer::error(
                400,
                "webhooks",
                format!(
                    "your domain has {in_domain} webhooks, the most it may have; delete one first"
                ),
            ));
        }
        if in_all >= limit(context.config.max_webhooks) {
            return Step::Done(Answer::error(
                400,
                "webhooks",
                "this platform holds as many webhooks as it may; ask its operator",
            ));
        }
        let mut id_bytes = [0u8; 16];
        let Some(secret) = new_secret(context) else {
            return Step::Done(no_randomness());
        };
        if !(context.random)(&mut id_bytes) {
            return Step::Done(no_randomness());
        }
        let fresh = Fresh {
            id: uuid::Builder::from_random_bytes(id_bytes)
                .into_uuid()
                .hyphenated()
                .to_string(),
            secret,
            now_ms: context.now_ms,
        };
        let made = resource::apply(
            &self.body,
            Target::Create {
                system_domain_id: &self.caller.system_domain_id,
                fresh: &fresh,
            },
            context.check_url,
        );
        let webhook = match made {
            Err(errors) => return Step::Done(Answer::json(400, errors.body())),
            Ok((webhook, _)) => webhook,
        };
        let key = context.keys.webhook(&webhook.system_domain_id, &webhook.id);
        let value = serde_json::to_vec(&webhook).unwrap_or_default();
        let body = etcd::txn_if(
            &[
                // Nobody added a webhook since the counts were read.
                Condition::PrefixUnchangedSince(context.keys.all().as_bytes(), revision),
                Condition::Absent(key.as_bytes()),
            ],
            &[Write::Put(key.as_bytes(), &value)],
        );
        self.phase = Phase::Writing {
            key,
            written: Some(value),
            then: Then::Show {
                status: 201,
                // The create answer is the one place the secret is shown
                // unasked (iconik's clients keep fields they do not know).
                secret: Some(fresh.secret),
                enable: false,
                webhook: Box::new(webhook),
            },
        };
        Step::Etcd {
            path: TXN_PATH,
            body,
        }
    }

    fn put(&mut self, key: String, revision: i64, webhook: &StoredWebhook, then: Then) -> Step {
        let value = serde_json::to_vec(webhook).unwrap_or_default();
        let body = etcd::txn_if(
            &[Condition::Unchanged(key.as_bytes(), revision)],
            &[Write::Put(key.as_bytes(), &value)],
        );
        self.phase = Phase::Writing {
            key,
            written: Some(value),
            then,
        };
        Step::Etcd {
            path: TXN_PATH,
            body,
        }
    }
}

/// A stored webhook of `domain`; `None` if it does not decode or is
/// another domain's (which its key rules out; checked all the same).
pub fn decode(kv: &KeyValue, domain: &str) -> Option<StoredWebhook> {
    serde_json::from_slice::<StoredWebhook>(&kv.value)
        .ok()
        .filter(|webhook| webhook.system_domain_id == domain)
}

/// The answer once a write applied.
fn finish(then: Then, context: &Context<'_>) -> Answer {
    match then {
        Then::Show {
            status,
            webhook,
            secret,
            enable,
        } => {
            if enable {
                if let Ok(definition) = resource::definition_of(&webhook, context.now_ms) {
                    (context.enable)(&definition);
                }
            }
            let mut shown = render(&webhook, context);
            if let Some(secret) = secret {
                shown["secret"] = Value::from(secret);
            }
            Answer::json(status, shown)
        }
        Then::Secret(webhook) => Answer::json(200, secret_body(&webhook)),
        Then::Deleted => Answer {
            status: 204,
            body: None,
        },
    }
}

/// Whether a change's body asks for `status: ENABLED`: a FAILED webhook is
/// enabled again (as the admin API's `enable` does).
fn asks_enabled(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|body| {
            body.get("status")?
                .as_str()
                .map(|s| s.eq_ignore_ascii_case("ENABLED"))
        })
        .unwrap_or(false)
}

fn render(webhook: &StoredWebhook, context: &Context<'_>) -> Value {
    let health = resource::definition_of(webhook, context.now_ms)
        .ok()
        .and_then(|definition| (context.health)(&definition));
    resource::render(webhook, health.as_ref())
}

fn secret_body(webhook: &StoredWebhook) -> Value {
    let current = webhook
        .secrets
        .iter()
        .rev()
        .find(|s| s.expires_at_ms.is_none())
        .map(|s| s.secret.as_str());
    let previous: Vec<Value> = webhook
        .secrets
        .iter()
        .filter_map(|s| {
            s.expires_at_ms
                .map(|at| json!({"expires_at": resource::rfc3339_ms(at)}))
        })
        .collect();
    json!({"secret": current, "previous": previous})
}

/// A new Standard Webhooks secret: `whsec_` and 32 unpredictable bytes.
fn new_secret(context: &mut Context<'_>) -> Option<String> {
    let mut key = [0u8; 32];
    (context.random)(&mut key).then(|| format!("whsec_{}", BASE64.encode(key)))
}

fn not_found() -> Answer {
    Answer::error(404, "id", "no such webhook")
}

fn no_randomness() -> Answer {
    Answer::error(
        503,
        "service",
        "the host gave no random bytes for the webhook's id and secret; try again",
    )
}

fn unavailable(error: &EtcdError) -> Answer {
    Answer::error(
        503,
        "service",
        format!("the webhook store (etcd) cannot be reached: {error}; try again"),
    )
}
