//! Standard Webhooks signatures, checked against the specification's own
//! example and against an independent HMAC computation.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use envoy_webhooks::signature::{message_id, signature_header, verify, SigningSecret};
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
fn message_ids_spell_all_128_bits() {
    assert_eq!(message_id(0), format!("msg_{}", "0".repeat(32)));
    assert_eq!(message_id(u128::MAX), format!("msg_{}", "f".repeat(32)));
    let id = message_id(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
    assert_eq!(id, "msg_0123456789abcdef0011223344556677");
    assert_ne!(message_id(1), message_id(1 << 127));
}

#[test]
fn verify_accepts_the_specification_example() {
    let secrets = [secret(SPEC_SECRET)];
    let ts = SPEC_TIMESTAMP.to_string();
    assert_eq!(
        verify(
            &secrets,
            SPEC_ID,
            &ts,
            SPEC_SIGNATURE,
            SPEC_BODY,
            SPEC_TIMESTAMP,
            300
        ),
        Ok(())
    );
    // any of several signatures (rotation), other versions ignored
    let header = format!("v2,abc v1,AAAA {SPEC_SIGNATURE}");
    assert_eq!(
        verify(
            &secrets,
            SPEC_ID,
            &ts,
            &header,
            SPEC_BODY,
            SPEC_TIMESTAMP + 300,
            300
        ),
        Ok(())
    );
}

#[test]
fn verify_refuses_tampering_wrong_secrets_and_stale_timestamps() {
    let secrets = [secret(SPEC_SECRET)];
    let ts = SPEC_TIMESTAMP.to_string();
    let now = SPEC_TIMESTAMP;
    let check = |id: &str, ts: &str, header: &str, body: &[u8], now: u64| {
        verify(&secrets, id, ts, header, body, now, 300)
    };
    assert!(check(
        SPEC_ID,
        &ts,
        SPEC_SIGNATURE,
        br#"{"test": 2432232315}"#,
        now
    )
    .is_err());
    assert!(check("msg_other", &ts, SPEC_SIGNATURE, SPEC_BODY, now).is_err());
    let err = check(SPEC_ID, &ts, SPEC_SIGNATURE, SPEC_BODY, now + 301).unwrap_err();
    assert!(err.contains("more than 300 s"), "{err}");
    assert!(check(SPEC_ID, &ts, SPEC_SIGNATURE, SPEC_BODY, now - 301).is_err());
    assert!(check(SPEC_ID, "soon", SPEC_SIGNATURE, SPEC_BODY, now).is_err());
    let err = check(SPEC_ID, &ts, "v2,xyz", SPEC_BODY, now).unwrap_err();
    assert!(err.contains("no v1 signature"), "{err}");
    let other = [secret(&format!(
        "whsec_{}",
        STANDARD.encode(b"another secret")
    ))];
    let err = verify(&other, SPEC_ID, &ts, SPEC_SIGNATURE, SPEC_BODY, now, 300).unwrap_err();
    assert_eq!(err, "no signature matches the secret(s)");
    assert!(!err.contains(SPEC_SECRET));
    // what the filter signs, the receiver verifies
    let header = signature_header(&other, "msg_y", 1_700_000_000, b"{}");
    assert_eq!(
        verify(
            &other,
            "msg_y",
            "1700000000",
            &header,
            b"{}",
            1_700_000_010,
            300
        ),
        Ok(())
    );
}
