//! What the crate's tests, fuzz targets and benches use of its private
//! modules, and a fake host for the delivery engine: a clock they set, calls
//! they answer, counters and shared data they read. Not used by the filter
//! itself, and not part of the crate's API.
//!
//! One submodule per private module, named after it, re-exporting only the
//! items used outside the crate: a test reaches `delivery::engine::Engine`
//! as `testing::engine::Engine`.

pub mod admin {
    pub use crate::admin::{
        answer, error_body, pending_body, route, status_entry, AdminRequest, AdminRoute,
    };
}

pub mod serve {
    pub use crate::serve::{normalize_path, route, serves_path, Entrance, Served};
}

pub mod caller {
    pub use crate::config::{Caller, IdentityHeaders, Role, Tokens};
    pub use crate::serve::caller::{identify, Credentials, Identity, Refusal};
}

pub mod url_policy {
    pub use crate::config::{AllowEntry, UrlPolicy};
}

pub mod api {
    pub use crate::api::tenants::{Outcome, Tenants, TOMBSTONE_RETENTION_MS};
    pub use crate::api::{check_url, route, ApiRoute};
}

pub mod exchange {
    pub use crate::api::exchange::{Answer, Context, Exchange, Keys, Operation, Step};
}

pub mod resource {
    pub use crate::api::resource::{
        apply, definition_of, render, rfc3339_ms, FieldErrors, Fresh, Requested, StoredSecret,
        StoredWebhook, Target,
    };
}

pub mod body_wait {
    pub use crate::body_wait::{Api, Waiting, CHECK_MS, STALLED_ANSWER, STALLED_MS};
}

pub mod cluster {
    pub use crate::cluster::{ClusterSync, EtcdAnswer};
}

pub mod etcd {
    pub use crate::cluster::etcd::{
        answer_body, authenticate_request, parse_authenticate, parse_error, parse_range,
        parse_take, parse_txn, parse_txn_ranges, range_prefix_request, txn_put_if_revision,
        txn_read_keys_page, txn_read_values, txn_remove_if_unchanged, txn_take_if_revision,
        EtcdError, Receipt, Taken, TxnOutcome,
    };
}

pub mod call {
    pub use crate::delivery::call::{needs_body, request_headers, Answer, CallOutcome, USER_AGENT};
}

pub mod dead_letter {
    pub use crate::delivery::dead_letter::{record, FailedDelivery, Reason};
}

pub mod engine {
    pub use crate::delivery::engine::{Engine, MAX_TURN_BYTES};
}

pub mod attempts {
    pub use crate::delivery::attempts::{Attempt, AttemptLog};
}

pub mod host {
    pub use crate::host::{
        Call, Counter, DispatchError, Host, SharedData, StoreError, WebhookCounter,
    };
}

pub mod message {
    pub use crate::delivery::message::{QueuedEvent, QueuedTarget, MAX_PROPAGATED_BYTES};
}

pub mod queue {
    pub use crate::delivery::queue::{Delivery, RetryQueue, Target, WebhookRef};
    pub use crate::webhook::store::PendingSummary;
}

pub mod retry {
    pub use crate::delivery::retry::{
        after_failure, jittered_ms, parse_retry_after, AttemptOutcome, RetryDecision,
        DEFAULT_SCHEDULE_S,
    };
}

pub mod intake {
    pub use crate::intake::{
        carries_events, path_first, propagated_headers, watches_method, watches_path, Intake,
        IntakeCounter, IntakeHost, NotQueued,
    };
}

pub mod plugin {
    pub use crate::plugin::Plugin;
}

pub mod health {
    pub use crate::webhook::health::{Transition, WebhookHealth};
}

pub mod store {
    pub use crate::webhook::store::{load, pending_record, unique_vm_number, update};
}

use std::collections::BTreeMap;
use std::rc::Rc;

use crate::host::{Call, Counter, DispatchError, Host, SharedData, StoreError, WebhookCounter};
use crate::status::Status;

/// A call the fake host was asked to make.
#[derive(Debug, Clone)]
pub struct MadeCall {
    pub token: u32,
    pub cluster: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A host whose clock, calls, counters and shared data tests control and read.
#[derive(Debug, Default)]
pub struct FakeHost {
    pub now_ms: u64,
    pub next_token: u32,
    pub calls: Vec<MadeCall>,
    /// Calls made and not yet answered, by token.
    pub open: BTreeMap<u32, MadeCall>,
    pub counts: BTreeMap<Counter, u64>,
    pub statuses: BTreeMap<String, Status>,
    pub held_gauge: i64,
    pub tick_ms: u64,
    pub data: BTreeMap<String, (Vec<u8>, u32)>,
    /// Clusters that do not exist.
    pub missing_clusters: Vec<String>,
    /// Shared-data reads and writes made, by key.
    pub reads: std::cell::RefCell<BTreeMap<String, u64>>,
    pub writes: BTreeMap<String, u64>,
    /// `random_id`s drawn so far.
    pub ids_drawn: u128,
}

impl SharedData for FakeHost {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        *self.reads.borrow_mut().entry(key.to_string()).or_default() += 1;
        match self.data.get(key) {
            Some((value, version)) => (Some(value.clone()), Some(*version)),
            None => (None, None),
        }
    }

    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        // As Envoy: CAS is checked for existing keys only.
        let version = match (self.data.get(key), cas) {
            (Some((_, current)), Some(cas)) if *current != cas => {
                return Err(StoreError::CasMismatch)
            }
            (Some((_, current)), _) => current.wrapping_add(1),
            (None, _) => 1,
        };
        self.data.insert(key.to_string(), (value.to_vec(), version));
        *self.writes.entry(key.to_string()).or_default() += 1;
        Ok(())
    }
}

impl Host for FakeHost {
    fn now_ms(&self) -> u64 {
        self.now_ms
    }

    fn random_unit(&mut self) -> f64 {
        0.5
    }

    fn random_id(&mut self) -> u128 {
        // Distinct, and the same in every run.
        self.ids_drawn = self.ids_drawn.wrapping_add(1);
        self.ids_drawn
    }

    fn dispatch(&mut self, call: Call<'_>) -> Result<u32, DispatchError> {
        if self.missing_clusters.iter().any(|c| c == call.cluster) {
            return Err(DispatchError::Refused("BadArgument".to_string()));
        }
        self.next_token = self.next_token.wrapping_add(1);
        let made = MadeCall {
            token: self.next_token,
            cluster: call.cluster.to_string(),
            headers: call
                .headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: call.body.to_vec(),
        };
        self.calls.push(made.clone());
        self.open.insert(made.token, made);
        Ok(self.next_token)
    }

    fn set_tick_period_ms(&mut self, period_ms: u64) -> bool {
        self.tick_ms = period_ms;
        true
    }

    fn count(&mut self, counter: Counter, n: u64) {
        let count = self.counts.entry(counter).or_default();
        *count = count.saturating_add(n);
    }

    fn set_status(&mut self, id: &str, status: Status) {
        self.statuses.insert(id.to_string(), status);
    }

    fn add_held_bytes(&mut self, delta: i64) {
        self.held_gauge = self.held_gauge.saturating_add(delta);
    }
}

impl FakeHost {
    pub fn count_of(&self, id: &str, counter: WebhookCounter) -> u64 {
        self.counts
            .get(&Counter::Webhook(Rc::from(id), counter))
            .copied()
            .unwrap_or(0)
    }

    pub fn discarded(&self) -> u64 {
        self.counts
            .get(&Counter::DeliveriesDiscarded)
            .copied()
            .unwrap_or(0)
    }

    /// The oldest unanswered call.
    pub fn oldest_open(&self) -> Option<MadeCall> {
        self.open.values().next().cloned()
    }

    pub fn take(&mut self, token: u32) -> Option<MadeCall> {
        self.open.remove(&token)
    }
}

pub mod view {
    use serde_json::Value;

    use crate::event::parse_event;
    use crate::event::view::{scan, Scan, View, Viewed, REQUEST_ID};
    use crate::matcher::Matcher;

    /// What the full parse (the oracle) and the one-pass scan say of `text`
    /// for `matcher`: whether it is an event, or `None` when the scan was
    /// unsure (the filter then parses fully); `Err` saying how when they differ:
    /// the verdict, the matches, the regex-budget outcome, `request_id`, each
    /// query's evaluation.
    pub fn compare_with_oracle(matcher: &Matcher, text: &str) -> Result<Option<bool>, String> {
        let mut view = View::default();
        let verdict = scan(text, matcher.paths(), &mut view);
        let full = parse_event(text.as_bytes());
        match (verdict, &full) {
            (Scan::Unsure, _) => Ok(None),
            (Scan::Invalid, Err(_)) => Ok(Some(false)),
            (Scan::Invalid, Ok(_)) => Err(format!("the view refused a valid event: {text}")),
            (Scan::Event, Err(why)) => {
                Err(format!("the view took an invalid event ({why}): {text}"))
            }
            (Scan::Event, Ok(event)) => {
                let viewed = Viewed { text, view: &view };
                let (mut want, mut want_budget) = (Vec::new(), Vec::new());
                let (mut got, mut got_budget) = (Vec::new(), Vec::new());
                matcher.matching_with_budget(&event.value, &mut want, &mut want_budget);
                matcher.matching_view(&viewed, &mut got, &mut got_budget);
                if (&want, &want_budget) != (&got, &got_budget) {
                    return Err(format!(
                        "matches {want:?} (over budget {want_budget:?}) by the oracle, {got:?} ({got_budget:?}) by the view: {text}"
                    ));
                }
                let request_id = event.value.get("request_id").and_then(Value::as_str);
                if request_id != viewed.top_str(REQUEST_ID) {
                    return Err(format!("request_id differs: {text}"));
                }
                for definition in matcher.definitions() {
                    let mut paths = matcher.paths().clone();
                    let bound = definition.query.bind(&mut paths);
                    if paths.len() != matcher.paths().len() {
                        return Err("binding again added paths".to_string());
                    }
                    let (oracle, ours) = (
                        definition.query.evaluate(&event.value),
                        bound.evaluate(&viewed),
                    );
                    if oracle != ours {
                        return Err(format!(
                            "{}: {oracle:?} by the oracle, {ours:?} by the view: {text}",
                            definition.query
                        ));
                    }
                }
                Ok(Some(true))
            }
        }
    }
}
