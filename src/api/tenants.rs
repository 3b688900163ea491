//! The tenants' webhooks as one worker keeps them: read from etcd whole at
//! first, then only what changed each `sync_interval_ms` (keys written since
//! the last read, tombstones included), so that every worker of every Envoy
//! follows a change within two intervals.
//!
//! Tombstones older than `TOMBSTONE_RETENTION_MS` are deleted by whichever
//! worker reads the whole set; a worker that has not read for half that
//! long reads the whole set again, so it never misses a deletion.

use std::collections::BTreeMap;

use serde_json::Value;

use super::exchange::Keys;
use super::resource::{self, StoredWebhook};
use crate::cluster::etcd::{self, Condition, EtcdError, KeyValue, Read, Write, TXN_PATH};
use crate::config::{EtcdConfig, WebhookDefinition};

/// How long a deleted webhook's tombstone is kept.
pub const TOMBSTONE_RETENTION_MS: u64 = 3_600_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Round {
    Authenticate,
    Whole,
    Changes,
    /// Old tombstones deleted; the answer changes nothing here.
    Sweep,
}

/// One worker's copy of the tenants' webhooks.
#[derive(Debug)]
pub struct Tenants {
    keys: Keys,
    interval_ms: u64,
    credentials: Option<(String, String)>,
    token: Option<String>,
    /// The revision everything here was read at; `None`: never read.
    revision: Option<i64>,
    /// By etcd key.
    webhooks: BTreeMap<Vec<u8>, StoredWebhook>,
    /// When the whole set was last read.
    whole_at_ms: u64,
    next_round_ms: u64,
    in_flight: Option<Round>,
    /// Tombstones to delete: (key, mod_revision).
    sweep: Vec<(Vec<u8>, i64)>,
    /// When the earliest rotated-out secret stops signing: the definitions
    /// are made again then.
    next_expiry_ms: Option<u64>,
}

/// What a finished call changed.
#[derive(Debug)]
pub enum Outcome {
    /// Nothing to do.
    Same,
    /// The tenants' definitions are now these.
    Changed(Vec<WebhookDefinition>),
}

impl Tenants {
    pub fn new(config: &EtcdConfig, credentials: Option<(String, String)>) -> Tenants {
        Tenants {
            keys: Keys::new(&config.prefix),
            interval_ms: config.sync_interval_ms,
            credentials,
            token: None,
            revision: None,
            webhooks: BTreeMap::new(),
            whole_at_ms: 0,
            next_round_ms: 0,
            in_flight: None,
            sweep: Vec::new(),
            next_expiry_ms: None,
        }
    }

    /// etcd's token, once authenticated (the API's calls send it too).
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Forgets the token: the next round authenticates first.
    pub fn token_expired(&mut self) {
        self.token = None;
    }

    /// The call to make now, if any: `(path, body)`. One at a time.
    pub fn next(&mut self, now_ms: u64) -> Option<(&'static str, Vec<u8>)> {
        if self.in_flight.is_some() {
            return None;
        }
        if !self.sweep.is_empty() {
            let conditions: Vec<Condition<'_>> = self
                .sweep
                .iter()
                .map(|(key, revision)| Condition::Unchanged(key, *revision))
                .collect();
            let writes: Vec<Write<'_>> = self
                .sweep
                .iter()
                .map(|(key, _)| Write::Delete(key))
                .collect();
            let body = etcd::txn_if(&conditions, &writes);
            self.sweep.clear();
            self.in_flight = Some(Round::Sweep);
            return Some((TXN_PATH, body));
        }
        if now_ms < self.next_round_ms {
            return None;
        }
        self.next_round_ms = now_ms.saturating_add(self.interval_ms);
        if let (Some((name, password)), None) = (&self.credentials, &self.token) {
            self.in_flight = Some(Round::Authenticate);
            return Some((
                etcd::AUTHENTICATE_PATH,
                etcd::authenticate_request(name, password),
            ));
        }
        // Reads fail for long, or time passes: the whole set now and then,
        // before a tombstone it may not have seen can be swept.
        let whole_due = now_ms.saturating_sub(self.whole_at_ms) > TOMBSTONE_RETENTION_MS / 2;
        let (round, since) = match self.revision {
            Some(revision) if !whole_due => (Round::Changes, revision),
            _ => (Round::Whole, 0),
        };
        let body = etcd::txn_reads(&[
            Read::Prefix {
                prefix: self.keys.all().as_bytes(),
                limit: 0,
                since,
            },
            Read::Prefix {
                prefix: self.keys.all_deleted().as_bytes(),
                limit: 0,
                since,
            },
        ]);
        self.in_flight = Some(round);
        Some((TXN_PATH, body))
    }

    /// The answer to the call `next` gave.
    pub fn finished(
        &mut self,
        answer: Result<&[u8], EtcdError>,
        now_ms: u64,
    ) -> Result<Outcome, EtcdError> {
        let Some(round) = self.in_flight.take() else {
            return Ok(Outcome::Same);
        };
        if let Err(EtcdError::AuthExpired { .. }) = &answer {
            self.token = None;
            // At once, not an interval later.
            self.next_round_ms = now_ms;
        }
        let body = answer?;
        match round {
            Round::Authenticate => {
                self.token = Some(etcd::parse_authenticate(body)?);
                self.next_round_ms = now_ms;
                Ok(Outcome::Same)
            }
            Round::Sweep => {
                etcd::parse_txn_applied(body)?;
                Ok(Outcome::Same)
            }
            Round::Whole | Round::Changes => {
                let (revision, reads) = etcd::parse_reads(body, 2)?;
                let mut reads = reads.into_iter();
                let live = reads.next().unwrap_or_default().kvs;
                let deleted = reads.next().unwrap_or_default().kvs;
                let changed = if round == Round::Whole {
                    self.replace(live, &deleted, now_ms)
                } else {
                    self.apply(live, &deleted)
                };
                self.revision = Some(revision);
                if round == Round::Whole {
                    self.whole_at_ms = now_ms;
                }
                let expired = self.next_expiry_ms.is_some_and(|at| at <= now_ms);
                if changed || expired {
                    Ok(Outcome::Changed(self.definitions(now_ms)))
                } else {
                    Ok(Outcome::Same)
                }
            }
        }
    }

    /// Everything read anew; old tombstones queued for deletion.
    fn replace(&mut self, live: Vec<KeyValue>, deleted: &[KeyValue], now_ms: u64) -> bool {
        let before = std::mem::take(&mut self.webhooks);
        for kv in live {
            if let Some(webhook) = decode(&kv) {
                self.webhooks.insert(kv.key, webhook);
            }
        }
        self.sweep = deleted
            .iter()
            .filter(|kv| {
                deleted_at_ms(&kv.value)
                    .is_none_or(|at| now_ms.saturating_sub(at) > TOMBSTONE_RETENTION_MS)
            })
            .map(|kv| (kv.key.clone(), kv.mod_revision))
            .collect();
        before != self.webhooks
    }

    /// What changed since the last read.
    fn apply(&mut self, live: Vec<KeyValue>, deleted: &[KeyValue]) -> bool {
        let mut changed = false;
        for kv in live {
            if let Some(webhook) = decode(&kv) {
                changed |= self.webhooks.get(&kv.key) != Some(&webhook);
                self.webhooks.insert(kv.key, webhook);
            }
        }
        for kv in deleted {
            // `{prefix}api/deleted/{domain}/{id}` stands for `{prefix}api/webhooks/{domain}/{id}`.
            let live_key = self.live_key_of(&kv.key);
            changed |= self.webhooks.remove(&live_key).is_some();
        }
        changed
    }

    fn live_key_of(&self, tombstone: &[u8]) -> Vec<u8> {
        let rest = tombstone
            .get(self.keys.all_deleted().len()..)
            .unwrap_or_default();
        [self.keys.all().as_bytes(), rest].concat()
    }

    /// The definitions of every tenant webhook, in the order of creation.
    fn definitions(&mut self, now_ms: u64) -> Vec<WebhookDefinition> {
        let mut webhooks: Vec<&StoredWebhook> = self.webhooks.values().collect();
        webhooks.sort_by(|a, b| (a.date_created_ms, &a.id).cmp(&(b.date_created_ms, &b.id)));
        self.next_expiry_ms = webhooks
            .iter()
            .flat_map(|w| w.secrets.iter().filter_map(|s| s.expires_at_ms))
            .filter(|at| *at > now_ms)
            .min();
        webhooks
            .into_iter()
            .filter_map(|webhook| match resource::definition_of(webhook, now_ms) {
                Ok(definition) => Some(definition),
                Err(problems) => {
                    log::warn!(
                        "envoy-webhooks: tenant webhook {} is left out: {}",
                        webhook.id,
                        problems
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("; ")
                    );
                    None
                }
            })
            .collect()
    }

    /// The definitions as they stand (a new configuration takes them at once).
    pub fn definitions_now(&mut self, now_ms: u64) -> Vec<WebhookDefinition> {
        self.definitions(now_ms)
    }

    /// Whether the whole set was read at least once.
    pub fn has_read(&self) -> bool {
        self.revision.is_some()
    }
}

fn decode(kv: &KeyValue) -> Option<StoredWebhook> {
    match serde_json::from_slice::<StoredWebhook>(&kv.value) {
        Ok(webhook) => Some(webhook),
        Err(e) => {
            log::warn!(
                "envoy-webhooks: a stored tenant webhook does not decode ({e}); it is left out"
            );
            None
        }
    }
}

fn deleted_at_ms(value: &[u8]) -> Option<u64> {
    serde_json::from_slice::<Value>(value)
        .ok()?
        .get("deleted_at_ms")?
        .as_u64()
}
