//! One delivery call: what is sent, and how its outcome is judged.

use std::fmt;

use super::retry::AttemptOutcome;
use crate::config::{WebhookDefinition, WebhookUrl, DELIVERY_MARKER};

/// Sent as `user-agent` on every delivery.
pub const USER_AGENT: &str = concat!("envoy-webhooks/", env!("CARGO_PKG_VERSION"));

/// The headers of a delivery call: pseudo-headers, then ours, then the webhook's own.
pub fn request_headers(definition: &WebhookDefinition) -> Vec<(&str, &str)> {
    destination_headers(&definition.url, &definition.headers)
}

/// The headers of a POST of JSON to `url`, with `extra` headers last.
pub fn destination_headers<'a>(
    url: &'a WebhookUrl,
    extra: &'a [(String, String)],
) -> Vec<(&'a str, &'a str)> {
    // Room for the signature's three headers and W3C trace context too:
    // the list is made once, never grown.
    let mut headers = Vec::with_capacity(6 + extra.len() + 3 + 2);
    headers.extend([
        (":method", "POST"),
        (":path", url.path.as_str()),
        (":authority", url.authority.as_str()),
        ("content-type", "application/json"),
        ("user-agent", USER_AGENT),
        (DELIVERY_MARKER, "1"),
    ]);
    headers.extend(
        extra
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str())),
    );
    headers
}

/// Enough of an answer's body to recognise Envoy's own answers, and to keep
/// the reason Envoy gives when it could not reach the receiver.
pub const ANSWER_BODY_BYTES: usize = 256;

/// Whether an answer with `status` needs its body read: only Envoy's own
/// 503 and 504, and the egress listeners' refusals (403, or 503 when the
/// name resolves to no address that may be called), are told apart by it
/// (`CallOutcome::from_answer`). Reading a
/// body costs the host a call back into the VM to allocate it, so a delivered
/// call (whatever its receiver answers) reads none.
pub fn needs_body(status: Option<&str>) -> bool {
    matches!(status, Some("403" | "503" | "504"))
}

/// How the egress listeners (`envoy/dynamic-forward-proxy.yaml`) start the
/// body of a refusal: the rest says why.
pub const EGRESS_REFUSAL_PREFIX: &[u8] = b"envoy-webhooks egress refused: ";

/// What the host reports of a finished call that got an answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    /// The `:status` header as sent (absent or garbled: not a valid answer).
    pub status: Option<String>,
    pub retry_after: Option<String>,
    /// The start of the answer's body (enough to recognise Envoy's own
    /// answers), read only when `needs_body` says so.
    pub body_start: Vec<u8>,
}

/// How one call ended: built once from what the host reports, then used for
/// the decision (success, retry, gone) and, through `Display`, as `last_error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallOutcome {
    /// A 2xx answer.
    Delivered,
    /// Another answer from the receiver.
    Status {
        code: u16,
        retry_after: Option<String>,
    },
    /// An answer whose status is not a number.
    Garbled(String),
    /// No answer within `timeout_ms` (also Envoy's own 504 "upstream request timeout").
    Timeout { timeout_ms: u64 },
    /// Envoy could not reach the receiver and answered itself (503).
    NotReached(String),
    /// The same for an `https://` URL: the TLS handshake may have failed
    /// (Envoy 1.40 no longer says so), and the cluster's stats say why.
    NotReachedOverTls { reason: String, cluster: String },
    /// Envoy's egress listener refused to call the receiver's address (an
    /// internal one); the reason as the listener gives it.
    RefusedByEgress(String),
    /// No answer: reset, refused, or an answer Envoy would not hand over.
    NoAnswer,
    /// The host refused to start the call (an unknown cluster).
    CannotCall { cluster: String },
}

impl CallOutcome {
    /// Judges a finished call. `answer` is `None` when the host reported no
    /// headers: the call ended without an answer. Envoy answers a call that
    /// timed out or could not connect itself, with a 504 or 503 and a telltale
    /// body; those are reported as what they are, since the receiver never
    /// answered.
    pub fn from_answer(answer: Option<&Answer>, elapsed_ms: u64, timeout_ms: u64) -> CallOutcome {
        let Some(answer) = answer else {
            // Without an answer, the clock tells a timeout from a reset.
            return if elapsed_ms.saturating_add(50) >= timeout_ms {
                CallOutcome::Timeout { timeout_ms }
            } else {
                CallOutcome::NoAnswer
            };
        };
        let Some(status) = answer.status.as_deref() else {
            return CallOutcome::NoAnswer;
        };
        let code = match status.parse::<u16>() {
            Ok(code) if (100..=999).contains(&code) && status.len() == 3 => code,
            _ => return CallOutcome::Garbled(status.chars().take(16).collect()),
        };
        let body = answer.body_start.as_slice();
        if let Some(reason) = body.strip_prefix(EGRESS_REFUSAL_PREFIX) {
            if matches!(code, 403 | 503) {
                return CallOutcome::RefusedByEgress(String::from_utf8_lossy(reason).into_owned());
            }
        }
        match code {
            200..=299 => CallOutcome::Delivered,
            504 if body == b"upstream request timeout" => CallOutcome::Timeout { timeout_ms },
            503 if body.starts_with(b"upstream connect error")
                || body == b"no healthy upstream" =>
            {
                // Whole, as far as it is read (Envoy before 1.40 names a refused TLS handshake here).
                let reason = body
                    .get(..body.len().min(ANSWER_BODY_BYTES))
                    .unwrap_or_default();
                CallOutcome::NotReached(String::from_utf8_lossy(reason).into_owned())
            }
            _ => CallOutcome::Status {
                code,
                retry_after: answer.retry_after.clone(),
            },
        }
    }

    /// The outcome of a call to an `https://` URL through `cluster`.
    pub fn over_tls(self, cluster: &str) -> CallOutcome {
        match self {
            CallOutcome::NotReached(reason) => CallOutcome::NotReachedOverTls {
                reason,
                cluster: cluster.to_string(),
            },
            other => other,
        }
    }

    /// What the retry schedule needs to know.
    pub fn attempt(&self) -> AttemptOutcome<'_> {
        match self {
            CallOutcome::Delivered => AttemptOutcome::Success,
            CallOutcome::Status { code, retry_after } => AttemptOutcome::Status {
                code: *code,
                retry_after: retry_after.as_deref(),
            },
            _ => AttemptOutcome::NoAnswer,
        }
    }
}

impl fmt::Display for CallOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallOutcome::Delivered => f.write_str("delivered"),
            CallOutcome::Status { code, .. } => write!(f, "HTTP {code}"),
            CallOutcome::Garbled(status) => write!(f, "an answer with status {status:?}"),
            CallOutcome::Timeout { timeout_ms } => write!(f, "timeout after {timeout_ms} ms"),
            CallOutcome::NotReached(reason) => write!(
                f,
                "HTTP 503 from Envoy, the receiver was not reached: {reason}"
            ),
            CallOutcome::NotReachedOverTls { reason, cluster } => write!(
                f,
                "HTTP 503 from Envoy, the receiver was not reached over TLS: {reason}; if the TLS handshake failed (a certificate for another host, expired, self-signed or from an unknown CA, or the receiver wants a client certificate), Envoy's stats cluster.{cluster}.ssl.fail_verify_* and .ssl.connection_error say which (through an egress listener: those of the cluster it forwards to)"
            ),
            CallOutcome::RefusedByEgress(reason) => write!(
                f,
                "refused by Envoy's egress check, the receiver was not called: {reason}"
            ),
            CallOutcome::NoAnswer => f.write_str("no response (connection refused or reset)"),
            CallOutcome::CannotCall { cluster } => write!(f, "cannot call cluster '{cluster}'"),
        }
    }
}
