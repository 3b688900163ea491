//! Envoy stats (`define_metric`). Envoy prefixes them with `wasmcustom.`;
//! per-webhook names carry the id as `webhook_id.<id>.` for a `stats_tags` rule.
//!
//! Counter and gauge increments are gathered and added to Envoy's stats by
//! the root's tick (`Metrics::flush`, see `Worker::end_callback`): one host
//! call per stat changed in that time, however often it changed.

use std::cell::RefCell;

use hashbrown::HashMap;
use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

use crate::config::WebhookDefinition;
use crate::status::Status;

const PREFIX: &str = "envoy_webhooks";

/// A stat that may have failed to be defined; then updates are skipped.
#[derive(Debug, Clone, Copy, Default)]
pub struct Metric(Option<u32>);

impl Metric {
    fn define(kind: MetricType, name: &str) -> Metric {
        match hostcalls::define_metric(kind, name) {
            Ok(id) => Metric(Some(id)),
            Err(status) => {
                log::warn!("envoy-webhooks: cannot define metric {name}: {status:?}");
                Metric(None)
            }
        }
    }

    pub fn record(self, value: u64) {
        if let Some(id) = self.0 {
            let _ = hostcalls::record_metric(id, value);
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct WebhookMetrics {
    pub matched: Metric,
    pub delivered: Metric,
    pub failed: Metric,
    pub dropped: Metric,
    /// Attempts after the first.
    pub retried: Metric,
    /// Not made because the platform's upstream did not answer 2xx
    /// (`deliver_on: response_2xx`) or the request ended before it answered.
    pub withheld: Metric,
    /// Failed or dropped deliveries the dead-letter destination accepted.
    pub dead_lettered: Metric,
    /// Failed or dropped deliveries that reached no dead-letter destination
    /// (none configured, or it kept failing); each is logged with its request_id.
    pub lost: Metric,
    /// Taken over from an Envoy that went away (cluster state).
    pub adopted: Metric,
    /// Left in etcd for another Envoy when this filter stopped (cluster state).
    pub handed_off: Metric,
    pub orphaned: Metric,
    /// Handed in through the admin API (`deliver`).
    pub injected: Metric,
    /// Matched while paused by the admin API (`disable`): not made.
    pub paused: Metric,
    /// Deliveries that waited for the webhook's rate limit.
    pub throttled: Metric,
    /// 0 ENABLED, 1 FAILING, 2 FAILED, 3 DISABLED.
    pub status: Metric,
}

impl WebhookMetrics {
    fn define(id: &str) -> WebhookMetrics {
        let name = |what: &str| format!("{PREFIX}.webhook_id.{id}.{what}");
        WebhookMetrics {
            matched: Metric::define(MetricType::Counter, &name("matched")),
            delivered: Metric::define(MetricType::Counter, &name("delivered")),
            failed: Metric::define(MetricType::Counter, &name("failed")),
            dropped: Metric::define(MetricType::Counter, &name("dropped")),
            retried: Metric::define(MetricType::Counter, &name("retried")),
            withheld: Metric::define(MetricType::Counter, &name("withheld")),
            dead_lettered: Metric::define(MetricType::Counter, &name("dead_lettered")),
            lost: Metric::define(MetricType::Counter, &name("lost")),
            adopted: Metric::define(MetricType::Counter, &name("adopted")),
            handed_off: Metric::define(MetricType::Counter, &name("handed_off")),
            orphaned: Metric::define(MetricType::Counter, &name("orphaned")),
            injected: Metric::define(MetricType::Counter, &name("injected")),
            paused: Metric::define(MetricType::Counter, &name("paused")),
            throttled: Metric::define(MetricType::Counter, &name("throttled")),
            status: Metric::define(MetricType::Gauge, &name("status")),
        }
    }

    /// The stats all tenants' webhooks share (`envoy_webhooks.api_webhooks.*`),
    /// without a status gauge (one value cannot say many statuses).
    fn define_tenants() -> WebhookMetrics {
        let name = |what: &str| format!("{PREFIX}.api_webhooks.{what}");
        let counter = |what: &str| Metric::define(MetricType::Counter, &name(what));
        WebhookMetrics {
            matched: counter("matched"),
            delivered: counter("delivered"),
            failed: counter("failed"),
            dropped: counter("dropped"),
            retried: counter("retried"),
            withheld: counter("withheld"),
            dead_lettered: counter("dead_lettered"),
            lost: counter("lost"),
            adopted: counter("adopted"),
            handed_off: counter("handed_off"),
            orphaned: counter("orphaned"),
            injected: counter("injected"),
            paused: counter("paused"),
            throttled: counter("throttled"),
            status: Metric(None),
        }
    }

    pub fn set_status(&self, status: Status) {
        self.status.record(status.gauge_value());
    }
}

#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub events_seen: Metric,
    pub events_invalid: Metric,
    pub events_oversized: Metric,
    /// Deliveries waiting for a retry when their webhook's definition changed.
    pub deliveries_discarded: Metric,
    /// Events of a request past `events.max_events_per_request`, not read.
    pub events_over_limit: Metric,
    /// Matches of a request past `events.max_deliveries_per_request`: not made.
    pub deliveries_over_limit: Metric,
    /// Webhook queries not matched because their regexes ran out of budget.
    pub regex_over_budget: Metric,
    /// Failed calls to the cluster store (etcd) and records in it that do not decode.
    pub cluster_state_errors: Metric,
    /// Status records of webhooks no Envoy has any more, deleted from etcd.
    pub cluster_state_records_removed: Metric,
    /// Gauge: bytes of event bodies held for deliveries, summed over workers.
    pub held_bytes: Metric,
    /// Gauge: `delivery.max_held_bytes` summed over the root contexts that
    /// hold bodies (each worker's, and the main thread's): what `held_bytes`
    /// is measured against.
    pub held_bytes_limit: Metric,
    /// Gauge: tenants' webhooks held, summed over the root contexts (each
    /// worker's and the main thread's): with N workers, N+1 times the set
    /// once every one has read it.
    pub api_webhooks_loaded: Metric,
    /// In configuration order.
    pub webhooks: Vec<WebhookMetrics>,
    /// Every tenant's webhook (made through the API) counts here together:
    /// a stat per tenant webhook would grow without bound. Their own counts
    /// are in the API's answers.
    tenants: WebhookMetrics,
    /// Positions in `webhooks` by webhook id.
    by_id: HashMap<String, usize>,
    /// Increments not yet added to Envoy's stats: the sum by metric id.
    pending: RefCell<HashMap<u32, i64>>,
}

impl Metrics {
    pub fn define(definitions: &[WebhookDefinition]) -> Metrics {
        let global = |name: &str| Metric::define(MetricType::Counter, &format!("{PREFIX}.{name}"));
        let webhooks = definitions
            .iter()
            .map(|definition| WebhookMetrics::define(&definition.id))
            .collect();
        let by_id = definitions
            .iter()
            .enumerate()
            .map(|(index, d)| (d.id.clone(), index))
            .collect();
        Metrics {
            events_seen: global("events_seen"),
            events_invalid: global("events_invalid"),
            events_oversized: global("events_oversized"),
            deliveries_discarded: global("deliveries_discarded"),
            events_over_limit: global("events_over_limit"),
            deliveries_over_limit: global("deliveries_over_limit"),
            regex_over_budget: global("regex_over_budget"),
            cluster_state_errors: global("cluster_state_errors"),
            cluster_state_records_removed: global("cluster_state_records_removed"),
            held_bytes: Metric::define(MetricType::Gauge, &format!("{PREFIX}.held_bytes")),
            held_bytes_limit: Metric::define(
                MetricType::Gauge,
                &format!("{PREFIX}.held_bytes_limit"),
            ),
            api_webhooks_loaded: Metric::define(
                MetricType::Gauge,
                &format!("{PREFIX}.api_webhooks.loaded"),
            ),
            webhooks,
            tenants: WebhookMetrics::define_tenants(),
            by_id,
            pending: RefCell::new(HashMap::new()),
        }
    }

    /// Adds `n` to a counter, or to a gauge (negative: subtracts), at the
    /// next `flush`.
    #[inline(never)]
    pub fn add(&self, metric: Metric, n: i64) {
        let (Some(id), false) = (metric.0, n == 0) else {
            return;
        };
        let Ok(mut pending) = self.pending.try_borrow_mut() else {
            // Never re-entered; were it, the increment is not lost.
            let _ = hostcalls::increment_metric(id, n);
            return;
        };
        let sum = pending.entry(id).or_insert(0);
        *sum = sum.saturating_add(n);
    }

    /// Adds the increments gathered since the last flush to Envoy's stats;
    /// `false` if there were none.
    #[inline(never)]
    pub fn flush(&self) -> bool {
        let Ok(mut pending) = self.pending.try_borrow_mut() else {
            return false;
        };
        let any = !pending.is_empty();
        for (id, n) in pending.drain() {
            if n != 0 {
                let _ = hostcalls::increment_metric(id, n);
            }
        }
        any
    }

    /// Increments wait to be added to Envoy's stats.
    pub fn has_pending(&self) -> bool {
        self.pending
            .try_borrow()
            .is_ok_and(|pending| !pending.is_empty())
    }

    /// The stats of webhook `id`. A tenant's (its id is a UUID the API
    /// made) counts with the other tenants'; one no longer configured (a
    /// delivery made before a reload) gets its stats by name, which Envoy keeps.
    pub fn webhook_named(&self, id: &str) -> WebhookMetrics {
        match self.by_id.get(id) {
            Some(&index) => self.webhook(index),
            None if uuid::Uuid::try_parse(id).is_ok() => self.tenants.clone(),
            None => WebhookMetrics::define(id),
        }
    }

    /// The stats of the definition at `index`: past the configured ones,
    /// the tenants' shared stats.
    pub fn webhook(&self, index: usize) -> WebhookMetrics {
        self.webhooks
            .get(index)
            .cloned()
            .unwrap_or_else(|| self.tenants.clone())
    }
}
