//! The worker's root context: configuration, and every delivery call.

use std::rc::Rc;
use std::time::Duration;

use hashbrown::HashMap;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType};

use crate::config::{AdminToken, PluginConfig};
use crate::delivery::{self, QueuedDelivery};
use crate::matcher::Matcher;

use super::health_store;
use super::host;
use super::metrics::Metrics;
use super::plugin::Plugin;
use super::stream::EventStream;

/// A delivery call waiting for its answer.
struct InFlight {
    webhook: usize,
    fingerprint: u64,
    started_ms: u64,
}

#[derive(Default)]
pub struct WebhooksRoot {
    plugin: Option<Rc<Plugin>>,
    queue_id: Option<u32>,
    in_flight: HashMap<u32, InFlight>,
}

impl WebhooksRoot {
    fn load(&mut self) -> Result<Plugin, Vec<String>> {
        let bytes = host::buffer(BufferType::PluginConfiguration, usize::MAX).unwrap_or_default();
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(vec![
                "the plugin configuration is empty: set the Wasm filter's `configuration` to the webhooks JSON".to_string(),
            ]);
        }
        let config = PluginConfig::from_json(&bytes)
            .map_err(|e| e.problems.iter().map(|p| p.to_string()).collect::<Vec<_>>())?;
        let admin_token = match config.admin.as_ref().map(|admin| &admin.token) {
            None => None,
            Some(AdminToken::Literal(token)) => Some(token.clone()),
            Some(AdminToken::Env(name)) => match std::env::var(name) {
                Ok(token) if !token.is_empty() => Some(token),
                _ => {
                    return Err(vec![format!(
                        "admin: field 'token_env': environment variable {name} is not set in the Wasm VM (list it in vm_config.environment_variables)"
                    )])
                }
            },
        };
        let queue_id = match self.queue_id {
            Some(id) => id,
            None => {
                let number = health_store::unique_vm_number().ok_or_else(|| {
                    vec!["cannot allocate a delivery queue in shared data".to_string()]
                })?;
                let name = format!("envoy_webhooks/deliveries/{number}");
                let id = hostcalls::register_shared_queue(&name).map_err(|status| {
                    vec![format!("cannot register shared queue {name}: {status:?}")]
                })?;
                self.queue_id = Some(id);
                id
            }
        };
        let metrics = Metrics::define(&config.webhooks);
        let now_s = host::now_ms() / 1000;
        for (index, definition) in config.webhooks.iter().enumerate() {
            // Creates the record, or starts it afresh when the definition changed.
            let health = health_store::update(definition, now_s, |_| None)
                .map(|(health, _)| health)
                .unwrap_or_else(|| health_store::load(definition, now_s));
            metrics.webhook(index).set_status(health.status);
        }
        let webhooks = config.webhooks.clone();
        Ok(Plugin {
            matcher: Matcher::new(webhooks),
            config,
            admin_token,
            metrics,
            queue_id,
        })
    }

    fn dispatch(&mut self, plugin: &Plugin, delivery: QueuedDelivery) {
        let index = delivery.webhook as usize;
        let Some(definition) = plugin
            .definitions()
            .get(index)
            .filter(|d| d.fingerprint == delivery.fingerprint)
        else {
            log::debug!(
                "envoy-webhooks: dropping a delivery queued under a previous configuration"
            );
            return;
        };
        let metrics = plugin.metrics.webhook(index);
        let now_ms = host::now_ms();
        let health = health_store::load(definition, now_ms / 1000);
        if !health.status.delivers() {
            log::debug!(
                "envoy-webhooks: webhook {} is {}: not called",
                definition.id,
                health.status
            );
            return;
        }
        let policy = plugin.config.delivery;
        if self.in_flight.len() >= policy.max_in_flight {
            metrics.dropped.increment();
            log::warn!(
                "envoy-webhooks: webhook {}: delivery dropped: {} calls already in flight on this worker (delivery.max_in_flight)",
                definition.id,
                self.in_flight.len()
            );
            return;
        }
        let headers = delivery::request_headers(definition);
        match hostcalls::dispatch_http_call(
            &definition.cluster,
            headers,
            Some(&delivery.body),
            Vec::new(),
            Duration::from_millis(policy.timeout_ms),
        ) {
            Ok(token) => {
                self.in_flight.insert(
                    token,
                    InFlight {
                        webhook: index,
                        fingerprint: definition.fingerprint,
                        started_ms: now_ms,
                    },
                );
            }
            Err(status) => {
                log::warn!(
                    "envoy-webhooks: webhook {}: cannot call cluster '{}' ({status:?}): define a cluster of that name in Envoy, or set the webhook's \"cluster\" to one",
                    definition.id,
                    definition.cluster
                );
                let error = format!("cannot call cluster '{}'", definition.cluster);
                self.record(plugin, index, Err(error));
            }
        }
    }

    fn record(&self, plugin: &Plugin, index: usize, outcome: Result<(), String>) {
        let Some(definition) = plugin.definitions().get(index) else {
            return;
        };
        let metrics = plugin.metrics.webhook(index);
        let now_s = host::now_ms() / 1000;
        let policy = plugin.config.delivery;
        let updated = match &outcome {
            Ok(()) => {
                metrics.delivered.increment();
                health_store::update(definition, now_s, |health| health.record_success())
            }
            Err(error) => {
                metrics.failed.increment();
                log::debug!(
                    "envoy-webhooks: webhook {}: delivery failed: {error}",
                    definition.id
                );
                health_store::update(definition, now_s, |health| {
                    health.record_failure(error, now_s, &policy)
                })
            }
        };
        if let Some((_, transition)) = updated {
            plugin.report(index, transition.as_ref());
        }
    }
}

impl Context for WebhooksRoot {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        _body_size: usize,
        _num_trailers: usize,
    ) {
        let Some(call) = self.in_flight.remove(&token_id) else {
            return;
        };
        let Some(plugin) = self.plugin.clone() else {
            return;
        };
        let still_same = plugin
            .definitions()
            .get(call.webhook)
            .is_some_and(|d| d.fingerprint == call.fingerprint);
        if !still_same {
            return;
        }
        let status = host::call_response_header(":status");
        let elapsed_ms = host::now_ms().saturating_sub(call.started_ms);
        let outcome = delivery::outcome(
            status.as_deref(),
            elapsed_ms,
            plugin.config.delivery.timeout_ms,
        );
        self.record(&plugin, call.webhook, outcome);
    }
}

impl RootContext for WebhooksRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        match self.load() {
            Ok(plugin) => {
                log::info!(
                    "envoy-webhooks {}: loaded {} webhook definition(s)",
                    env!("CARGO_PKG_VERSION"),
                    plugin.definitions().len()
                );
                self.plugin = Some(Rc::new(plugin));
                true
            }
            Err(problems) => {
                log::error!(
                    "envoy-webhooks: invalid configuration ({} problem{}), refusing it:",
                    problems.len(),
                    if problems.len() == 1 { "" } else { "s" }
                );
                for problem in &problems {
                    log::error!("envoy-webhooks: invalid configuration: {problem}");
                }
                false
            }
        }
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        let Some(plugin) = self.plugin.clone() else {
            return;
        };
        while let Ok(Some(bytes)) = hostcalls::dequeue_shared_queue(queue_id) {
            match QueuedDelivery::decode(&bytes) {
                Some(delivery) => self.dispatch(&plugin, delivery),
                None => log::warn!("envoy-webhooks: ignoring a malformed queued delivery"),
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(EventStream::new(self.plugin.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
