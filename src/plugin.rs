//! A loaded plugin configuration: the definitions, their matcher, and what
//! was read from the VM's environment (admin token, signing secrets), shared
//! by a worker's root context and its request contexts.

use std::cell::RefCell;
use std::rc::Rc;

use hashbrown::HashMap;

use crate::config::{
    validate_admin_token, AdminToken, PluginConfig, SecretSource, WebhookDefinition,
};
use crate::delivery::budget::HeldBytes;
use crate::delivery::queue::WebhookRef;
use crate::delivery::signature::SigningSecret;
use crate::event::view::EventScanner;
use crate::logging::{suppressed_note, WarningLimiter, WARNING_INTERVAL_MS};
use crate::matcher::Matcher;

pub struct Plugin {
    pub config: PluginConfig,
    pub matcher: Matcher,
    /// Reads events in one pass, without parsing them; what it is unsure of
    /// is parsed fully (the oracle it is tested against).
    pub scanner: Rc<EventScanner>,
    /// The admin bearer token, resolved from the configuration or the VM's environment.
    pub admin_token: Option<String>,
    /// etcd's user name and password, read from the VM's environment.
    pub cluster_credentials: Option<(String, String)>,
    /// Each webhook's signing secrets (empty: unsigned), in configuration order.
    secrets: Vec<Vec<SigningSecret>>,
    /// Each webhook's reference, in configuration order.
    refs: Vec<WebhookRef>,
    /// Definitions by fingerprint: how deliveries find their webhook.
    by_fingerprint: HashMap<u64, usize>,
    /// The worker's budget for held event bodies (`delivery.max_held_bytes`).
    pub held: HeldBytes,
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
        let refs: Vec<WebhookRef> = config
            .webhooks
            .iter()
            .map(|d| WebhookRef {
                id: Rc::from(d.id.as_str()),
                fingerprint: d.fingerprint,
            })
            .collect();
        let by_fingerprint = config
            .webhooks
            .iter()
            .enumerate()
            .map(|(index, d)| (d.fingerprint, index))
            .collect();
        let matcher = Matcher::new(config.webhooks.clone());
        Ok(Plugin {
            scanner: Rc::new(EventScanner::new(matcher.paths().clone())),
            matcher,
            held: HeldBytes::new(config.delivery.max_held_bytes),
            config,
            admin_token,
            cluster_credentials,
            secrets,
            refs,
            by_fingerprint,
            warnings: RefCell::default(),
        })
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

    /// The webhook `webhook` refers to, if the configuration still has it
    /// unchanged.
    pub fn resolve(&self, webhook: &WebhookRef) -> Option<(usize, &WebhookDefinition)> {
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
