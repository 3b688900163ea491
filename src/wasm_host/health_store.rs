//! Webhook health in proxy-wasm shared data: one record per webhook, shared by
//! every worker of the VM id, updated with compare-and-swap.

use proxy_wasm::hostcalls;
use proxy_wasm::types::Status as HostStatus;

use crate::config::WebhookDefinition;
use crate::health::{Transition, WebhookHealth};

/// Attempts before an update gives up (each lost race re-reads and retries).
const MAX_CAS_ATTEMPTS: usize = 64;

/// The host does not check CAS when a key does not exist yet, and it never
/// hands out this value for an existing key in practice (CAS values count up
/// from 1). Writing a new key with it creates the key only if it is still
/// missing, and fails with a mismatch if another worker created it first.
const CREATE_ONLY_CAS: u32 = u32::MAX;

fn key(definition: &WebhookDefinition) -> String {
    format!("envoy_webhooks/health/{}", definition.id)
}

/// The current record; a missing record or one for another definition reads
/// as the definition's initial state.
pub fn load(definition: &WebhookDefinition, now_s: u64) -> WebhookHealth {
    read(definition, now_s).0
}

/// Like `load`, with the record's CAS value: the record is unchanged for as
/// long as `version` still returns it.
pub fn load_versioned(definition: &WebhookDefinition, now_s: u64) -> (WebhookHealth, Option<u32>) {
    read(definition, now_s)
}

/// The record's CAS value, without decoding it.
pub fn version(definition: &WebhookDefinition) -> Option<u32> {
    hostcalls::get_shared_data(&key(definition))
        .ok()
        .and_then(|(_, cas)| cas)
}

fn read(definition: &WebhookDefinition, now_s: u64) -> (WebhookHealth, Option<u32>) {
    let (bytes, cas) = hostcalls::get_shared_data(&key(definition)).unwrap_or((None, None));
    let health = bytes
        .as_deref()
        .and_then(WebhookHealth::decode)
        .filter(|health| health.fingerprint == definition.fingerprint)
        .unwrap_or_else(|| WebhookHealth::initial(definition, now_s));
    (health, cas)
}

/// Applies `change` atomically; returns the new record and the transition it made.
/// `None` if the update could not be stored (logged).
pub fn update(
    definition: &WebhookDefinition,
    now_s: u64,
    mut change: impl FnMut(&mut WebhookHealth) -> Option<Transition>,
) -> Option<(WebhookHealth, Option<Transition>)> {
    for _ in 0..MAX_CAS_ATTEMPTS {
        let (mut health, cas) = read(definition, now_s);
        let transition = change(&mut health);
        let bytes = health.encode();
        match hostcalls::set_shared_data(
            &key(definition),
            Some(&bytes),
            Some(cas.unwrap_or(CREATE_ONLY_CAS)),
        ) {
            Ok(()) => return Some((health, transition)),
            Err(HostStatus::CasMismatch) => continue,
            Err(status) => {
                log::warn!(
                    "envoy-webhooks: webhook {}: cannot store its health in shared data: {status:?}",
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

const VM_COUNTER_KEY: &str = "envoy_webhooks/vm_counter";

/// A number no other VM of this vm_id gets, for naming this VM's shared queue.
pub fn unique_vm_number() -> Option<u64> {
    for _ in 0..MAX_CAS_ATTEMPTS {
        let (bytes, cas) = hostcalls::get_shared_data(VM_COUNTER_KEY).ok()?;
        let current: u64 = bytes
            .as_deref()
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let next = current + 1;
        match hostcalls::set_shared_data(
            VM_COUNTER_KEY,
            Some(next.to_string().as_bytes()),
            Some(cas.unwrap_or(CREATE_ONLY_CAS)),
        ) {
            Ok(()) => return Some(next),
            Err(HostStatus::CasMismatch) => continue,
            Err(_) => return None,
        }
    }
    None
}

fn pending_key(vm_number: u64) -> String {
    format!("envoy_webhooks/pending/{vm_number}")
}

/// Publishes this VM's retry-queue summary for the admin API (any worker may answer it).
pub fn publish_pending(vm_number: u64, summary: &[u8]) {
    if let Err(status) = hostcalls::set_shared_data(&pending_key(vm_number), Some(summary), None) {
        log::debug!("envoy-webhooks: cannot publish the retry queue summary: {status:?}");
    }
}

/// Every VM's published retry-queue summary.
pub fn read_pending() -> Vec<Vec<u8>> {
    let count: u64 = hostcalls::get_shared_data(VM_COUNTER_KEY)
        .ok()
        .and_then(|(bytes, _)| bytes)
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (1..=count)
        .filter_map(|n| hostcalls::get_shared_data(&pending_key(n)).ok())
        .filter_map(|(bytes, _)| bytes)
        .collect()
}
