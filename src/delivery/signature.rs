//! Standard Webhooks signatures (<https://www.standardwebhooks.com>):
//! `webhook-id`, `webhook-timestamp` and `webhook-signature`.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

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

    fn sign(&self, content: &[u8]) -> String {
        // HMAC takes keys of any length, so this cannot fail.
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.0) {
            Ok(mac) => mac,
            Err(_) => return String::new(),
        };
        mac.update(content);
        STANDARD.encode(mac.finalize().into_bytes())
    }
}

/// `webhook-id`: stable across the retries of one delivery, different for
/// every (webhook, event) pair, so receivers can de-duplicate.
pub fn message_id(webhook_id: &str, request_id: Option<&str>, body: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(webhook_id.as_bytes());
    hasher.update([0]);
    hasher.update(request_id.unwrap_or("").as_bytes());
    hasher.update([0]);
    hasher.update(body);
    let digest = hasher.finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("msg_{hex}")
}

/// `webhook-signature`: `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, one per secret.
pub fn signature_header(
    secrets: &[SigningSecret],
    message_id: &str,
    timestamp_s: u64,
    body: &[u8],
) -> String {
    let mut content = Vec::with_capacity(message_id.len() + 24 + body.len());
    content.extend_from_slice(message_id.as_bytes());
    content.push(b'.');
    content.extend_from_slice(timestamp_s.to_string().as_bytes());
    content.push(b'.');
    content.extend_from_slice(body);
    secrets
        .iter()
        .map(|secret| format!("v1,{}", secret.sign(&content)))
        .collect::<Vec<_>>()
        .join(" ")
}
