//! A webhook's delivery health: the status machine iconik describes ("if
//! calling the webhook keeps failing the status will automatically be set to
//! failed"), with the counts behind it.
//!
//! The state lives in proxy-wasm shared data so that every worker sees and
//! updates the same record; this module is the pure part: the record, its
//! encoding and its transitions.

use serde::{Deserialize, Serialize};

use crate::config::{DeliveryPolicy, WebhookDefinition};
use crate::logging::Printable;
use crate::status::Status;

/// What all workers know about one webhook: the record kept in shared data
/// (see `webhook::store`), as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookHealth {
    /// The definition this record belongs to; a changed definition starts afresh.
    pub fingerprint: u64,
    pub status: Status,
    pub consecutive_failures: u64,
    /// Unix seconds of the first failure of the current run of failures.
    pub first_failed_at: Option<u64>,
    pub last_error: Option<String>,
    /// Successful deliveries so far.
    pub delivered: u64,
    /// Failed deliveries so far.
    pub failed: u64,
    /// Counts operator `enable`s. An attempt remembers the epoch it was made
    /// in; its outcome counts for the status only while the epoch is the same,
    /// so calls made before an `enable` cannot fail the webhook again.
    #[serde(default)]
    pub epoch: u64,
    /// Unix ms at which an operator paused the webhook (`disable`): it is
    /// `DISABLED` until enabled again. `None` for a configured `DISABLED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_at_ms: Option<u64>,
}

/// A change of status, with its reason, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub from: Status,
    pub to: Status,
    pub reason: String,
}

impl Transition {
    /// One info line for the change of webhook `id`, with its reason.
    pub fn log(&self, id: &str) {
        log::info!(
            "envoy-webhooks: webhook {id} status {} -> {}: {}",
            self.from,
            self.to,
            Printable(&self.reason)
        );
    }
}

impl WebhookHealth {
    /// The state a definition starts in: its configured status.
    pub fn initial(definition: &WebhookDefinition, now_s: u64) -> WebhookHealth {
        WebhookHealth {
            fingerprint: definition.fingerprint,
            status: definition.status,
            consecutive_failures: 0,
            first_failed_at: (definition.status == Status::Failing).then_some(now_s),
            last_error: None,
            delivered: 0,
            failed: 0,
            epoch: 0,
            paused_at_ms: None,
        }
    }

    /// An operator paused it (`DISABLED` by the admin API, not the configuration).
    pub fn is_paused(&self) -> bool {
        self.status == Status::Disabled && self.paused_at_ms.is_some()
    }

    /// A delivery got a 2xx answer.
    pub fn record_success(&mut self) -> Option<Transition> {
        self.delivered += 1;
        if self.status != Status::Failing {
            // A late success does not revive a FAILED webhook: only an operator does.
            return None;
        }
        let failures = self.consecutive_failures;
        self.status = Status::Enabled;
        self.consecutive_failures = 0;
        self.first_failed_at = None;
        Some(Transition {
            from: Status::Failing,
            to: Status::Enabled,
            reason: format!("delivery succeeded after {failures} consecutive failure(s)"),
        })
    }

    /// A delivery failed with `error` (e.g. `HTTP 503`) at `now_s`.
    pub fn record_failure(
        &mut self,
        error: &str,
        now_s: u64,
        policy: &DeliveryPolicy,
    ) -> Option<Transition> {
        self.failed += 1;
        self.last_error = Some(error.to_string());
        let from = self.status;
        if !matches!(from, Status::Enabled | Status::Failing) {
            return None;
        }
        self.consecutive_failures += 1;
        let first_failed_at = *self.first_failed_at.get_or_insert(now_s);
        let failing_for = now_s.saturating_sub(first_failed_at);
        let reason = if self.consecutive_failures >= policy.failure_threshold {
            self.status = Status::Failed;
            format!(
                "{} consecutive failures reached failure_threshold {}; last error: {error}",
                self.consecutive_failures, policy.failure_threshold
            )
        } else if failing_for >= policy.failing_window_s {
            self.status = Status::Failed;
            format!(
                "failing for {failing_for} s, reaching failing_window_s {}; last error: {error}",
                policy.failing_window_s
            )
        } else {
            self.status = Status::Failing;
            format!("delivery failed: {error}")
        };
        (self.status != from).then_some(Transition {
            from,
            to: self.status,
            reason,
        })
    }

    /// The receiver answered `410 Gone`: it wants no more deliveries, so the
    /// webhook is `FAILED` at once (the Standard Webhooks meaning).
    pub fn record_gone(&mut self, now_s: u64) -> Option<Transition> {
        self.failed += 1;
        self.last_error = Some("HTTP 410".to_string());
        let from = self.status;
        if !matches!(from, Status::Enabled | Status::Failing) {
            return None;
        }
        self.consecutive_failures += 1;
        self.first_failed_at.get_or_insert(now_s);
        self.status = Status::Failed;
        Some(Transition {
            from,
            to: Status::Failed,
            reason: "the receiver answered 410 Gone".to_string(),
        })
    }

    /// An operator says the receiver is fixed, or ends a pause: back to
    /// `ENABLED`. A configured `DISABLED` stays. The epoch moves on even for
    /// a webhook that is `ENABLED` here: failures made before the enable (by
    /// calls in flight, or by an Envoy cut off from etcd) no longer count.
    pub fn enable(&mut self) -> Option<Transition> {
        let from = self.status;
        if from == Status::Disabled && !self.is_paused() {
            return None;
        }
        self.epoch = self.epoch.wrapping_add(1);
        if from == Status::Enabled {
            return None;
        }
        self.status = Status::Enabled;
        self.consecutive_failures = 0;
        self.first_failed_at = None;
        self.paused_at_ms = None;
        Some(Transition {
            from,
            to: Status::Enabled,
            reason: "enabled through the admin API".to_string(),
        })
    }

    /// An operator pauses the webhook at `now_ms`: `DISABLED`, not called,
    /// until `enable`. Already paused, or `DISABLED` by the configuration:
    /// unchanged.
    pub fn pause(&mut self, now_ms: u64) -> Option<Transition> {
        let from = self.status;
        if from == Status::Disabled {
            return None;
        }
        self.status = Status::Disabled;
        self.paused_at_ms = Some(now_ms);
        Some(Transition {
            from,
            to: Status::Disabled,
            reason: "paused through the admin API (disable)".to_string(),
        })
    }

    /// The record as stored in shared data.
    pub fn encode(&self) -> Vec<u8> {
        // A struct of strings and integers always serialises.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// `None` for bytes that are not a record (e.g. written by another version).
    pub fn decode(bytes: &[u8]) -> Option<WebhookHealth> {
        serde_json::from_slice(bytes).ok()
    }
}
