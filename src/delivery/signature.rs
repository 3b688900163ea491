//! Standard Webhooks signatures (<https://www.standardwebhooks.com>):
//! `webhook-id`, `webhook-timestamp` and `webhook-signature`.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A signing secret: the bytes behind `whsec_<base64>`.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecret(Vec<u8>);

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets never reach logs, even through Debug.
        f.write_str("SigningSecret(***)")
    }
}

impl SigningSecret {
    /// Parses `whsec_<base64>`. The error never repeats the secret.
    pub fn parse(text: &str) -> Result<SigningSecret, String> {
        let Some(encoded) = text.strip_prefix("whsec_") else {
            return Err("a secret must look like whsec_<base64>".to_string());
        };
        match STANDARD.decode(encoded) {
            Ok(bytes) if !bytes.is_empty() => Ok(SigningSecret(bytes)),
            Ok(_) => Err("the secret after whsec_ is empty".to_string()),
            Err(_) => Err("the part after whsec_ is not valid base64".to_string()),
        }
    }

    /// One or several space-separated secrets (rotation), as in `secret_env`.
    pub fn parse_list(text: &str) -> Result<Vec<SigningSecret>, String> {
        let secrets = text
            .split_ascii_whitespace()
            .map(SigningSecret::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if secrets.is_empty() {
            return Err("no secret given".to_string());
        }
        Ok(secrets)
    }

    fn mac(&self, content: &[u8]) -> Option<Hmac<Sha256>> {
        // HMAC takes keys of any length, so this cannot fail.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).ok()?;
        mac.update(content);
        Some(mac)
    }

    fn sign(&self, content: &[u8]) -> String {
        match self.mac(content) {
            Some(mac) => STANDARD.encode(mac.finalize().into_bytes()),
            None => String::new(),
        }
    }

    /// Whether `signature` (raw HMAC bytes) is this secret's; constant time.
    fn verifies(&self, content: &[u8], signature: &[u8]) -> bool {
        self.mac(content)
            .is_some_and(|mac| mac.verify_slice(signature).is_ok())
    }
}

/// The content signed for one message: `id.timestamp.body`.
fn signed_content(message_id: &str, timestamp: &str, body: &[u8]) -> Vec<u8> {
    let mut content = Vec::with_capacity(message_id.len() + timestamp.len() + 2 + body.len());
    content.extend_from_slice(message_id.as_bytes());
    content.push(b'.');
    content.extend_from_slice(timestamp.as_bytes());
    content.push(b'.');
    content.extend_from_slice(body);
    content
}

/// How far `webhook-timestamp` may be from the receiver's clock (the Standard
/// Webhooks libraries' default): older or newer deliveries are refused as replays.
pub const TIMESTAMP_TOLERANCE_S: u64 = 300;

/// Verifies a delivery as a Standard Webhooks receiver does: the timestamp is a
/// number of seconds within `tolerance_s` of `now_s`, and one of the `v1,`
/// signatures of `signature_header` is the HMAC of one of `secrets`.
/// The error says why, without repeating a secret.
pub fn verify(
    secrets: &[SigningSecret],
    message_id: &str,
    timestamp: &str,
    signature_header: &str,
    body: &[u8],
    now_s: u64,
    tolerance_s: u64,
) -> Result<(), String> {
    let Ok(sent_s) = timestamp.parse::<u64>() else {
        return Err(format!(
            "webhook-timestamp {timestamp:?} is not a number of seconds"
        ));
    };
    if sent_s.abs_diff(now_s) > tolerance_s {
        return Err(format!(
            "webhook-timestamp {sent_s} is more than {tolerance_s} s from now ({now_s})"
        ));
    }
    let content = signed_content(message_id, timestamp, body);
    let mut seen_v1 = false;
    for part in signature_header.split_ascii_whitespace() {
        let Some(encoded) = part.strip_prefix("v1,") else {
            continue;
        };
        seen_v1 = true;
        let Ok(signature) = STANDARD.decode(encoded) else {
            continue;
        };
        if secrets
            .iter()
            .any(|secret| secret.verifies(&content, &signature))
        {
            return Ok(());
        }
    }
    if seen_v1 {
        Err("no signature matches the secret(s)".to_string())
    } else {
        Err("webhook-signature has no v1 signature".to_string())
    }
}

/// `webhook-id` from 128 random bits, drawn once for a delivery and kept with
/// it: every attempt, a hand-off to another Envoy, its dead letter and a
/// redrive of that carry the same id, so receivers de-duplicate on it (as
/// Standard Webhooks asks: unique per message, the same when resent). Not a
/// hash of the event: SHA-256 over a 1.2 KB body cost as much as the call
/// itself in the filter (about 108,000 instructions, docs/benchmarks.md).
pub fn message_id(random: u128) -> String {
    // One allocation (a delivery's budget, tests/all/allocations.rs).
    let mut id = String::with_capacity(4 + 32);
    id.push_str("msg_");
    // Two 64-bit halves (both fit: shifted, masked): wasm32 has no 128-bit
    // shift, and 32 of them, emulated, cost more than the rest of the id.
    let high = u64::try_from(random >> 64).unwrap_or(0);
    let low = u64::try_from(random & u128::from(u64::MAX)).unwrap_or(0);
    for half in [high, low] {
        for shift in (0..16).rev() {
            // A nibble: below 16, so a hex digit.
            let nibble = u32::try_from((half >> (shift * 4)) & 0xf).unwrap_or(0);
            id.push(char::from_digit(nibble, 16).unwrap_or('0'));
        }
    }
    id
}

/// `webhook-signature`: `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, one per secret.
pub fn signature_header(
    secrets: &[SigningSecret],
    message_id: &str,
    timestamp_s: u64,
    body: &[u8],
) -> String {
    let content = signed_content(message_id, &timestamp_s.to_string(), body);
    secrets
        .iter()
        .map(|secret| format!("v1,{}", secret.sign(&content)))
        .collect::<Vec<_>>()
        .join(" ")
}
