//! A loaded plugin configuration: the definitions, their matcher, and what
//! was read from the VM's environment (admin token, API tokens, signing
//! secrets), shared by a worker's root context and its request contexts.
//!
//! The definitions are the configuration's, then the tenants' (made through
//! the API, kept in etcd): one value, swapped whole when the tenants' change
//! (`with_tenants`), which the matcher, the engine and the metrics all read.

use std::cell::RefCell;
use std::rc::Rc;

use hashbrown::HashMap;

use crate::config::{
    default_cluster, tenant_clusters, validate_admin_token, AdminToken, PluginConfig, SecretSource,
    TokenSource, Tokens, WebhookDefinition,
};
use crate::delivery::budget::HeldBytes;
use crate::delivery::queue::WebhookRef;
use crate::delivery::signature::SigningSecret;
use crate::event::view::EventScanner;
use crate::logging::{suppressed_note, WarningLimiter, WARNING_INTERVAL_MS};
use crate::matcher::Matcher;

pub struct Plugin {
    /// Shared by the plugins of one configuration (tenant changes keep it).
    pub config: Rc<PluginConfig>,
    pub matcher: Matcher,
    /// Reads events in one pass, without parsing them; what it is unsure of
    /// is parsed fully (the oracle it is tested against).
    pub scanner: Rc<EventScanner>,
    /// The admin bearer token, resolved from the configuration or the VM's environment.
    pub admin_token: Option<String>,
    /// etcd's user name and password, read from the VM's environment.
    pub cluster_credentials: Option<(String, String)>,
    /// The API's tokens, from the configuration or the VM's environment.
    pub api_tokens: Option<Rc<Tokens>>,
    /// How many of the definitions are the configuration's (they come first).
    configured: usize,
    /// Tenants' definitions by id: a delivery follows its tenant webhook
    /// through changes of URL, headers and secret (the configuration's are
    /// found by fingerprint: a changed one is another webhook).
    tenant_by_id: HashMap<Rc<str>, usize>,
    /// Each webhook's signing secrets (empty: unsigned), in configuration order.
    secrets: Vec<Vec<SigningSecret>>,
    /// Each webhook's reference, in configuration order.
    refs: Vec<WebhookRef>,
    /// Definitions by fingerprint: how deliveries find their webhook.
    by_fingerprint: HashMap<u64, usize>,
    /// The worker's budget for held event bodies (`delivery.max_held_bytes`).
    pub held: Rc<HeldBytes>,
    /// Repeated warnings get one line per interval.
    warnings: RefCell<WarningLimiter>,
}

impl Plugin {
    /// Loads the plugin configuration, reading `token_env` and `secret_env`
    /// through `env`. Returns every problem at once.
    pub fn load(bytes: &[u8], env: impl Fn(&str) -> Option<String>) -> Result<Plugin, Vec<String>> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(vec![
                "the plugin configuration is empty: set the Wasm filter's `configuration` to the webhooks JSON".to_string(),
            ]);
        }
        let config = PluginConfig::from_json(bytes)
            .map_err(|e| e.problems.iter().map(|p| p.to_string()).collect::<Vec<_>>())?;
        let not_set = |name: &str| {
            format!("environment variable {name} is not set in the Wasm VM (list it in vm_config.environment_variables)")
        };
        let mut problems = Vec::new();
        let admin_token = match config.admin.as_ref().map(|admin| &admin.token) {
            None => None,
            Some(AdminToken::Literal(token)) => Some(token.clone()),
            Some(AdminToken::Env(name)) => match env(name) {
                Some(token) if !token.is_empty() => match validate_admin_token(&token) {
                    Ok(()) => Some(token),
                    Err(problem) => {
                        problems.push(format!(
                            "admin: field 'token_env': environment variable {name}: {problem}"
                        ));
                        None
                    }
                },
                _ => {
                    problems.push(format!("admin: field 'token_env': {}", not_set(name)));
                    None
                }
            },
        };
        let cluster_credentials = match config
            .cluster_state
            .as_ref()
            .and_then(|etcd| etcd.credentials_env.as_ref())
        {
            None => None,
            Some((user_env, password_env)) => match (env(user_env), env(password_env)) {
                (Some(user), Some(password)) if !user.is_empty() && !password.is_empty() => {
                    Some((user, password))
                }
                (user, _) => {
                    let name = if user.is_none_or(|u| u.is_empty()) {
                        user_env
                    } else {
                        password_env
                    };
                    problems.push(format!(
                        "cluster_state.etcd: field '{}': {}",
                        if name == user_env {
                            "username_env"
                        } else {
                            "password_env"
                        },
                        not_set(name)
                    ));
                    None
                }
            },
        };
        let api_tokens = match config.api.as_ref().and_then(|api| api.tokens.as_ref()) {
            None => None,
            Some(TokenSource::Tokens(tokens)) => Some(Rc::new(tokens.clone())),
            Some(TokenSource::Env(name)) => {
                let parsed = env(name)
                    .ok_or_else(|| vec![not_set(name)])
                    .and_then(|text| {
                        serde_json::from_str(&text).map_err(|e| {
                            vec![format!("environment variable {name} is not JSON: {e}")]
                        })
                    })
                    .and_then(|value| {
                        Tokens::parse(&value).map_err(|list| {
                            list.into_iter()
                                .map(|p| format!("environment variable {name}: {p}"))
                                .collect()
                        })
                    });
                match parsed {
                    Ok(tokens) => Some(Rc::new(tokens)),
                    Err(list) => {
                        for problem in list {
                            problems.push(format!("api: field 'tokens_env': {problem}"));
                        }
                        None
                    }
                }
            }
        };
        let mut secrets = Vec::with_capacity(config.webhooks.len());
        for definition in &config.webhooks {
            let list = match &definition.signing {
                None => Ok(Vec::new()),
                Some(SecretSource::Secrets(list)) => Ok(list.clone()),
                Some(SecretSource::Env(name)) => match env(name) {
                    None => Err(not_set(name)),
                    Some(text) => SigningSecret::parse_list(&text)
                        .map_err(|e| format!("environment variable {name}: {e}")),
                },
            };
            secrets.push(list.unwrap_or_else(|e| {
                problems.push(format!(
                    "webhook \"{}\": field 'secret_env': {e}",
                    definition.id
                ));
                Vec::new()
            }));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let definitions = config.webhooks.clone();
        let held = Rc::new(HeldBytes::new(config.delivery.max_held_bytes));
        Ok(Plugin::assemble(
            Rc::new(config),
            definitions,
            secrets,
            held,
            admin_token,
            cluster_credentials,
            api_tokens,
        ))
    }

    /// The plugin over `definitions` (the configuration's first).
    fn assemble(
        config: Rc<PluginConfig>,
        definitions: Vec<WebhookDefinition>,
        secrets: Vec<Vec<SigningSecret>>,
        held: Rc<HeldBytes>,
        admin_token: Option<String>,
        cluster_credentials: Option<(String, String)>,
        api_tokens: Option<Rc<Tokens>>,
    ) -> Plugin {
        let configured = config.webhooks.len();
        let refs: Vec<WebhookRef> = definitions
            .iter()
            .map(|d| WebhookRef {
                id: Rc::from(d.id.as_str()),
                fingerprint: d.fingerprint,
            })
            .collect();
        let by_fingerprint = definitions
            .iter()
            .enumerate()
            .map(|(index, d)| (d.fingerprint, index))
            .collect();
        let tenant_by_id = refs
            .iter()
            .enumerate()
            .skip(configured)
            .map(|(index, r)| (r.id.clone(), index))
            .collect();
        let matcher = Matcher::new(definitions);
        Plugin {
            scanner: Rc::new(EventScanner::new(matcher.paths().clone())),
            matcher,
            held,
            config,
            admin_token,
            cluster_credentials,
            api_tokens,
            configured,
            tenant_by_id,
            secrets,
            refs,
            by_fingerprint,
            warnings: RefCell::default(),
        }
    }

    /// This plugin with `tenants` as the tenants' definitions (replacing any
    /// it had); each calls the cluster `api.clusters` (or `delivery.clusters`) names for its
    /// URL's scheme. Those that cannot be called so are left out, logged.
    pub fn with_tenants(&self, tenants: Vec<WebhookDefinition>) -> Plugin {
        let configured = self.configured;
        let mut definitions: Vec<WebhookDefinition> = self
            .definitions()
            .iter()
            .take(configured)
            .cloned()
            .collect();
        let mut secrets: Vec<Vec<SigningSecret>> =
            self.secrets.iter().take(configured).cloned().collect();
        for mut tenant in tenants {
            let clusters = self
                .config
                .api
                .as_ref()
                .and_then(|api| tenant_clusters(api, &self.config.delivery));
            match default_cluster(&tenant.url, clusters) {
                Ok(cluster) => tenant.cluster = cluster,
                Err((_, why)) => {
                    log::warn!(
                        "envoy-webhooks: tenant webhook {} left out: {why}",
                        tenant.id
                    );
                    continue;
                }
            }
            secrets.push(match &tenant.signing {
                Some(SecretSource::Secrets(list)) => list.clone(),
                _ => Vec::new(),
            });
            definitions.push(tenant);
        }
        Plugin::assemble(
            self.config.clone(),
            definitions,
            secrets,
            self.held.clone(),
            self.admin_token.clone(),
            self.cluster_credentials.clone(),
            self.api_tokens.clone(),
        )
    }

    /// How many of the definitions are tenants' (made through the API).
    pub fn tenant_count(&self) -> usize {
        self.definitions().len().saturating_sub(self.configured)
    }

    /// Whether the definition at `index` is a tenant's (made through the API).
    pub fn is_tenants(&self, index: usize) -> bool {
        index >= self.configured
    }

    pub fn definitions(&self) -> &[WebhookDefinition] {
        self.matcher.definitions()
    }

    /// The reference deliveries to the webhook at `index` carry.
    pub fn webhook_ref(&self, index: usize) -> Option<&WebhookRef> {
        self.refs.get(index)
    }

    /// The webhook with this fingerprint, if the configuration still has it.
    pub fn resolve_fingerprint(&self, fingerprint: u64) -> Option<(usize, &WebhookDefinition)> {
        let index = *self.by_fingerprint.get(&fingerprint)?;
        Some((index, self.definitions().get(index)?))
    }

    /// The webhook `webhook` refers to: the configuration's if it still has
    /// it unchanged, a tenant's if it still exists (as it is now).
    pub fn resolve(&self, webhook: &WebhookRef) -> Option<(usize, &WebhookDefinition)> {
        if let Some(&index) = self.tenant_by_id.get(&webhook.id) {
            return Some((index, self.definitions().get(index)?));
        }
        self.resolve_fingerprint(webhook.fingerprint)
            .filter(|(_, d)| *d.id == *webhook.id)
    }

    /// The signing secrets of the webhook at `index` (empty: unsigned).
    pub fn secrets(&self, index: usize) -> &[SigningSecret] {
        self.secrets.get(index).map_or(&[][..], Vec::as_slice)
    }

    /// Logs one line for each kind of warning held back for a whole interval.
    pub fn flush_warnings(&self, now_ms: u64) {
        let due = match self.warnings.try_borrow_mut() {
            Ok(mut limiter) => limiter.due(now_ms),
            Err(_) => Vec::new(),
        };
        for (kind, count) in due {
            log::warn!(
                "envoy-webhooks: {count} more warning(s) of kind '{kind}' held back in the last {} s (see the counters)",
                WARNING_INTERVAL_MS / 1000
            );
        }
    }

    /// Whether warnings are held back, waiting for `flush_warnings`.
    pub fn holds_back_warnings(&self) -> bool {
        self.warnings
            .try_borrow()
            .is_ok_and(|limiter| limiter.holds_back())
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
}
