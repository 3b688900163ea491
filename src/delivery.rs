//! Delivery calls: what is sent, how outcomes are judged, and the message
//! that carries a delivery from the request's context to the root context.

use crate::config::{WebhookDefinition, WebhookUrl};

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
    let mut headers = vec![
        (":method", "POST"),
        (":path", url.path.as_str()),
        (":authority", url.authority.as_str()),
        ("content-type", "application/json"),
        ("user-agent", USER_AGENT),
    ];
    headers.extend(
        extra
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str())),
    );
    headers
}

/// Judges a finished call: `Ok` for a 2xx answer, else the error to record.
///
/// `status` is the `:status` header (absent when the call got no answer) and
/// `body` the start of the answer's body. Envoy answers a call that timed out
/// or could not connect itself, with a 504 or 503 and a telltale body; those
/// are reported as what they are, since the receiver never answered.
pub fn outcome(
    status: Option<&str>,
    body: &[u8],
    elapsed_ms: u64,
    timeout_ms: u64,
) -> Result<(), String> {
    match status {
        Some(code) if code.len() == 3 && code.starts_with('2') => Ok(()),
        Some("504") if body == b"upstream request timeout" => {
            Err(format!("timeout after {timeout_ms} ms"))
        }
        Some(code @ "503")
            if body.starts_with(b"upstream connect error") || body == b"no healthy upstream" =>
        {
            let reason = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            Err(format!(
                "HTTP {code} from Envoy, the receiver was not reached: {reason}"
            ))
        }
        Some(code) => Err(format!("HTTP {code}")),
        // Without an answer, the clock tells a timeout from a reset.
        None if elapsed_ms.saturating_add(50) >= timeout_ms => {
            Err(format!("timeout after {timeout_ms} ms"))
        }
        None => Err("no response (connection refused or reset)".to_string()),
    }
}

/// A delivery handed to the root context through the worker's shared queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedDelivery {
    /// Index of the webhook in the configuration.
    pub webhook: u32,
    /// The definition's fingerprint, so that a delivery queued under an older
    /// configuration is never sent with a newer definition.
    pub fingerprint: u64,
    /// The event's `request_id`, for `webhook-id` and logs.
    pub request_id: Option<String>,
    pub body: Vec<u8>,
}

impl QueuedDelivery {
    /// `webhook (u32 LE) | fingerprint (u64 LE) | request_id length (u16 LE,
    /// 0xFFFF for none) | request_id | body`.
    pub fn encode(&self) -> Vec<u8> {
        let request_id = self
            .request_id
            .as_deref()
            .filter(|id| id.len() < usize::from(u16::MAX));
        let mut bytes = Vec::with_capacity(14 + request_id.map_or(0, str::len) + self.body.len());
        bytes.extend_from_slice(&self.webhook.to_le_bytes());
        bytes.extend_from_slice(&self.fingerprint.to_le_bytes());
        match request_id {
            Some(id) => {
                bytes.extend_from_slice(&(id.len() as u16).to_le_bytes());
                bytes.extend_from_slice(id.as_bytes());
            }
            None => bytes.extend_from_slice(&u16::MAX.to_le_bytes()),
        }
        bytes.extend_from_slice(&self.body);
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Option<QueuedDelivery> {
        let webhook = u32::from_le_bytes(bytes.get(0..4)?.try_into().ok()?);
        let fingerprint = u64::from_le_bytes(bytes.get(4..12)?.try_into().ok()?);
        let id_len = u16::from_le_bytes(bytes.get(12..14)?.try_into().ok()?);
        let (request_id, body_start) = if id_len == u16::MAX {
            (None, 14)
        } else {
            let end = 14 + usize::from(id_len);
            let id = std::str::from_utf8(bytes.get(14..end)?).ok()?;
            (Some(id.to_string()), end)
        };
        Some(QueuedDelivery {
            webhook,
            fingerprint,
            request_id,
            body: bytes.get(body_start..)?.to_vec(),
        })
    }
}
