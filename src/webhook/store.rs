//! Everything the filter keeps in proxy-wasm shared data, in one place: the
//! keys (all under our prefix: Istio sets no VM id, so every WasmPlugin of a
//! proxy shares one namespace) and the typed records stored under them.
//!
//! - `envoy_webhooks/health/<id>`: a webhook's [`WebhookHealth`], JSON,
//!   updated with compare-and-swap by every worker.
//! - `envoy_webhooks/vm_counter`: the number of VMs that registered a delivery
//!   queue, decimal text; gives each VM a unique number.
//! - `envoy_webhooks/pending/<n>`: VM `n`'s retry-queue summary for the admin
//!   API (see `pending_record`), JSON.
//! - `envoy_webhooks/rate/<id>`: the webhook's rate-limit bucket (see
//!   `delivery::rate_limit`), 16 bytes.
//! - `envoy_webhooks/attempts/<n>/<id>`: VM `n`'s latest attempts of the
//!   webhook, newest first (see `delivery::attempts`), a JSON array.
//! - With `cluster_state` (see `cluster`): `envoy_webhooks/delta/<id>`, the
//!   webhook's [`Delta`] not yet written to etcd; `envoy_webhooks/cluster/dirty`,
//!   the fingerprints of the webhooks whose deltas changed since the poller
//!   last took them (see [`Dirty`]; the poller writes soon); `.../cluster/poller`,
//!   which root context polls etcd; `.../cluster/sync`, how the last sync went.

use serde_json::{json, Value};

use crate::config::WebhookDefinition;
use crate::host::{SharedData, StoreError};

use super::delta::{Delta, Outcome};
use super::health::{Transition, WebhookHealth};
use crate::config::DeliveryPolicy;

/// Every key of ours starts with this.
pub const KEY_PREFIX: &str = "envoy_webhooks/";

/// Attempts before an update gives up (each lost race re-reads and retries).
const MAX_CAS_ATTEMPTS: usize = 64;

/// The host does not check CAS when a key does not exist yet, and it never
/// hands out this value for an existing key in practice (CAS values count up
/// from 1). Writing a new key with it creates the key only if it is still
/// missing, and fails with a mismatch if another worker created it first.
const CREATE_ONLY_CAS: u32 = u32::MAX;

fn health_key(definition: &WebhookDefinition) -> String {
    format!("{KEY_PREFIX}health/{}", definition.id)
}

const VM_COUNTER_KEY: &str = "envoy_webhooks/vm_counter";

fn pending_key(vm_number: u64) -> String {
    format!("{KEY_PREFIX}pending/{vm_number}")
}

/// The current record; a missing record or one for another definition reads
/// as the definition's initial state.
pub fn load<S: SharedData + ?Sized>(
    store: &S,
    definition: &WebhookDefinition,
    now_s: u64,
) -> WebhookHealth {
    read(store, definition, now_s).0
}

/// Like `load`, with the record's CAS value: the record is unchanged for as
/// long as `version` still returns it. Decodes only when the record changed
/// since the last call with the same `cache` (the common case: it did not).
pub fn load_versioned<S: SharedData + ?Sized>(
    store: &S,
    definition: &WebhookDefinition,
    now_s: u64,
    cache: &mut Option<(u32, WebhookHealth)>,
) -> (WebhookHealth, Option<u32>) {
    let (bytes, cas) = store.get(&health_key(definition));
    if let (Some(version), Some((cached_version, health))) = (cas, cache.as_ref()) {
        if version == *cached_version && health.fingerprint == definition.fingerprint {
            return (health.clone(), cas);
        }
    }
    let health = decoded(bytes.as_deref(), definition, now_s);
    *cache = cas.map(|version| (version, health.clone()));
    (health, cas)
}

/// The record's CAS value, without decoding it.
pub fn version<S: SharedData + ?Sized>(store: &S, definition: &WebhookDefinition) -> Option<u32> {
    store.get(&health_key(definition)).1
}

fn read<S: SharedData + ?Sized>(
    store: &S,
    definition: &WebhookDefinition,
    now_s: u64,
) -> (WebhookHealth, Option<u32>) {
    let (bytes, cas) = store.get(&health_key(definition));
    (decoded(bytes.as_deref(), definition, now_s), cas)
}

/// A stored record; a missing one or one for another definition reads as
/// the definition's initial state.
fn decoded(bytes: Option<&[u8]>, definition: &WebhookDefinition, now_s: u64) -> WebhookHealth {
    bytes
        .and_then(WebhookHealth::decode)
        .filter(|health| health.fingerprint == definition.fingerprint)
        .unwrap_or_else(|| WebhookHealth::initial(definition, now_s))
}

/// Applies `change` atomically; returns the new record and the transition it made.
/// `None` if the update could not be stored (logged).
pub fn update<S: SharedData + ?Sized>(
    store: &mut S,
    definition: &WebhookDefinition,
    now_s: u64,
    mut change: impl FnMut(&mut WebhookHealth) -> Option<Transition>,
) -> Option<(WebhookHealth, Option<Transition>)> {
    let key = health_key(definition);
    for _ in 0..MAX_CAS_ATTEMPTS {
        let (mut health, cas) = read(store, definition, now_s);
        let transition = change(&mut health);
        match store.set(&key, &health.encode(), Some(cas.unwrap_or(CREATE_ONLY_CAS))) {
            Ok(()) => return Some((health, transition)),
            Err(StoreError::CasMismatch) => continue,
            Err(StoreError::Other(problem)) => {
                log::warn!(
                    "envoy-webhooks: webhook {}: cannot store its health in shared data: {problem}",
                    definition.id
                );
                return None;
            }
        }
    }
    log::warn!(
        "envoy-webhooks: webhook {}: health update lost {MAX_CAS_ATTEMPTS} races in a row; giving up on this update",
        definition.id
    );
    None
}

fn read_counter<S: SharedData + ?Sized>(store: &S) -> (u64, Option<u32>) {
    let (bytes, cas) = store.get(VM_COUNTER_KEY);
    let count = bytes
        .as_deref()
        .and_then(|b| std::str::from_utf8(b).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (count, cas)
}

/// A number no other VM of this VM id gets, for naming this VM's shared queue.
pub fn unique_vm_number<S: SharedData + ?Sized>(store: &mut S) -> Option<u64> {
    for _ in 0..MAX_CAS_ATTEMPTS {
        let (current, cas) = read_counter(store);
        let next = current.checked_add(1)?;
        match store.set(
            VM_COUNTER_KEY,
            next.to_string().as_bytes(),
            Some(cas.unwrap_or(CREATE_ONLY_CAS)),
        ) {
            Ok(()) => return Some(next),
            Err(StoreError::CasMismatch) => continue,
            Err(StoreError::Other(_)) => return None,
        }
    }
    None
}

/// Per-webhook view of a queue, published for the admin API (`pending`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PendingSummary {
    pub deliveries: usize,
    pub dead_letters: usize,
    pub next_due_ms: Option<u64>,
}

/// One VM's retry-queue summary at `now_ms` (per webhook id), as stored:
/// `{"updated_at_ms", "webhooks": {id: {"deliveries", "dead_letters", "next_due_ms"}}}`.
pub fn pending_record(
    now_ms: u64,
    entries: impl IntoIterator<Item = (String, PendingSummary)>,
) -> Vec<u8> {
    let webhooks: serde_json::Map<String, Value> = entries
        .into_iter()
        .map(|(id, summary)| {
            (
                id,
                json!({
                    "deliveries": summary.deliveries,
                    "dead_letters": summary.dead_letters,
                    "next_due_ms": summary.next_due_ms,
                }),
            )
        })
        .collect();
    json!({ "updated_at_ms": now_ms, "webhooks": webhooks })
        .to_string()
        .into_bytes()
}

/// Publishes this VM's retry-queue summary for the admin API (any worker may answer it).
pub fn publish_pending<S: SharedData + ?Sized>(
    store: &mut S,
    vm_number: u64,
    now_ms: u64,
    entries: impl IntoIterator<Item = (String, PendingSummary)>,
) {
    let record = pending_record(now_ms, entries);
    if let Err(problem) = store.set(&pending_key(vm_number), &record, None) {
        log::debug!("envoy-webhooks: cannot publish the retry queue summary: {problem:?}");
    }
}

/// Every VM's published retry-queue summary.
pub fn read_pending<S: SharedData + ?Sized>(store: &S) -> Vec<Vec<u8>> {
    let (count, _) = read_counter(store);
    (1..=count)
        .filter_map(|n| store.get(&pending_key(n)).0)
        .collect()
}

pub fn rate_limit_key(id: &str) -> String {
    format!("{KEY_PREFIX}rate/{id}")
}

fn attempts_key(vm_number: u64, id: &str) -> String {
    format!("{KEY_PREFIX}attempts/{vm_number}/{id}")
}

/// Publishes VM `vm_number`'s attempt log of webhook `id` (a JSON array).
pub fn publish_attempts<S: SharedData + ?Sized>(
    store: &mut S,
    vm_number: u64,
    id: &str,
    log: &[u8],
) {
    if let Err(problem) = store.set(&attempts_key(vm_number, id), log, None) {
        log::debug!("envoy-webhooks: cannot publish the attempt log of {id}: {problem:?}");
    }
}

/// Every VM's published attempt log of webhook `id`.
pub fn read_attempts<S: SharedData + ?Sized>(store: &S, id: &str) -> Vec<Vec<u8>> {
    let (count, _) = read_counter(store);
    (1..=count)
        .filter_map(|n| store.get(&attempts_key(n, id)).0)
        .collect()
}

/// The name of VM `number`'s wake-up queue (a proxy-wasm shared queue: only
/// the Wasm build has one).
#[cfg(target_arch = "wasm32")]
pub fn queue_name(number: u64) -> String {
    format!("{KEY_PREFIX}deliveries/{number}")
}

fn delta_key(definition: &WebhookDefinition) -> String {
    format!("{KEY_PREFIX}delta/{}", definition.id)
}

pub const DIRTY_KEY: &str = "envoy_webhooks/cluster/dirty";
pub const POLLER_KEY: &str = "envoy_webhooks/cluster/poller";
pub const SYNC_KEY: &str = "envoy_webhooks/cluster/sync";

fn read_delta<S: SharedData + ?Sized>(
    store: &S,
    definition: &WebhookDefinition,
) -> (Delta, Option<u32>) {
    let (bytes, cas) = store.get(&delta_key(definition));
    let delta = bytes
        .as_deref()
        .and_then(|b| serde_json::from_slice::<Delta>(b).ok())
        .filter(|delta| delta.fingerprint == definition.fingerprint)
        .unwrap_or_else(|| Delta::new(definition.fingerprint));
    (delta, cas)
}

/// Changes `definition`'s delta with `change` (compare-and-swap); `false` if it could not be stored.
fn change_delta<S: SharedData + ?Sized>(
    store: &mut S,
    definition: &WebhookDefinition,
    mut change: impl FnMut(Delta) -> Delta,
) -> bool {
    let key = delta_key(definition);
    for _ in 0..MAX_CAS_ATTEMPTS {
        let (delta, cas) = read_delta(store, definition);
        let changed = change(delta);
        let bytes = serde_json::to_vec(&changed).unwrap_or_default();
        match store.set(&key, &bytes, Some(cas.unwrap_or(CREATE_ONLY_CAS))) {
            Ok(()) => return true,
            Err(StoreError::CasMismatch) => continue,
            Err(StoreError::Other(problem)) => {
                log::warn!(
                    "envoy-webhooks: webhook {}: cannot keep its change for the cluster state: {problem}",
                    definition.id
                );
                return false;
            }
        }
    }
    false
}

/// Keeps `outcome` for the cluster store and tells the poller (cluster mode only).
/// `epoch` is the webhook's epoch the outcome was made in (for an enable,
/// the one right after it).
pub fn record_outcome<S: SharedData + ?Sized>(
    store: &mut S,
    definition: &WebhookDefinition,
    outcome: &Outcome<'_>,
    epoch: u64,
    policy: &DeliveryPolicy,
) {
    let fingerprint = definition.fingerprint;
    if change_delta(store, definition, |delta| {
        delta.then(Delta::of(fingerprint, epoch, outcome), policy)
    }) {
        mark_dirty(store, fingerprint);
    }
}

/// The dirty list holds at most this many bytes (a fingerprint is 17): past
/// it, `*` says "every webhook", so that an outcome never copies more than
/// this out of shared data.
const MAX_DIRTY_BYTES: usize = 4 * 1024;

/// Which webhooks have deltas to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dirty {
    /// Every webhook (too many changed to list, or the list was unreadable).
    All,
    /// These fingerprints, each once.
    These(Vec<u64>),
}

/// Adds `fingerprint` to the dirty list (compare-and-swap), which wakes the
/// poller: it writes only the deltas of the webhooks listed, so a round's
/// cost follows the webhooks that changed, not all there are.
pub fn mark_dirty<S: SharedData + ?Sized>(store: &mut S, fingerprint: u64) {
    let entry = format!("{fingerprint:016x}\n");
    for _ in 0..MAX_CAS_ATTEMPTS {
        let (bytes, cas) = store.get(DIRTY_KEY);
        let mut list = bytes.unwrap_or_default();
        let listed = list == b"*"
            || list
                .chunks(entry.len())
                .any(|listed| listed == entry.as_bytes());
        if listed {
            return;
        }
        if list.len().saturating_add(entry.len()) > MAX_DIRTY_BYTES {
            list = b"*".to_vec();
        } else {
            list.extend_from_slice(entry.as_bytes());
        }
        match store.set(DIRTY_KEY, &list, Some(cas.unwrap_or(CREATE_ONLY_CAS))) {
            Err(StoreError::CasMismatch) => continue,
            Ok(()) | Err(StoreError::Other(_)) => return,
        }
    }
}

/// Whether any webhook is on the dirty list (one small read: the poller
/// asks this at every check).
pub fn any_dirty<S: SharedData + ?Sized>(store: &S) -> bool {
    store.get(DIRTY_KEY).0.is_some_and(|list| !list.is_empty())
}

/// Takes the dirty list (the poller, before writing the deltas of the
/// webhooks on it); `All` if it cannot be read or taken.
pub fn take_dirty<S: SharedData + ?Sized>(store: &mut S) -> Dirty {
    for _ in 0..MAX_CAS_ATTEMPTS {
        let (bytes, cas) = store.get(DIRTY_KEY);
        let list = bytes.unwrap_or_default();
        if list.is_empty() {
            return Dirty::These(Vec::new());
        }
        match store.set(DIRTY_KEY, b"", cas) {
            Ok(()) => {}
            Err(StoreError::CasMismatch) => continue,
            Err(StoreError::Other(_)) => return Dirty::All,
        }
        if list == b"*" {
            return Dirty::All;
        }
        let parsed: Option<Vec<u64>> = list
            .split(|byte| *byte == b'\n')
            .filter(|line| !line.is_empty())
            .map(|line| {
                std::str::from_utf8(line)
                    .ok()
                    .and_then(|hex| u64::from_str_radix(hex, 16).ok())
            })
            .collect();
        return parsed.map_or(Dirty::All, Dirty::These);
    }
    Dirty::All
}

/// Enables the webhook (a FAILED one is called again, counts start
/// afresh); with `shared` (cluster state) the cluster's record is enabled
/// too, even if this Envoy has not seen it fail yet.
pub fn enable<S: SharedData + ?Sized>(
    store: &mut S,
    definition: &WebhookDefinition,
    policy: &DeliveryPolicy,
    shared: bool,
    now_s: u64,
) -> Option<(WebhookHealth, Option<Transition>)> {
    let updated = update(store, definition, now_s, |health| health.enable());
    if let (Some((health, _)), true) = (&updated, shared) {
        record_outcome(store, definition, &Outcome::Enable, health.epoch, policy);
    }
    updated
}

/// The changes not yet written, left in place.
pub fn pending_delta<S: SharedData + ?Sized>(store: &S, definition: &WebhookDefinition) -> Delta {
    read_delta(store, definition).0
}

/// Takes the changes not yet written (the poller writes them); empty if none.
pub fn take_delta<S: SharedData + ?Sized>(store: &mut S, definition: &WebhookDefinition) -> Delta {
    let mut taken = Delta::new(definition.fingerprint);
    let fingerprint = definition.fingerprint;
    if !change_delta(store, definition, |delta| {
        taken = delta;
        Delta::new(fingerprint)
    }) {
        taken = Delta::new(fingerprint);
    }
    taken
}

/// Puts back changes that could not be written, before any made since.
pub fn restore_delta<S: SharedData + ?Sized>(
    store: &mut S,
    definition: &WebhookDefinition,
    taken: &Delta,
    policy: &DeliveryPolicy,
) {
    if taken.is_empty() {
        return;
    }
    if change_delta(store, definition, |since| taken.clone().then(since, policy)) {
        // Written by a later round.
        mark_dirty(store, definition.fingerprint);
    }
}

/// The local record follows the cluster's: `cluster` (what etcd holds) with
/// this Envoy's unwritten changes applied; the counts stay this Envoy's.
pub fn adopt<S: SharedData + ?Sized>(
    store: &mut S,
    definition: &WebhookDefinition,
    cluster: &WebhookHealth,
    policy: &DeliveryPolicy,
    now_s: u64,
) -> Option<(WebhookHealth, Option<Transition>)> {
    let pending = pending_delta(store, definition);
    let (target, applied) = pending.apply(cluster, policy);
    update(store, definition, now_s, |health| {
        let from = health.status;
        health.status = target.status;
        health.consecutive_failures = target.consecutive_failures;
        health.first_failed_at = target.first_failed_at;
        health.last_error.clone_from(&target.last_error);
        health.epoch = target.epoch;
        health.paused_at_ms = target.paused_at_ms;
        (from != target.status).then(|| Transition {
            from,
            to: target.status,
            reason: applied
                .as_ref()
                .filter(|t| t.to == target.status)
                .map_or_else(
                    || "the cluster state (etcd) says so".to_string(),
                    |t| t.reason.clone(),
                ),
        })
    })
}

/// Who polls the cluster store for this Envoy: one root context at a time.
#[derive(serde::Serialize, serde::Deserialize)]
struct PollerLease {
    vm: u64,
    until_ms: u64,
}

/// Whether VM `vm` polls now: it keeps the lease while it renews it, takes it
/// when it lapsed, and takes it from an older VM (a lower number: a root
/// context of a configuration that a reload replaced).
pub fn hold_poller_lease<S: SharedData + ?Sized>(
    store: &mut S,
    vm: u64,
    now_ms: u64,
    ttl_ms: u64,
) -> bool {
    let (bytes, cas) = store.get(POLLER_KEY);
    let current = bytes
        .as_deref()
        .and_then(|b| serde_json::from_slice::<PollerLease>(b).ok());
    let ours = match &current {
        None => true,
        Some(lease) => lease.vm == vm || lease.until_ms <= now_ms || lease.vm < vm,
    };
    if !ours {
        return false;
    }
    let lease = PollerLease {
        vm,
        until_ms: now_ms.saturating_add(ttl_ms),
    };
    let bytes = serde_json::to_vec(&lease).unwrap_or_default();
    store
        .set(POLLER_KEY, &bytes, Some(cas.unwrap_or(CREATE_ONLY_CAS)))
        .is_ok()
}

/// Gives the lease up (if `vm` holds it), so that another root context polls at once.
pub fn release_poller_lease<S: SharedData + ?Sized>(store: &mut S, vm: u64) {
    let (bytes, cas) = store.get(POLLER_KEY);
    let held = bytes
        .as_deref()
        .and_then(|b| serde_json::from_slice::<PollerLease>(b).ok())
        .is_some_and(|lease| lease.vm == vm);
    if held {
        let lapsed = PollerLease { vm: 0, until_ms: 0 };
        let bytes = serde_json::to_vec(&lapsed).unwrap_or_default();
        let _ = store.set(POLLER_KEY, &bytes, cas);
    }
}

/// How this Envoy's sync with the cluster store goes, for the admin API.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SyncState {
    /// Unix ms of the last complete read of the cluster's records.
    pub synced_at_ms: Option<u64>,
    /// Unix ms since which the store does not answer (or answers errors).
    pub failing_since_ms: Option<u64>,
    pub errors: u64,
    pub last_error: Option<String>,
}

pub fn publish_sync<S: SharedData + ?Sized>(store: &mut S, state: &SyncState) {
    let bytes = serde_json::to_vec(state).unwrap_or_default();
    if let Err(problem) = store.set(SYNC_KEY, &bytes, None) {
        log::debug!("envoy-webhooks: cannot publish the cluster sync state: {problem:?}");
    }
}

pub fn read_sync<S: SharedData + ?Sized>(store: &S) -> SyncState {
    store
        .get(SYNC_KEY)
        .0
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}
