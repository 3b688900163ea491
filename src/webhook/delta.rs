//! Health changes this Envoy made that the cluster store (etcd) has not seen
//! yet, kept so that they can be applied to whatever record the cluster holds
//! by the time they are written: failures from every replica add up, and a
//! `FAILED` reached here is never lost to a concurrent write elsewhere.
//!
//! A delta is the effect of a sequence of outcomes, summarised without
//! knowing the record it will be applied to. What a sequence does to a record
//! depends on that record only until the sequence's first success (which
//! resets a `FAILING` webhook); after that, whether it reaches `FAILED` is
//! known here. So a delta is: an operator `enable` (it overrides everything
//! before it), the failures before the first success (`lead`, added to the
//! record's own count), whether a success followed (`reset`), a later run of
//! failures that reached `FAILED` on its own (`failed_within`), and the
//! failures since the last success (`trail`). `then` composes two deltas
//! exactly as the outcomes would have been applied one by one (tested against
//! `WebhookHealth`'s own transitions).

use serde::{Deserialize, Serialize};

use super::health::{Transition, WebhookHealth};
use crate::config::DeliveryPolicy;
use crate::status::Status;

/// Consecutive failed deliveries (unix seconds), with no success among them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    pub count: u64,
    pub first_at: u64,
    pub last_at: u64,
    /// One of them was a `410 Gone`: `FAILED` at once.
    pub gone: bool,
}

impl Run {
    fn after(self, later: Run) -> Run {
        Run {
            count: self.count.saturating_add(later.count),
            first_at: self.first_at.min(later.first_at),
            last_at: self.last_at.max(later.last_at),
            gone: self.gone || later.gone,
        }
    }

    /// Applied to a webhook with `prior` consecutive failures since
    /// `prior_since`: the reason it becomes `FAILED`, if it does.
    fn failure_reason(
        &self,
        prior: u64,
        prior_since: Option<u64>,
        policy: &DeliveryPolicy,
    ) -> Option<String> {
        let consecutive = prior.saturating_add(self.count);
        let since = prior_since.unwrap_or(self.first_at).min(self.first_at);
        let failing_for = self.last_at.saturating_sub(since);
        if self.gone {
            Some("the receiver answered 410 Gone".to_string())
        } else if consecutive >= policy.failure_threshold {
            Some(format!(
                "{consecutive} consecutive failures (all replicas) reached failure_threshold {}",
                policy.failure_threshold
            ))
        } else if failing_for >= policy.failing_window_s {
            Some(format!(
                "failing for {failing_for} s (all replicas), reaching failing_window_s {}",
                policy.failing_window_s
            ))
        } else {
            None
        }
    }
}

fn joined(first: Option<Run>, later: Option<Run>) -> Option<Run> {
    match (first, later) {
        (Some(a), Some(b)) => Some(a.after(b)),
        (a, b) => a.or(b),
    }
}

/// One outcome, as recorded in a delta.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<'a> {
    Success,
    Failure {
        error: &'a str,
        at: u64,
    },
    Gone {
        at: u64,
    },
    Enable,
    /// An operator paused the webhook (`disable`) at this Unix ms.
    Pause {
        at_ms: u64,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    /// The definition it belongs to; a delta for another one is discarded.
    pub fingerprint: u64,
    /// An operator enabled the webhook before everything below.
    pub enabled: bool,
    /// An operator paused the webhook (Unix ms) after the enable, if any:
    /// what follows a pause cannot change the status, so nothing does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_at_ms: Option<u64>,
    pub lead: Option<Run>,
    pub reset: bool,
    pub failed_within: Option<Run>,
    pub trail: Option<Run>,
    pub last_error: Option<String>,
    /// The webhook's epoch (its count of enables) when the outcomes were
    /// made, or right after this delta's enable: applied to a record enabled
    /// since (a higher epoch: an operator enabled it through another Envoy),
    /// the outcomes no longer count, as an attempt made before an enable
    /// does not count locally.
    #[serde(default)]
    pub epoch: u64,
}

impl Delta {
    pub fn new(fingerprint: u64) -> Delta {
        Delta {
            fingerprint,
            ..Delta::default()
        }
    }

    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        !self.enabled
            && self.paused_at_ms.is_none()
            && self.lead.is_none()
            && !self.reset
            && self.last_error.is_none()
    }

    /// The delta of one outcome, made while the webhook's epoch was `epoch`
    /// (for an enable: the epoch right after it).
    pub fn of(fingerprint: u64, epoch: u64, outcome: &Outcome<'_>) -> Delta {
        let mut delta = Delta::new(fingerprint);
        delta.epoch = epoch;
        match outcome {
            Outcome::Success => delta.reset = true,
            Outcome::Enable => delta.enabled = true,
            Outcome::Pause { at_ms } => delta.paused_at_ms = Some(*at_ms),
            Outcome::Failure { error, at } => {
                delta.lead = Some(Run {
                    count: 1,
                    first_at: *at,
                    last_at: *at,
                    gone: false,
                });
                delta.last_error = Some((*error).to_string());
            }
            Outcome::Gone { at } => {
                delta.lead = Some(Run {
                    count: 1,
                    first_at: *at,
                    last_at: *at,
                    gone: true,
                });
                delta.last_error = Some("HTTP 410".to_string());
            }
        }
        delta
    }

    /// The operator's part of this delta (enable, pause) without its
    /// outcomes: what is left of it under a later epoch (and the last error
    /// seen, which stays true).
    fn operator_only(self) -> Delta {
        Delta {
            fingerprint: self.fingerprint,
            enabled: self.enabled,
            paused_at_ms: self.paused_at_ms,
            last_error: self.last_error,
            epoch: self.epoch,
            ..Delta::default()
        }
    }

    /// This delta followed by `later`: the same effect as applying both in turn.
    pub fn then(self, later: Delta, policy: &DeliveryPolicy) -> Delta {
        // Outcomes made under an older epoch than the other part's were made
        // before an enable the local record has seen since: they no longer count.
        let epoch = self.epoch.max(later.epoch);
        let (this, later) = match self.epoch.cmp(&later.epoch) {
            std::cmp::Ordering::Less => (self.operator_only(), later),
            std::cmp::Ordering::Greater => (self, later.operator_only()),
            std::cmp::Ordering::Equal => (self, later),
        };
        Delta {
            epoch,
            ..this.compose(later, policy)
        }
    }

    fn compose(self, later: Delta, policy: &DeliveryPolicy) -> Delta {
        let last_error = later.last_error.or(self.last_error);
        if later.enabled {
            // Whatever came before, an enable leaves the webhook ENABLED with no failures.
            return Delta {
                last_error,
                ..later
            };
        }
        let fingerprint = later.fingerprint;
        if self.paused_at_ms.is_some() || later.paused_at_ms.is_some() {
            // Paused: outcomes no longer change the status, and the first
            // pause's time stands (a second pause changes nothing).
            return Delta {
                fingerprint,
                enabled: self.enabled,
                paused_at_ms: self.paused_at_ms.or(later.paused_at_ms),
                last_error,
                ..Delta::new(fingerprint)
            };
        }
        if !self.reset {
            return Delta {
                fingerprint,
                enabled: self.enabled,
                paused_at_ms: None,
                lead: joined(self.lead, later.lead),
                reset: later.reset,
                failed_within: later.failed_within,
                trail: later.trail,
                last_error,
                epoch: later.epoch,
            };
        }
        if self.failed_within.is_some() {
            // FAILED sticks: only an enable (handled above) changes it.
            return Delta {
                fingerprint,
                last_error,
                ..self
            };
        }
        // After a reset, failures count from zero: a run that reaches FAILED
        // does so whatever the record said.
        let run = joined(self.trail, later.lead);
        let run_failed = run
            .as_ref()
            .is_some_and(|run| run.failure_reason(0, None, policy).is_some());
        let (failed_within, trail) = if run_failed {
            (run, None)
        } else if later.reset {
            (later.failed_within, later.trail)
        } else {
            (None, run)
        };
        Delta {
            fingerprint,
            enabled: self.enabled,
            paused_at_ms: None,
            lead: self.lead,
            reset: true,
            failed_within,
            trail,
            last_error,
            epoch: later.epoch,
        }
    }

    /// `record` with this delta applied, and the change of status it makes.
    /// The counts (`delivered`, `failed`) are not touched: they stay per Envoy.
    pub fn apply(
        &self,
        record: &WebhookHealth,
        policy: &DeliveryPolicy,
    ) -> (WebhookHealth, Option<Transition>) {
        let mut health = record.clone();
        let from = health.status;
        let mut reason = String::new();
        if self.enabled && health.enable().is_some() {
            reason = "enabled through the admin API".to_string();
        }
        if let Some(at_ms) = self.paused_at_ms {
            if let Some(paused) = health.pause(at_ms) {
                reason = paused.reason;
            }
        }
        // Enabled since the outcomes were made (through another Envoy): they
        // no longer count, as attempts made before an enable do not locally.
        // Outcomes after an enable of this delta's own were made since it.
        let current = self.enabled || self.epoch >= record.epoch;
        if current {
            if let Some(error) = &self.last_error {
                health.last_error = Some(error.clone());
            }
        }
        if current && health.status.delivers() {
            self.apply_outcomes(&mut health, policy, &mut reason);
        }
        let transition = (health.status != from).then_some(Transition {
            from,
            to: health.status,
            reason,
        });
        (health, transition)
    }

    fn apply_outcomes(
        &self,
        health: &mut WebhookHealth,
        policy: &DeliveryPolicy,
        reason: &mut String,
    ) {
        let error = self.last_error.as_deref().unwrap_or("-");
        if let Some(lead) = &self.lead {
            let failed =
                lead.failure_reason(health.consecutive_failures, health.first_failed_at, policy);
            fail(
                health,
                lead,
                health.consecutive_failures,
                failed,
                error,
                reason,
            );
            if health.status == Status::Failed {
                return;
            }
        }
        if !self.reset {
            return;
        }
        if health.status == Status::Failing {
            *reason = format!(
                "delivery succeeded after {} consecutive failure(s)",
                health.consecutive_failures
            );
        }
        health.status = Status::Enabled;
        health.consecutive_failures = 0;
        health.first_failed_at = None;
        if let Some(run) = &self.failed_within {
            let failed = run.failure_reason(0, None, policy);
            fail(health, run, 0, failed, error, reason);
            return;
        }
        if let Some(trail) = &self.trail {
            let failed = trail.failure_reason(0, None, policy);
            fail(health, trail, 0, failed, error, reason);
        }
    }
}

/// `run` happened to a delivering webhook with `prior` consecutive failures.
fn fail(
    health: &mut WebhookHealth,
    run: &Run,
    prior: u64,
    failed: Option<String>,
    error: &str,
    reason: &mut String,
) {
    health.consecutive_failures = prior.saturating_add(run.count);
    let since = health.first_failed_at.unwrap_or(run.first_at);
    health.first_failed_at = Some(since.min(run.first_at));
    match failed {
        Some(why) => {
            health.status = Status::Failed;
            *reason = format!("{why}; last error: {error}");
        }
        None => {
            health.status = Status::Failing;
            *reason = format!("delivery failed: {error}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy() -> DeliveryPolicy {
        DeliveryPolicy {
            failure_threshold: 4,
            failing_window_s: 50,
            ..DeliveryPolicy::default()
        }
    }

    fn base(status: Status, consecutive: u64, since: Option<u64>) -> WebhookHealth {
        WebhookHealth {
            fingerprint: 7,
            status,
            consecutive_failures: consecutive,
            first_failed_at: since,
            last_error: None,
            delivered: 0,
            failed: 0,
            epoch: 0,
            paused_at_ms: None,
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Success,
        Failure(u64),
        Gone(u64),
        Enable,
        Pause(u64),
    }

    fn outcome(op: &Op) -> Outcome<'static> {
        match op {
            Op::Success => Outcome::Success,
            Op::Failure(at) => Outcome::Failure {
                error: "HTTP 500",
                at: *at,
            },
            Op::Gone(at) => Outcome::Gone { at: *at },
            Op::Enable => Outcome::Enable,
            Op::Pause(at) => Outcome::Pause { at_ms: *at * 1000 },
        }
    }

    /// The outcomes applied one by one, as a single Envoy does.
    fn replay(record: &WebhookHealth, ops: &[Op]) -> WebhookHealth {
        let policy = policy();
        let mut health = record.clone();
        for op in ops {
            match op {
                Op::Success => {
                    health.record_success();
                }
                Op::Failure(at) => {
                    health.record_failure("HTTP 500", *at, &policy);
                }
                Op::Gone(at) => {
                    health.record_gone(*at);
                }
                Op::Enable => {
                    health.enable();
                }
                Op::Pause(at) => {
                    health.pause(*at * 1000);
                }
            }
        }
        health
    }

    /// The delta a single Envoy records for `ops` on `record`: each outcome
    /// with the epoch the local record has then (after an enable, the new one).
    fn delta_of(record: &WebhookHealth, ops: &[Op]) -> Delta {
        let mut local = record.clone();
        let mut delta = Delta::new(7);
        for op in ops {
            local = replay(&local, std::slice::from_ref(op));
            delta = delta.then(Delta::of(7, local.epoch, &outcome(op)), &policy());
        }
        delta
    }

    /// What the cluster record keeps: the status and, while still delivering,
    /// the current run of failures.
    /// Status, the current run of failures, and when it was paused.
    type Standing = (Status, Option<(u64, Option<u64>)>, Option<u64>);

    fn standing(health: &WebhookHealth) -> Standing {
        let run = health
            .status
            .delivers()
            .then_some((health.consecutive_failures, health.first_failed_at));
        (health.status, run, health.paused_at_ms)
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        // Times only go forward, as a clock does.
        prop::collection::vec((0..11u8, 0..30u64), 0..24).prop_map(|raw| {
            let mut now = 1_000;
            raw.into_iter()
                .map(|(kind, step)| {
                    now += step;
                    match kind {
                        0..=3 => Op::Success,
                        4..=7 => Op::Failure(now),
                        8 => Op::Gone(now),
                        9 => Op::Pause(now),
                        _ => Op::Enable,
                    }
                })
                .collect()
        })
    }

    fn record() -> impl Strategy<Value = WebhookHealth> {
        prop_oneof![
            Just(base(Status::Enabled, 0, None)),
            (1..4u64, 960..1_000u64).prop_map(|(n, t)| base(Status::Failing, n, Some(t))),
            Just(base(Status::Failed, 4, Some(990))),
            Just(base(Status::Disabled, 0, None)),
            Just(WebhookHealth {
                paused_at_ms: Some(900_000),
                ..base(Status::Disabled, 0, None)
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// A delta, however it was composed, applies exactly as the outcomes would one by one.
        #[test]
        fn a_delta_applies_like_its_outcomes(record in record(), ops in ops(), split in 0..25usize) {
            let split = split.min(ops.len());
            let expected = replay(&record, &ops);
            let whole = delta_of(&record, &ops);
            let halfway = replay(&record, &ops[..split]);
            let halves = delta_of(&record, &ops[..split]).then(delta_of(&halfway, &ops[split..]), &policy());
            for delta in [whole, halves] {
                let (applied, transition) = delta.apply(&record, &policy());
                prop_assert_eq!(standing(&applied), standing(&expected), "delta {:?}", delta);
                prop_assert_eq!(transition.map(|t| t.to), (expected.status != record.status).then_some(expected.status));
                if ops.iter().any(|op| matches!(op, Op::Failure(_) | Op::Gone(_))) {
                    prop_assert!(applied.last_error.is_some());
                }
            }
        }

        /// Failures recorded by different replicas add up, whichever writes first.
        #[test]
        fn failures_from_replicas_add_up(a in 0..6u64, b in 0..6u64) {
            let failures = |n: u64| (0..n).map(|i| Op::Failure(1_000 + i)).collect::<Vec<_>>();
            let start = base(Status::Enabled, 0, None);
            let (after_a, _) = delta_of(&start, &failures(a)).apply(&start, &policy());
            let (after_both, _) = delta_of(&start, &failures(b)).apply(&after_a, &policy());
            let expected = if a + b >= 4 { Status::Failed } else if a + b > 0 { Status::Failing } else { Status::Enabled };
            prop_assert_eq!(after_both.status, expected);
        }
    }

    #[test]
    fn an_enable_applies_to_a_failed_record_and_bumps_its_epoch() {
        let failed = base(Status::Failed, 4, Some(990));
        let (health, transition) = Delta::of(7, 1, &Outcome::Enable).apply(&failed, &policy());
        assert_eq!(health.status, Status::Enabled);
        assert_eq!(health.epoch, 1);
        assert_eq!(health.consecutive_failures, 0);
        let transition = transition.map(|t| t.reason);
        assert_eq!(transition.as_deref(), Some("enabled through the admin API"));
    }

    /// Failures an Envoy made on its own (cut off from etcd) before an
    /// operator enabled the webhook through another Envoy.
    fn failures_at(epoch: u64, n: u64) -> Delta {
        (0..n).fold(Delta::new(7), |delta, i| {
            let failure = Outcome::Failure {
                error: "HTTP 503",
                at: 1_000 + i,
            };
            delta.then(Delta::of(7, epoch, &failure), &policy())
        })
    }

    #[test]
    fn failures_made_before_an_enable_elsewhere_do_not_undo_it() {
        let enabled_elsewhere = WebhookHealth {
            epoch: 1,
            ..base(Status::Enabled, 0, None)
        };
        let (health, transition) = failures_at(0, 6).apply(&enabled_elsewhere, &policy());
        assert_eq!(health, enabled_elsewhere);
        assert!(transition.is_none());
        // The same failures made after the enable (the Envoy saw it) count.
        let (health, _) = failures_at(1, 6).apply(&enabled_elsewhere, &policy());
        assert_eq!(health.status, Status::Failed);
    }

    #[test]
    fn outcomes_of_an_older_epoch_drop_out_of_a_composed_delta() {
        // 3 failures, then the local record follows an enable (epoch 1), then
        // 2 failures: 2 count, not 5 (the threshold is 4).
        let delta = failures_at(0, 3).then(failures_at(1, 2), &policy());
        assert_eq!(delta.epoch, 1);
        let record = WebhookHealth {
            epoch: 1,
            ..base(Status::Enabled, 0, None)
        };
        let (health, _) = delta.apply(&record, &policy());
        assert_eq!(
            (health.status, health.consecutive_failures),
            (Status::Failing, 2)
        );
        // And a late outcome of the old epoch after newer ones changes nothing.
        let late = failures_at(1, 2).then(failures_at(0, 3), &policy());
        assert_eq!(late.apply(&record, &policy()).0, health);
        // An enable made here stays whatever epoch follows.
        let enable = Delta::of(7, 1, &Outcome::Enable);
        let kept = enable.then(failures_at(2, 1), &policy());
        assert!(kept.enabled);
    }

    #[test]
    fn a_success_on_a_clean_record_changes_nothing() {
        let clean = base(Status::Enabled, 0, None);
        let (health, transition) = Delta::of(7, 0, &Outcome::Success).apply(&clean, &policy());
        assert_eq!(health, clean);
        assert!(transition.is_none());
    }

    #[test]
    fn the_reason_names_the_threshold_across_replicas() {
        let failing = base(Status::Failing, 3, Some(1_000));
        let delta = Delta::of(
            7,
            0,
            &Outcome::Failure {
                error: "HTTP 503",
                at: 1_001,
            },
        );
        let (health, transition) = delta.apply(&failing, &policy());
        assert_eq!(health.status, Status::Failed);
        let reason = transition.map(|t| t.reason).unwrap_or_default();
        assert!(
            reason.contains("4 consecutive failures (all replicas) reached failure_threshold 4")
        );
        assert!(reason.ends_with("last error: HTTP 503"), "{reason}");
    }
}
