//! What keeps etcd's keyspace proportional to what is configured and
//! waiting: records of webhooks that no Envoy has configured any more are
//! removed once no member has named them for `orphan_retention_s`.
//!
//! - a status record (`webhooks/<id>/<fingerprint>`): deleted;
//! - a delivery journaled by an Envoy that went away (`handoff/...`), which
//!   no Envoy can adopt: taken and sent to the dead letters (reason
//!   `orphaned`), or lost and counted without a destination.
//!
//! Each poller decides for itself, from what it read, and each removal is a
//! transaction that applies only if the record is unchanged, its owner (for a
//! journaled delivery) still gone, and no member entry was written since the
//! read the decision came from: an Envoy that comes up with the webhook in
//! the meantime keeps its records.

use hashbrown::{HashMap, HashSet};

use super::etcd::KeyValue;
use super::members;

/// Records removed per round, at most.
const MAX_REMOVALS_PER_ROUND: usize = 20;
/// Records kept in view between two decisions, at most (memory stays bounded
/// whatever etcd holds; those left out are seen by a later round).
const MAX_CANDIDATES: usize = 10_000;
/// The member entries are read at most this often while candidates wait.
const MAX_CHECK_EVERY_MS: u64 = 60_000;

/// A record of a webhook this Envoy does not have: removed if no member has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub key: Vec<u8>,
    pub mod_revision: i64,
    /// `<id>/<fingerprint>`, as member entries name webhooks.
    webhook: Vec<u8>,
    /// A journaled delivery: its owner's liveness key (absent when removed).
    pub liveness: Option<Vec<u8>>,
}

impl Candidate {
    pub fn is_delivery(&self) -> bool {
        self.liveness.is_some()
    }
}

pub struct Sweep {
    retention_ms: u64,
    check_every_ms: u64,
    next_check_ms: u64,
    /// Seen since the last decision, by key: the status records of every
    /// round, and the journal records of the pages read since.
    candidates: HashMap<Vec<u8>, Candidate>,
    /// By webhook (`<id>/<fingerprint>`): since when no member has named it,
    /// and when a record of it was last seen. By webhook, not by record: a
    /// round reads a page of the journal, and a record not in it this time
    /// keeps its clock.
    unlisted_since: HashMap<Vec<u8>, (u64, u64)>,
}

impl Sweep {
    pub fn new(retention_s: u64, interval_ms: u64) -> Sweep {
        let retention_ms = retention_s.saturating_mul(1000);
        Sweep {
            retention_ms,
            check_every_ms: (retention_ms / 4)
                .clamp(interval_ms, MAX_CHECK_EVERY_MS.max(interval_ms)),
            next_check_ms: 0,
            candidates: HashMap::new(),
            unlisted_since: HashMap::new(),
        }
    }

    /// A status record at `webhooks/<id>/<fingerprint>` (`name` is what
    /// follows the prefix) of a webhook not configured here.
    pub fn status_record(&mut self, kv: &KeyValue, name: &[u8]) {
        self.add(Candidate {
            key: kv.key.clone(),
            mod_revision: kv.mod_revision,
            webhook: name.to_vec(),
            liveness: None,
        });
    }

    /// A journaled delivery of a webhook not configured here, whose owner is gone.
    pub fn journaled(&mut self, kv: &KeyValue, webhook: Vec<u8>, liveness: Vec<u8>) {
        self.add(Candidate {
            key: kv.key.clone(),
            mod_revision: kv.mod_revision,
            webhook,
            liveness: Some(liveness),
        });
    }

    /// Kept as last seen, up to `MAX_CANDIDATES` between two decisions.
    fn add(&mut self, candidate: Candidate) {
        if self.candidates.len() < MAX_CANDIDATES || self.candidates.contains_key(&candidate.key) {
            self.candidates.insert(candidate.key.clone(), candidate);
        }
    }

    /// Whether to read the member entries now (candidates wait, and a check is due).
    pub fn is_due(&self, now_ms: u64) -> bool {
        !self.candidates.is_empty() && now_ms >= self.next_check_ms
    }

    /// Given every member entry: the candidates to remove now (no member has
    /// named them for the retention). `Err`: an entry is not a member entry
    /// (its key is returned), so nothing is removed this time.
    pub fn decide(&mut self, now_ms: u64, members: &[KeyValue]) -> Result<Vec<Candidate>, Vec<u8>> {
        self.next_check_ms = now_ms.saturating_add(self.check_every_ms);
        let candidates = std::mem::take(&mut self.candidates);
        // Whatever the entries say, these webhooks still have records.
        for candidate in candidates.values() {
            if let Some((_, seen)) = self.unlisted_since.get_mut(&candidate.webhook) {
                *seen = now_ms;
            }
        }
        let mut listed: HashSet<Vec<u8>> = HashSet::new();
        for member in members {
            let Some(webhooks) = members::parse_listing(&member.value) else {
                return Err(member.key.clone());
            };
            listed.extend(webhooks.into_iter().map(String::into_bytes));
        }
        let unlisted: Vec<Candidate> = candidates
            .into_values()
            .filter(|candidate| !listed.contains(&candidate.webhook))
            .collect();
        // Forget what is named again, and what no record was seen of for
        // long (its records gone: the memory stays bounded).
        let forget_after_ms = self
            .retention_ms
            .saturating_mul(2)
            .saturating_add(self.check_every_ms.saturating_mul(2));
        self.unlisted_since.retain(|webhook, (_, seen)| {
            !listed.contains(webhook) && now_ms.saturating_sub(*seen) <= forget_after_ms
        });
        let mut ready = Vec::new();
        for candidate in unlisted {
            let (since, seen) = self
                .unlisted_since
                .entry(candidate.webhook.clone())
                .or_insert((now_ms, now_ms));
            *seen = now_ms;
            if now_ms.saturating_sub(*since) >= self.retention_ms
                && ready.len() < MAX_REMOVALS_PER_ROUND
            {
                ready.push(candidate);
            }
        }
        Ok(ready)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            mod_revision: 7,
        }
    }

    fn round(sweep: &mut Sweep, records: usize) {
        for n in 0..records {
            let key = format!("/p/webhooks/old-{n}/00000000000000aa");
            sweep.status_record(
                &kv(&key, "{}"),
                format!("old-{n}/00000000000000aa").as_bytes(),
            );
        }
    }

    const NAMES_OLD_0: &str = r#"{"webhooks":["old-0/00000000000000aa"]}"#;

    #[test]
    fn a_webhook_named_again_before_the_retention_starts_its_clock_afresh() {
        let mut sweep = Sweep::new(10, 1_000);
        let member = [kv("/p/members/a", NAMES_OLD_0)];
        round(&mut sweep, 1);
        assert!(sweep.is_due(0));
        assert_eq!(sweep.decide(0, &[]).map(|r| r.len()), Ok(0));
        round(&mut sweep, 1);
        assert!(!sweep.is_due(2_000), "checked every retention/4");
        assert_eq!(sweep.decide(8_000, &member).map(|r| r.len()), Ok(0));
        round(&mut sweep, 1);
        assert_eq!(
            sweep.decide(12_000, &[]).map(|r| r.len()),
            Ok(0),
            "unlisted since 12 s"
        );
        round(&mut sweep, 1);
        assert_eq!(sweep.decide(22_000, &[]).map(|r| r.len()), Ok(1));
    }

    #[test]
    fn an_entry_that_is_not_a_member_entry_removes_nothing() {
        let mut sweep = Sweep::new(1, 1_000);
        round(&mut sweep, 1);
        assert_eq!(sweep.decide(0, &[]).map(|r| r.len()), Ok(0));
        round(&mut sweep, 1);
        let garbage = [kv("/p/members/x", "not json")];
        assert_eq!(sweep.decide(5_000, &garbage), Err(b"/p/members/x".to_vec()));
        round(&mut sweep, 1);
        assert_eq!(sweep.decide(6_000, &[]).map(|r| r.len()), Ok(1));
    }

    #[test]
    fn at_most_twenty_removals_a_round() {
        let mut sweep = Sweep::new(1, 1_000);
        round(&mut sweep, 50);
        assert_eq!(sweep.decide(0, &[]).map(|r| r.len()), Ok(0));
        round(&mut sweep, 50);
        assert_eq!(sweep.decide(2_000, &[]).map(|r| r.len()), Ok(20));
    }
}
