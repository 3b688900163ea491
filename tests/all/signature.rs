//! Standard Webhooks signatures, checked against the specification's own
//! example and against an independent HMAC computation.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::as_conversions,
    clippy::cast_possible_truncation
)] // Tests may fail loudly.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use envoy_webhooks::signature::{message_id, signature_header, SigningSecret};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The example of the Standard Webhooks specification and its reference libraries.
const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
const SPEC_TIMESTAMP: u64 = 1614265330;
const SPEC_BODY: &[u8] = br#"{"test": 2432232314}"#;
const SPEC_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

fn secret(text: &str) -> SigningSecret {
    SigningSecret::parse(text).expect("valid secret")
}

#[test]
fn matches_the_specification_example() {
    let header = signature_header(&[secret(SPEC_SECRET)], SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY);
    assert_eq!(header, SPEC_SIGNATURE);
}

#[test]
fn matches_an_independent_hmac() {
    let key = b"another key of any length";
    let text = format!("whsec_{}", STANDARD.encode(key));
    let body = br#"{"event_type":"assets","realm":"formats"}"#;
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("hmac key");
    mac.update(b"msg_x.1700000000.");
    mac.update(body);
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    assert_eq!(
        signature_header(&[secret(&text)], "msg_x", 1_700_000_000, body),
        expected
    );
}

#[test]
fn rotated_secrets_give_one_signature_each() {
    let other = format!("whsec_{}", STANDARD.encode(b"the new secret"));
    let secrets =
        SigningSecret::parse_list(&format!("{SPEC_SECRET} {other}")).expect("two secrets");
    let header = signature_header(&secrets, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY);
    let parts: Vec<&str> = header.split(' ').collect();
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0], SPEC_SIGNATURE);
    assert!(parts[1].starts_with("v1,") && parts[1] != SPEC_SIGNATURE);
}

#[test]
fn a_different_body_timestamp_or_id_changes_the_signature() {
    let s = [secret(SPEC_SECRET)];
    let base = signature_header(&s, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY);
    assert_ne!(
        base,
        signature_header(&s, SPEC_ID, SPEC_TIMESTAMP + 1, SPEC_BODY)
    );
    assert_ne!(
        base,
        signature_header(&s, "msg_other", SPEC_TIMESTAMP, SPEC_BODY)
    );
    assert_ne!(base, signature_header(&s, SPEC_ID, SPEC_TIMESTAMP, b"{}"));
}

#[test]
fn bad_secrets_are_refused_without_repeating_them() {
    for bad in [
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "whsec_",
        "whsec_not*base64!",
        "whsec",
    ] {
        let error = SigningSecret::parse(bad).expect_err(bad);
        assert!(
            !error.contains("MfKQ9r8") && !error.contains("not*base64"),
            "{error}"
        );
    }
    assert!(SigningSecret::parse_list("  ").is_err());
    assert!(format!("{:?}", secret(SPEC_SECRET)).contains("***"));
    assert!(!format!("{:?}", secret(SPEC_SECRET)).contains("MfKQ"));
}

#[test]
fn message_ids_are_stable_per_event_and_webhook() {
    let body = br#"{"request_id":"r1"}"#;
    let id = message_id("hook-a", Some("r1"), body);
    assert!(id.starts_with("msg_") && id.len() == 36, "{id}");
    assert_eq!(id, message_id("hook-a", Some("r1"), body));
    assert_ne!(id, message_id("hook-b", Some("r1"), body));
    assert_ne!(id, message_id("hook-a", Some("r2"), body));
    assert_ne!(
        id,
        message_id("hook-a", Some("r1"), br#"{"request_id":"r1","n":2}"#)
    );
    assert_ne!(
        message_id("ab", Some("c"), b""),
        message_id("a", Some("bc"), b"")
    );
}
