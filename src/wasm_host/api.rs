//! The API's requests, in the request's own context: who calls, then the
//! etcd calls its exchange asks for, made from this context (the caller
//! waits, so the context outlives them), then the answer. No decision is
//! made here: `crate::api` makes them.

use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::types::BufferType;

use crate::api::exchange::{Answer, Context, Exchange, Keys, Operation, Step};
use crate::cluster::etcd::{self, EtcdError};
use crate::config::{Caller, WebhookDefinition};
use crate::plugin::Plugin;
use crate::webhook::store as webhook_store;

use super::host::{self, ProxySharedData};
use super::worker::Worker;

/// etcd's answers to the API are read up to this (a list of the most
/// webhooks a domain may have fits).
const ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// An exchange waiting for the answer to its etcd call.
pub struct Waiting {
    pub token: u32,
    exchange: Exchange,
}

/// Starts `operation` with the request's whole `body`; `Some` while it waits for etcd.
pub fn start(
    worker: &Worker,
    plugin: &Plugin,
    operation: Operation,
    caller: Caller,
    body: Vec<u8>,
) -> Option<Waiting> {
    let (exchange, step) = with_context(worker, plugin, |context| {
        Exchange::start(operation, caller, body, context)
    })?;
    carry_on(worker, plugin, exchange, step)
}

/// The answer to this request's etcd call came (`num_headers` 0: none).
pub fn answered(
    worker: &Worker,
    plugin: &Plugin,
    mut waiting: Waiting,
    num_headers: usize,
    body_size: usize,
) -> Option<Waiting> {
    let status = host::call_response_header(num_headers, ":status").and_then(|s| s.parse().ok());
    let body = if status.is_some() {
        host::buffer(
            BufferType::HttpCallResponseBody,
            body_size.min(ANSWER_BYTES),
        )
        .unwrap_or_default()
    } else {
        Vec::new()
    };
    let answer = etcd::answer_body(status, &body);
    if let Err(EtcdError::AuthExpired { .. }) = &answer {
        // The root authenticates again; meanwhile this request is told to retry.
        worker.etcd_auth_expired.set(true);
    }
    let step = with_context(worker, plugin, |context| {
        waiting.exchange.next(answer, context)
    })?;
    carry_on(worker, plugin, waiting.exchange, step)
}

/// Does what `step` says: an etcd call (waiting for it), or the answer.
fn carry_on(worker: &Worker, plugin: &Plugin, exchange: Exchange, step: Step) -> Option<Waiting> {
    match step {
        Step::Done(answer) => {
            send(&answer, None);
            None
        }
        Step::Etcd { path, body } => match call(worker, plugin, path, &body) {
            Ok(token) => Some(Waiting { token, exchange }),
            Err(why) => {
                send(
                    &Answer::error(
                        503,
                        "service",
                        format!("cannot reach the webhook store (etcd): {why}; try again"),
                    ),
                    None,
                );
                None
            }
        },
    }
}

fn call(worker: &Worker, plugin: &Plugin, path: &str, body: &[u8]) -> Result<u32, String> {
    let Some(config) = plugin.config.cluster_state.as_ref() else {
        return Err("no cluster_state".to_string());
    };
    let token = worker.etcd_token.borrow().clone();
    let needs_token = plugin.cluster_credentials.is_some();
    if needs_token && token.is_none() {
        return Err("not authenticated with etcd yet".to_string());
    }
    let call = etcd::call(config, path, body, token.as_deref());
    hostcalls::dispatch_http_call(
        call.cluster,
        call.headers,
        Some(call.body),
        Vec::new(),
        Duration::from_millis(call.timeout_ms),
    )
    .map_err(|status| {
        format!(
            "the host refused the call to cluster '{}': {status:?}",
            config.cluster
        )
    })
}

/// Runs `f` with what an exchange needs of the host; `None` without `api`
/// and `cluster_state` (a configuration the root refuses).
fn with_context<T>(
    worker: &Worker,
    plugin: &Plugin,
    f: impl FnOnce(&mut Context<'_>) -> T,
) -> Option<T> {
    let api = plugin.config.api.as_ref()?;
    let etcd = plugin.config.cluster_state.as_ref()?;
    let keys = Keys::new(&etcd.prefix);
    let now_ms = host::now_ms();
    let mut random = |buffer: &mut [u8]| getrandom::fill(buffer).is_ok();
    let health = |definition: &WebhookDefinition| {
        Some(webhook_store::load(
            &ProxySharedData,
            definition,
            now_ms / 1000,
        ))
    };
    let check_url = |url: &str| crate::api::check_url(&plugin.config, url);
    let enable = |definition: &WebhookDefinition| {
        let policy = &plugin.config.delivery;
        let updated = webhook_store::enable(
            &mut ProxySharedData,
            definition,
            policy,
            true,
            now_ms / 1000,
        );
        if let Some((_, Some(transition))) = updated {
            transition.log(&definition.id);
        }
        // The engine reads the record afresh.
        worker.health_changed.set(true);
    };
    let mut context = Context {
        config: api,
        keys: &keys,
        now_ms,
        random: &mut random,
        health: &health,
        check_url: &check_url,
        enable: &enable,
    };
    Some(f(&mut context))
}

/// Answers the API request (`allow`: for a 405).
pub fn send(answer: &Answer, allow: Option<&str>) {
    let mut headers = vec![
        ("content-type", "application/json"),
        ("cache-control", "no-store"),
    ];
    if let Some(allow) = allow {
        headers.push(("allow", allow));
    }
    let body = answer.body.as_ref().map(|body| body.to_string());
    let status = u32::from(answer.status);
    if let Err(e) =
        hostcalls::send_http_response(status, headers, body.as_deref().map(str::as_bytes))
    {
        log::warn!("envoy-webhooks: cannot answer an API request: {e:?}");
    }
}
