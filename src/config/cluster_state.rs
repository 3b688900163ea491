//! `cluster_state`: where the webhooks' status is shared between Envoys (etcd).

use serde_json::Value;

use super::definition::cluster_refusal;
use super::problems::{Fields, Problem};

/// Webhook status kept in etcd, shared by every Envoy with the same `prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// The Envoy cluster that reaches etcd's client port (TLS comes from its transport socket).
    pub cluster: String,
    /// The `:authority` of the calls, e.g. `etcd:2379`.
    pub authority: String,
    /// Every key of ours starts with it; ends with `/`.
    pub prefix: String,
    pub sync_interval_ms: u64,
    pub timeout_ms: u64,
    /// Records of webhooks no Envoy has configured (status records, and
    /// deliveries journaled by Envoys that went away) are kept this long, then
    /// removed: the keyspace stays proportional to what is configured.
    pub orphan_retention_s: u64,
    /// Environment variables holding etcd's user name and password (both or neither).
    pub credentials_env: Option<(String, String)>,
}

pub const DEFAULT_PREFIX: &str = "/envoy-webhooks/";
pub const DEFAULT_SYNC_INTERVAL_MS: u64 = 1_000;
pub const DEFAULT_TIMEOUT_MS: u64 = 500;
pub const DEFAULT_ORPHAN_RETENTION_S: u64 = 3_600;

pub(crate) fn parse(value: &Value, problems: &mut Vec<Problem>) -> Option<EtcdConfig> {
    let mut outer = Fields::of(value, "cluster_state", problems)?;
    let etcd = outer.get("etcd");
    outer.reject_unknown("etcd");
    let Some(etcd) = etcd else {
        problems.push(Problem {
            place: "cluster_state".to_string(),
            field: "etcd".to_string(),
            message: "is required: cluster_state names the store, e.g. {\"etcd\": {\"cluster\": \"etcd\", \"authority\": \"etcd:2379\"}}; leave cluster_state out to keep the status per Envoy".to_string(),
        });
        return None;
    };
    let mut fields = Fields::of(etcd, "cluster_state.etcd", problems)?;
    let cluster = fields.required_string("cluster");
    if let Some(reason) = cluster.and_then(cluster_refusal) {
        fields.problem("cluster", reason);
    }
    let authority = fields.required_string("authority");
    if let Some(authority) = authority {
        if authority.is_empty()
            || !authority
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b))
        {
            fields.problem(
                "authority",
                format!(
                    "\"{}\" must be a host[:port], e.g. \"etcd:2379\"",
                    authority.escape_debug()
                ),
            );
        }
    }
    let prefix = fields.string("prefix").unwrap_or(DEFAULT_PREFIX);
    if !prefix.starts_with('/') || !prefix.ends_with('/') || prefix.len() > 256 {
        fields.problem(
            "prefix",
            format!("\"{}\" must start and end with '/' (at most 256 bytes), e.g. \"/envoy-webhooks/prod/\"; Envoys with the same prefix share status", prefix.escape_debug()),
        );
    } else if prefix.chars().any(char::is_control) {
        fields.problem("prefix", "must not contain control characters");
    }
    let sync_interval_ms = fields
        .integer("sync_interval_ms", 100, 600_000)
        .unwrap_or(DEFAULT_SYNC_INTERVAL_MS);
    let timeout_ms = fields
        .integer("timeout_ms", 10, 60_000)
        .unwrap_or(DEFAULT_TIMEOUT_MS);
    let orphan_retention_s = fields
        .integer("orphan_retention_s", 1, 31_536_000)
        .unwrap_or(DEFAULT_ORPHAN_RETENTION_S);
    let credentials_env = match (fields.string("username_env"), fields.string("password_env")) {
        (None, None) => Some(None),
        (Some(user), Some(password)) if !user.is_empty() && !password.is_empty() => {
            Some(Some((user.to_string(), password.to_string())))
        }
        _ => {
            fields.problem(
                "username_env",
                "set both username_env and password_env (names of environment variables), or neither for an etcd without authentication",
            );
            None
        }
    };
    fields.reject_unknown(
        "cluster, authority, prefix, sync_interval_ms, timeout_ms, orphan_retention_s, username_env, password_env",
    );
    Some(EtcdConfig {
        cluster: cluster?.to_string(),
        authority: authority?.to_string(),
        prefix: prefix.to_string(),
        sync_interval_ms,
        timeout_ms,
        orphan_retention_s,
        credentials_env: credentials_env?,
    })
}
