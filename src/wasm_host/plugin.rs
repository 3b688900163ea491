//! A loaded configuration, shared by a worker's root and its request contexts.

use std::cell::RefCell;
use std::rc::Rc;

use crate::config::{PluginConfig, WebhookDefinition};
use crate::fields::FieldTree;
use crate::health::Transition;
use crate::held::HeldBytes;
use crate::logging::{suppressed_note, Printable, WarningLimiter};
use crate::matcher::Matcher;
use crate::signature::SigningSecret;

use super::metrics::Metrics;

pub struct Plugin {
    pub config: PluginConfig,
    pub matcher: Matcher,
    /// What of an event matching reads: events are parsed to just that.
    pub fields: Rc<FieldTree>,
    /// The admin bearer token, resolved from the configuration or the VM's environment.
    pub admin_token: Option<String>,
    /// Each webhook's signing secrets (empty: unsigned), in configuration order.
    pub secrets: Vec<Vec<SigningSecret>>,
    pub metrics: Metrics,
    /// This worker's delivery queue.
    pub queue_id: u32,
    /// The worker's budget for held event bodies (`delivery.max_held_bytes`).
    pub held: HeldBytes,
    /// Repeated warnings get one line per interval.
    pub warnings: RefCell<WarningLimiter>,
}

impl Plugin {
    pub fn definitions(&self) -> &[WebhookDefinition] {
        self.matcher.definitions()
    }

    /// The definition at `index`, if it is still the one with `fingerprint`.
    pub fn definition(&self, index: usize, fingerprint: u64) -> Option<&WebhookDefinition> {
        self.definitions()
            .get(index)
            .filter(|d| d.fingerprint == fingerprint)
    }

    /// Logs a warning of `kind`, at most one line per interval with the
    /// count of those held back; `message` is only formatted when logged.
    pub fn warn(&self, kind: &'static str, now_ms: u64, message: impl FnOnce() -> String) {
        let admitted = match self.warnings.try_borrow_mut() {
            Ok(mut limiter) => limiter.admit(kind, now_ms),
            Err(_) => None,
        };
        if let Some(suppressed) = admitted {
            log::warn!(
                "envoy-webhooks: {}{}",
                message(),
                suppressed_note(suppressed)
            );
        }
    }

    /// Logs a status change (one info line, with the reason) and updates the gauge.
    pub fn report(&self, index: usize, transition: Option<&Transition>) {
        let Some(transition) = transition else {
            return;
        };
        if let Some(definition) = self.definitions().get(index) {
            log::info!(
                "envoy-webhooks: webhook {} status {} -> {}: {}",
                definition.id,
                transition.from,
                transition.to,
                Printable(&transition.reason)
            );
        }
        self.metrics.webhook(index).set_status(transition.to);
    }
}
