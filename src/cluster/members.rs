//! This Envoy's entry in the cluster's list of members: one key under a
//! lease of its own, `members/<owner>`, naming the webhooks its configuration
//! has (`{"webhooks": ["<id>/<fingerprint>", ...]}`), written and kept alive by
//! the root context that polls. A record of a webhook that no member names is
//! removed after a retention (see `sweep`); when an Envoy goes away its entry
//! lapses with its lease.

use super::etcd::{self, EtcdError};
use crate::config::{EtcdConfig, WebhookDefinition};

/// The lease lasts this many sync intervals (at least `MIN_TTL_S`): a short
/// etcd outage does not make an Envoy's webhooks look unconfigured.
const TTL_INTERVALS: u64 = 12;
const MIN_TTL_S: u64 = 12;
/// Kept alive three times a lease: an idle Envoy's cost, a fraction of a
/// request a second.
const KEEPALIVES_PER_TTL: u64 = 3;

/// One call of the membership in flight.
#[derive(Debug)]
pub enum MemberCall {
    Grant,
    Register,
    Keepalive,
    Revoke,
}

pub struct Membership {
    key: Vec<u8>,
    listing: Vec<u8>,
    interval_ms: u64,
    lease: Option<i64>,
    /// The key is in place under `lease`.
    registered: bool,
    /// This root context polls: it keeps the entry (else it revokes it).
    active: bool,
    busy: bool,
    next_keepalive_ms: u64,
    /// After a failed call, the next waits until then.
    retry_at_ms: u64,
}

/// The member entry's value for these definitions.
pub fn listing(definitions: &[WebhookDefinition]) -> Vec<u8> {
    let webhooks: Vec<String> = definitions.iter().map(webhook_name).collect();
    serde_json::json!({ "webhooks": webhooks })
        .to_string()
        .into_bytes()
}

/// How keys and listings name a webhook: `<id>/<fingerprint>`, as its record's key ends.
pub fn webhook_name(definition: &WebhookDefinition) -> String {
    format!("{}/{:016x}", definition.id, definition.fingerprint)
}

/// The webhooks a member entry names; `None`: not a member entry.
pub fn parse_listing(bytes: &[u8]) -> Option<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Listing {
        webhooks: Vec<String>,
    }
    serde_json::from_slice::<Listing>(bytes)
        .ok()
        .map(|listing| listing.webhooks)
}

impl Membership {
    pub fn new(config: &EtcdConfig, owner: &str, definitions: &[WebhookDefinition]) -> Membership {
        Membership {
            key: format!("{}{owner}", Self::members_prefix(&config.prefix)).into_bytes(),
            listing: listing(definitions),
            interval_ms: config.sync_interval_ms,
            lease: None,
            registered: false,
            active: false,
            busy: false,
            next_keepalive_ms: 0,
            retry_at_ms: 0,
        }
    }

    pub fn members_prefix(prefix: &str) -> String {
        format!("{prefix}members/")
    }

    fn ttl_s(&self) -> u64 {
        (self.interval_ms.saturating_mul(TTL_INTERVALS) / 1000).max(MIN_TTL_S)
    }

    /// The entry's lease, once the entry is in place: what this Envoy's
    /// receipts are kept under (they go with it).
    pub fn lease(&self) -> Option<i64> {
        self.lease.filter(|_| self.registered)
    }

    /// The webhooks of a new configuration: the entry is written again
    /// (under the same lease) if the list changed.
    pub fn relist(&mut self, definitions: &[WebhookDefinition]) {
        let listing = listing(definitions);
        if listing != self.listing {
            self.listing = listing;
            self.registered = false;
        }
    }

    /// Whether this root context keeps the entry (it polls) or not.
    pub fn set_active(&mut self, active: bool) {
        self.active = active;
    }

    /// No entry, and no call in flight: nothing left to revoke.
    pub fn is_finished(&self) -> bool {
        self.lease.is_none() && !self.busy
    }

    /// The next call to make now, if any: (path, body, call).
    pub fn next(&mut self, now_ms: u64) -> Option<(&'static str, Vec<u8>, MemberCall)> {
        if self.busy || now_ms < self.retry_at_ms {
            return None;
        }
        let call = match (self.active, self.lease, self.registered) {
            (false, Some(lease), _) => (
                etcd::LEASE_REVOKE_PATH,
                etcd::lease_id_request(lease),
                MemberCall::Revoke,
            ),
            (false, None, _) => return None,
            (true, None, _) => (
                etcd::LEASE_GRANT_PATH,
                etcd::lease_grant_request(self.ttl_s()),
                MemberCall::Grant,
            ),
            (true, Some(lease), false) => (
                etcd::TXN_PATH,
                etcd::txn_write(
                    &[(self.key.clone(), self.listing.clone())],
                    &[],
                    Some(lease),
                ),
                MemberCall::Register,
            ),
            (true, Some(lease), true) => {
                if now_ms < self.next_keepalive_ms {
                    return None;
                }
                (
                    etcd::LEASE_KEEPALIVE_PATH,
                    etcd::lease_id_request(lease),
                    MemberCall::Keepalive,
                )
            }
        };
        self.busy = true;
        Some(call)
    }

    /// The answer to a membership call: its body (a 200), or what went
    /// wrong (the caller counts it).
    pub fn finished_call(
        &mut self,
        call: MemberCall,
        answer: Result<&[u8], EtcdError>,
        now_ms: u64,
    ) -> Result<(), EtcdError> {
        self.busy = false;
        let outcome = answer.and_then(|body| match call {
            MemberCall::Grant => etcd::parse_lease_grant(body).map(|lease| {
                self.lease = Some(lease);
                self.registered = false;
            }),
            MemberCall::Register => etcd::parse_txn_applied(body).map(|applied| {
                self.registered = applied;
                self.schedule_keepalive(now_ms);
            }),
            MemberCall::Keepalive => etcd::parse_keepalive(body).map(|alive| {
                if alive {
                    self.schedule_keepalive(now_ms);
                } else {
                    // Lapsed (etcd was away longer than the TTL): a new entry.
                    self.forget_lease();
                }
            }),
            MemberCall::Revoke => {
                self.forget_lease();
                Ok(())
            }
        });
        match &outcome {
            Ok(()) => {}
            // The lease lapsed between its grant and the entry's put (or a
            // keep-alive): a new one at once, never "not found" forever.
            Err(EtcdError::LeaseNotFound) => self.forget_lease(),
            Err(_) => {
                self.retry_at_ms = now_ms.saturating_add(self.interval_ms);
                if matches!(call, MemberCall::Revoke) {
                    // The lease lapses by itself.
                    self.forget_lease();
                }
            }
        }
        outcome
    }

    fn forget_lease(&mut self) {
        self.lease = None;
        self.registered = false;
    }

    fn schedule_keepalive(&mut self, now_ms: u64) {
        let every_ms = self.ttl_s().saturating_mul(1000) / KEEPALIVES_PER_TTL;
        self.next_keepalive_ms = now_ms.saturating_add(every_ms);
    }
}
