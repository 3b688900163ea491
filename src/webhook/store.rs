//! Everything the filter keeps in proxy-wasm shared data, in one place: the
//! keys (all under our prefix: Istio sets no VM id, so every WasmPlugin of a
//! proxy shares one namespace) and the typed records stored under them.
//!
//! - `envoy_webhooks/health/<id>`: a webhook's [`WebhookHealth`], JSON,
//!   updated with compare-and-swap by every worker.
//! - `envoy_webhooks/vm_counter`: the number of VMs that registered a delivery
//!   queue, decimal text; gives each VM a unique number.
//! - `envoy_webhooks/pending/<n>`: VM `n`'s retry-queue summary for the admin
//!   API (see `admin::pending_summary`), JSON.

use crate::config::WebhookDefinition;
use crate::delivery::host::{SharedData, StoreError};

use super::health::{Transition, WebhookHealth};

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
/// long as `version` still returns it.
pub fn load_versioned<S: SharedData + ?Sized>(
    store: &S,
    definition: &WebhookDefinition,
    now_s: u64,
) -> (WebhookHealth, Option<u32>) {
    read(store, definition, now_s)
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
    let health = bytes
        .as_deref()
        .and_then(WebhookHealth::decode)
        .filter(|health| health.fingerprint == definition.fingerprint)
        .unwrap_or_else(|| WebhookHealth::initial(definition, now_s));
    (health, cas)
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

/// Publishes this VM's retry-queue summary for the admin API (any worker may answer it).
pub fn publish_pending<S: SharedData + ?Sized>(store: &mut S, vm_number: u64, summary: &[u8]) {
    if let Err(problem) = store.set(&pending_key(vm_number), summary, None) {
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

/// The name of VM `number`'s delivery queue.
pub fn queue_name(number: u64) -> String {
    format!("{KEY_PREFIX}deliveries/{number}")
}
