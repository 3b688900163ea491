//! A codec for etcd v3's HTTP/JSON gateway (etcd 3.4): request bodies to send
//! and parsers for the answers. Pure: no proxy-wasm, no I/O.
//!
//! What the gateway does, recorded from a real etcd 3.4 (the answers are in
//! `tests/fixtures/etcd/`):
//! - keys and values are base64 (standard alphabet, padded);
//! - int64 fields are JSON strings (`"mod_revision":"5"`), and every field
//!   whose value is the default is left out: a missing key answers a `range`
//!   with no `kvs` (and no `count`), a failed `txn` has no `succeeded`, an
//!   empty value has no `value`;
//! - errors are `{"error":..,"message":..,"code":<gRPC code>}` with an HTTP
//!   status derived from the gRPC code (400 for InvalidArgument, 401 for
//!   Unauthenticated, ...).

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

/// `POST` a [`range_prefix_request`] here.
pub const RANGE_PATH: &str = "/v3/kv/range";
/// `POST` a [`txn_put_if_revision`] here.
pub const TXN_PATH: &str = "/v3/kv/txn";
/// `POST` an [`authenticate_request`] here; the token goes in the
/// `Authorization` header (as is, no `Bearer`) of later requests.
pub const AUTHENTICATE_PATH: &str = "/v3/auth/authenticate";

/// The most of an answer's body quoted in an error message.
const QUOTE_CHARS: usize = 200;

/// One record as etcd holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// The store revision of the last write to this key: what a
    /// compare-and-set names ([`txn_put_if_revision`]).
    pub mod_revision: i64,
}

/// What a [`txn_put_if_revision`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOutcome {
    /// The value was written; `revision` is the key's new `mod_revision`.
    Applied { revision: i64 },
    /// Someone else wrote first (or the key was deleted, or created when it
    /// was expected not to exist): nothing was written. `current` is the record
    /// now (`None`: the key does not exist), read in the same transaction.
    Conflict { current: Option<KeyValue> },
}

/// Why an etcd answer could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EtcdError {
    /// The body is not JSON, or not the JSON etcd's gateway sends for this call.
    Malformed {
        call: &'static str,
        detail: String,
        body: String,
    },
    /// A field that is not base64 or not an integer.
    BadField {
        call: &'static str,
        field: &'static str,
        detail: String,
    },
    /// The token is not (or no longer) valid: expired, from before an auth
    /// change, or never issued. Authenticate again and retry.
    AuthTokenInvalid { message: String },
    /// Authentication is enabled in etcd and the request had no token.
    AuthRequired { message: String },
    /// `/v3/auth/authenticate` refused the user name or password.
    AuthFailed { message: String },
    /// The user is authenticated but its roles do not allow this key range.
    PermissionDenied { message: String },
    /// Any other error answer.
    Status {
        status: u16,
        code: Option<i64>,
        message: String,
    },
}

impl EtcdError {
    /// True when authenticating again (a new token) may fix it.
    pub fn needs_reauthentication(&self) -> bool {
        matches!(self, EtcdError::AuthTokenInvalid { .. })
    }
}

impl fmt::Display for EtcdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EtcdError::Malformed { call, detail, body } => write!(
                f,
                "etcd's answer to {call} is not what etcd's JSON gateway sends ({detail}); \
                 body: {body:?}. Check that the cluster's `authority` and Envoy cluster \
                 point at an etcd v3 client URL (port 2379 by default), not a proxy or \
                 another service"
            ),
            EtcdError::BadField {
                call,
                field,
                detail,
            } => write!(
                f,
                "etcd's answer to {call} has an unreadable `{field}` ({detail}). \
                 Check that the cluster's `authority` points at an etcd v3 client URL"
            ),
            EtcdError::AuthTokenInvalid { message } => write!(
                f,
                "etcd refused the auth token ({message}): it expired (etcd's \
                 --auth-token-ttl, 300 s by default) or auth changed since it was issued; \
                 authenticating again"
            ),
            EtcdError::AuthRequired { message } => write!(
                f,
                "etcd requires authentication ({message}): set `username_env` and \
                 `password_env` in cluster_state.etcd and those variables in Envoy's environment"
            ),
            EtcdError::AuthFailed { message } => write!(
                f,
                "etcd refused the user name or password ({message}): check the \
                 variables named by `username_env` and `password_env` (`etcdctl user get NAME`)"
            ),
            EtcdError::PermissionDenied { message } => write!(
                f,
                "etcd denied access ({message}): grant the user's role readwrite on the \
                 prefix (`etcdctl role grant-permission ROLE --prefix=true readwrite PREFIX`)"
            ),
            EtcdError::Status {
                status,
                code,
                message,
            } => {
                write!(f, "etcd answered HTTP {status}")?;
                if let Some(code) = code {
                    write!(f, " (gRPC code {code})")?;
                }
                write!(f, ": {message:?}")?;
                match (status, code) {
                    (404, _) => write!(
                        f,
                        "; check that the `authority` and Envoy cluster point at etcd \
                         v3.4 or later (the /v3/ gateway)"
                    ),
                    (_, Some(14)) | (503, _) => write!(
                        f,
                        "; the member has no leader or is overloaded: check the other members \
                         (`etcdctl endpoint health --cluster`)"
                    ),
                    _ => Ok(()),
                }
            }
        }
    }
}

impl std::error::Error for EtcdError {}

// --------------------------------------------------------------------------- requests

fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// The end of the range holding every key that starts with `prefix`, by
/// etcd's rule (clientv3's `GetPrefixRangeEnd`): the prefix with its last byte
/// below 0xff incremented and the bytes after it dropped; `[0]` (to the end of
/// the keyspace) when there is no such byte.
pub fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if let Some(next) = last.checked_add(1) {
            end.push(next);
            return end;
        }
    }
    vec![0]
}

#[derive(Serialize)]
struct RangeRequest {
    key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    range_end: Option<String>,
}

/// A `range` of every key starting with `prefix` (an empty prefix: all keys).
pub fn range_prefix_request(prefix: &[u8]) -> Vec<u8> {
    // An empty key means "no key" to etcd; clientv3 asks for [0, [0]) instead.
    let key: &[u8] = if prefix.is_empty() { &[0] } else { prefix };
    to_json(&RangeRequest {
        key: b64(key),
        range_end: Some(b64(&prefix_range_end(prefix))),
    })
}

/// A `range` of one key.
pub fn range_key_request(key: &[u8]) -> Vec<u8> {
    to_json(&RangeRequest {
        key: b64(key),
        range_end: None,
    })
}

#[derive(Serialize)]
struct Compare {
    key: String,
    target: &'static str,
    result: &'static str,
    mod_revision: String,
}

#[derive(Serialize)]
struct PutRequest {
    key: String,
    value: String,
}

#[derive(Serialize)]
enum RequestOp {
    #[serde(rename = "request_put")]
    Put(PutRequest),
    #[serde(rename = "request_range")]
    Range(RangeRequest),
}

#[derive(Serialize)]
struct TxnRequest {
    compare: Vec<Compare>,
    success: Vec<RequestOp>,
    failure: Vec<RequestOp>,
}

/// A compare-and-set: put `value` at `key` if the key's `mod_revision` is
/// still `expected_mod_revision` (0: the key must not exist). Otherwise
/// nothing is written and the answer carries the current record
/// ([`parse_txn`] gives [`TxnOutcome::Conflict`]).
pub fn txn_put_if_revision(key: &[u8], expected_mod_revision: i64, value: &[u8]) -> Vec<u8> {
    to_json(&TxnRequest {
        compare: vec![Compare {
            key: b64(key),
            target: "MOD",
            result: "EQUAL",
            mod_revision: expected_mod_revision.to_string(),
        }],
        success: vec![RequestOp::Put(PutRequest {
            key: b64(key),
            value: b64(value),
        })],
        failure: vec![RequestOp::Range(RangeRequest {
            key: b64(key),
            range_end: None,
        })],
    })
}

#[derive(Serialize)]
struct AuthenticateRequest<'a> {
    name: &'a str,
    password: &'a str,
}

/// The body for [`AUTHENTICATE_PATH`].
pub fn authenticate_request(name: &str, password: &str) -> Vec<u8> {
    to_json(&AuthenticateRequest { name, password })
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Plain structs of strings: serializing them cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

// --------------------------------------------------------------------------- answers

/// An int64 as the gateway writes it (a string), or as a JSON number.
#[derive(Deserialize)]
#[serde(untagged)]
enum Int64 {
    Text(String),
    Number(i64),
}

fn int64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    match Int64::deserialize(deserializer)? {
        Int64::Number(n) => Ok(n),
        Int64::Text(text) => text
            .parse()
            .map_err(|_| de::Error::custom(format!("{text:?} is not an int64"))),
    }
}

#[derive(Deserialize)]
struct Header {
    #[serde(default, deserialize_with = "int64")]
    revision: i64,
}

#[derive(Deserialize)]
struct RawKeyValue {
    key: String,
    #[serde(default)]
    value: String,
    #[serde(default, deserialize_with = "int64")]
    mod_revision: i64,
}

#[derive(Deserialize)]
struct RangeResponse {
    header: Header,
    #[serde(default)]
    kvs: Vec<RawKeyValue>,
}

#[derive(Deserialize)]
struct InnerRangeResponse {
    #[serde(default)]
    kvs: Vec<RawKeyValue>,
}

#[derive(Deserialize)]
struct ResponseOp {
    response_range: Option<InnerRangeResponse>,
}

#[derive(Deserialize)]
struct TxnResponse {
    header: Header,
    #[serde(default)]
    succeeded: bool,
    #[serde(default)]
    responses: Vec<ResponseOp>,
}

#[derive(Deserialize)]
struct AuthenticateResponse {
    #[serde(default)]
    token: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error: String,
    #[serde(default)]
    message: String,
    code: Option<i64>,
}

/// The first [`QUOTE_CHARS`] characters of a body, for error messages.
fn quote(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    match text.char_indices().nth(QUOTE_CHARS) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.into_owned(),
    }
}

fn decode<'a, T: Deserialize<'a>>(call: &'static str, body: &'a [u8]) -> Result<T, EtcdError> {
    serde_json::from_slice(body).map_err(|e| EtcdError::Malformed {
        call,
        detail: e.to_string(),
        body: quote(body),
    })
}

fn unbase64(call: &'static str, field: &'static str, text: &str) -> Result<Vec<u8>, EtcdError> {
    STANDARD.decode(text).map_err(|e| EtcdError::BadField {
        call,
        field,
        detail: e.to_string(),
    })
}

fn key_value(call: &'static str, raw: RawKeyValue) -> Result<KeyValue, EtcdError> {
    Ok(KeyValue {
        key: unbase64(call, "key", &raw.key)?,
        value: unbase64(call, "value", &raw.value)?,
        mod_revision: raw.mod_revision,
    })
}

/// A `range` answer (200): the store's revision when it was read, and the
/// records in key order (none: no key matched).
pub fn parse_range(body: &[u8]) -> Result<(i64, Vec<KeyValue>), EtcdError> {
    const CALL: &str = "range";
    let answer: RangeResponse = decode(CALL, body)?;
    let kvs = answer
        .kvs
        .into_iter()
        .map(|raw| key_value(CALL, raw))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((answer.header.revision, kvs))
}

/// A [`txn_put_if_revision`] answer (200).
pub fn parse_txn(body: &[u8]) -> Result<TxnOutcome, EtcdError> {
    const CALL: &str = "txn";
    let answer: TxnResponse = decode(CALL, body)?;
    if answer.succeeded {
        // The transaction's header revision is the store's revision after the
        // put, which is the key's new mod_revision.
        return Ok(TxnOutcome::Applied {
            revision: answer.header.revision,
        });
    }
    // Failed: the failure branch is one range of the key; no `kvs` there
    // means the key does not exist.
    let range = answer
        .responses
        .into_iter()
        .next()
        .and_then(|op| op.response_range)
        .ok_or_else(|| EtcdError::Malformed {
            call: CALL,
            detail: "a transaction that did not apply without the range of its failure branch"
                .to_string(),
            body: quote(body),
        })?;
    let current = range
        .kvs
        .into_iter()
        .next()
        .map(|raw| key_value(CALL, raw))
        .transpose()?;
    Ok(TxnOutcome::Conflict { current })
}

/// An `authenticate` answer (200): the token.
pub fn parse_authenticate(body: &[u8]) -> Result<String, EtcdError> {
    const CALL: &str = "authenticate";
    let answer: AuthenticateResponse = decode(CALL, body)?;
    if answer.token.is_empty() {
        return Err(EtcdError::Malformed {
            call: CALL,
            detail: "no token (is authentication enabled in etcd? `etcdctl auth status`)"
                .to_string(),
            body: quote(body),
        });
    }
    Ok(answer.token)
}

// gRPC status codes etcd's errors carry.
const GRPC_PERMISSION_DENIED: i64 = 7;
const GRPC_UNAUTHENTICATED: i64 = 16;

/// Any answer whose status is not 200.
pub fn parse_error(status: u16, body: &[u8]) -> EtcdError {
    let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
    let (message, code) = match parsed {
        Some(e) if !e.message.is_empty() || !e.error.is_empty() => {
            let message = if e.message.is_empty() {
                e.error
            } else {
                e.message
            };
            (message, e.code)
        }
        _ => (quote(body).trim().to_string(), None),
    };
    // etcd's messages (etcdserver/api/v3rpc/rpctypes), matched on text because
    // the gRPC code alone does not tell them apart.
    let says = |text: &str| message.contains(text);
    if code == Some(GRPC_UNAUTHENTICATED)
        || says("invalid auth token")
        || says("revision of auth store is old")
    {
        EtcdError::AuthTokenInvalid { message }
    } else if says("user name is empty") {
        EtcdError::AuthRequired { message }
    } else if says("authentication failed") {
        EtcdError::AuthFailed { message }
    } else if code == Some(GRPC_PERMISSION_DENIED) || says("permission denied") {
        EtcdError::PermissionDenied { message }
    } else {
        EtcdError::Status {
            status,
            code,
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    /// Answers recorded from etcd 3.4.23 (tests/fixtures/etcd/README.md).
    macro_rules! recorded {
        ($name:literal) => {
            include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/etcd/",
                $name
            ))
            .as_slice()
        };
    }

    fn status_of(name: &str) -> u16 {
        let statuses: serde_json::Value =
            serde_json::from_slice(recorded!("statuses.json")).unwrap();
        u16::try_from(statuses[name].as_u64().unwrap()).unwrap()
    }

    fn kv(key: &str, value: &str, mod_revision: i64) -> KeyValue {
        KeyValue {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            mod_revision,
        }
    }

    #[test]
    fn request_bodies_are_the_ones_sent_to_a_real_etcd() {
        assert_eq!(
            txn_put_if_revision(
                b"/envoy-webhooks/test/hook-a",
                5,
                br#"{"status":"FAILING"}"#
            ),
            recorded!("txn-request-cas.json")
        );
        assert_eq!(
            txn_put_if_revision(
                b"/envoy-webhooks/test/hook-c",
                0,
                br#"{"status":"ENABLED"}"#
            ),
            recorded!("txn-request-create.json")
        );
        assert_eq!(
            txn_put_if_revision(b"/envoy-webhooks/test/gone", 3, br#"{"status":"ENABLED"}"#),
            recorded!("txn-request-missing.json")
        );
        assert_eq!(
            range_prefix_request(b"/envoy-webhooks/test/"),
            recorded!("range-request-prefix.json")
        );
        assert_eq!(
            authenticate_request("root", "rootpw"),
            recorded!("authenticate-request.json")
        );
    }

    #[test]
    fn prefix_range_end_follows_etcd() {
        assert_eq!(prefix_range_end(b"/a/"), b"/a0");
        assert_eq!(prefix_range_end(b"a\xff"), b"b");
        assert_eq!(prefix_range_end(b"a\xff\xff"), b"b");
        assert_eq!(prefix_range_end(b"\xff\xff"), b"\0");
        assert_eq!(prefix_range_end(b""), b"\0");
        let all: serde_json::Value = serde_json::from_slice(&range_prefix_request(b"")).unwrap();
        assert_eq!(all, serde_json::json!({"key": "AA==", "range_end": "AA=="}));
    }

    #[test]
    fn range_of_one_key_has_no_range_end() {
        let body: serde_json::Value = serde_json::from_slice(&range_key_request(b"/k")).unwrap();
        assert_eq!(body, serde_json::json!({"key": "L2s="}));
    }

    #[test]
    fn authenticate_request_escapes_json() {
        let body: serde_json::Value =
            serde_json::from_slice(&authenticate_request("a\"b", "p\\w\n")).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"name": "a\"b", "password": "p\\w\n"})
        );
    }

    #[test]
    fn range_answers() {
        let (revision, kvs) = parse_range(recorded!("range-prefix-after-txn.json")).unwrap();
        assert_eq!(revision, 8);
        assert_eq!(
            kvs,
            vec![
                kv("/envoy-webhooks/test/hook-a", r#"{"status":"FAILING"}"#, 7),
                kv("/envoy-webhooks/test/hook-b", r#"{"status":"FAILED"}"#, 6),
                kv("/envoy-webhooks/test/hook-c", r#"{"status":"ENABLED"}"#, 8),
            ]
        );
        let (revision, kvs) = parse_range(recorded!("range-key.json")).unwrap();
        assert_eq!(revision, 5);
        assert_eq!(
            kvs,
            vec![kv(
                "/envoy-webhooks/test/hook-a",
                r#"{"status":"ENABLED"}"#,
                5
            )]
        );
    }

    #[test]
    fn a_missing_key_or_empty_prefix_has_no_kvs_field() {
        assert_eq!(
            parse_range(recorded!("range-missing.json")).unwrap(),
            (9, vec![])
        );
        assert_eq!(
            parse_range(recorded!("range-prefix-empty.json")).unwrap(),
            (6, vec![])
        );
    }

    #[test]
    fn an_empty_value_has_no_value_field() {
        let (_, kvs) = parse_range(recorded!("range-empty-value.json")).unwrap();
        assert_eq!(kvs, vec![kv("/envoy-webhooks/test/empty", "", 9)]);
    }

    #[test]
    fn int64_fields_may_be_numbers_or_absent() {
        let (revision, kvs) =
            parse_range(br#"{"header":{"revision":12},"kvs":[{"key":"YQ==","mod_revision":3}]}"#)
                .unwrap();
        assert_eq!((revision, kvs), (12, vec![kv("a", "", 3)]));
        let (revision, kvs) = parse_range(br#"{"header":{}}"#).unwrap();
        assert_eq!((revision, kvs), (0, vec![]));
        let (_, kvs) = parse_range(br#"{"header":{},"kvs":[{"key":"YQ=="}]}"#).unwrap();
        assert_eq!(kvs, vec![kv("a", "", 0)]);
    }

    #[test]
    fn txn_applied() {
        assert_eq!(
            parse_txn(recorded!("txn-applied.json")).unwrap(),
            TxnOutcome::Applied { revision: 7 }
        );
        assert_eq!(
            parse_txn(recorded!("txn-create-applied.json")).unwrap(),
            TxnOutcome::Applied { revision: 8 }
        );
    }

    #[test]
    fn txn_with_a_stale_revision_returns_the_current_record() {
        // txn-request-cas (expected 5) sent a second time, after it moved hook-a to 7.
        assert_eq!(
            parse_txn(recorded!("txn-conflict-stale.json")).unwrap(),
            TxnOutcome::Conflict {
                current: Some(kv(
                    "/envoy-webhooks/test/hook-a",
                    r#"{"status":"FAILING"}"#,
                    7
                ))
            }
        );
        // Expected 0 (must not exist) on a key that exists.
        assert_eq!(
            parse_txn(recorded!("txn-create-conflict.json")).unwrap(),
            TxnOutcome::Conflict {
                current: Some(kv(
                    "/envoy-webhooks/test/hook-c",
                    r#"{"status":"ENABLED"}"#,
                    8
                ))
            }
        );
    }

    #[test]
    fn txn_on_a_key_that_is_gone_is_a_conflict_with_no_record() {
        assert_eq!(
            parse_txn(recorded!("txn-conflict-missing.json")).unwrap(),
            TxnOutcome::Conflict { current: None }
        );
    }

    #[test]
    fn txn_without_its_failure_range_is_malformed() {
        let err = parse_txn(br#"{"header":{"revision":"3"}}"#).unwrap_err();
        assert!(
            matches!(err, EtcdError::Malformed { call: "txn", .. }),
            "{err:?}"
        );
    }

    #[test]
    fn authenticate_answers() {
        assert_eq!(
            parse_authenticate(recorded!("authenticate.json")).unwrap(),
            "glypkPfpmRxsbzMl.23"
        );
        let err = parse_authenticate(br#"{"header":{"revision":"3"}}"#).unwrap_err();
        assert!(err.to_string().contains("no token"), "{err}");
    }

    #[test]
    fn an_invalid_or_expired_token_asks_for_reauthentication() {
        for (name, body) in [
            ("error-invalid-token", recorded!("error-invalid-token.json")),
            ("error-expired-token", recorded!("error-expired-token.json")),
        ] {
            let status = status_of(name);
            assert_eq!(status, 401);
            let err = parse_error(status, body);
            assert_eq!(
                err,
                EtcdError::AuthTokenInvalid {
                    message: "etcdserver: invalid auth token".to_string()
                }
            );
            assert!(err.needs_reauthentication());
            assert!(err.to_string().contains("authenticating again"), "{err}");
        }
        // After a user or role change, tokens issued before it are refused this way.
        let old = parse_error(
            400,
            br#"{"error":"etcdserver: revision of auth store is old","message":"etcdserver: revision of auth store is old","code":3}"#,
        );
        assert!(old.needs_reauthentication(), "{old:?}");
    }

    #[test]
    fn other_auth_errors_do_not_ask_for_reauthentication() {
        let no_token = parse_error(
            status_of("error-no-token"),
            recorded!("error-no-token.json"),
        );
        assert!(
            matches!(no_token, EtcdError::AuthRequired { .. }),
            "{no_token:?}"
        );
        assert!(no_token.to_string().contains("username_env"), "{no_token}");
        for (name, body) in [
            (
                "authenticate-wrong-password",
                recorded!("authenticate-wrong-password.json"),
            ),
            (
                "authenticate-unknown-user",
                recorded!("authenticate-unknown-user.json"),
            ),
        ] {
            let err = parse_error(status_of(name), body);
            assert!(matches!(err, EtcdError::AuthFailed { .. }), "{err:?}");
            assert!(!err.needs_reauthentication());
        }
        let denied = parse_error(
            status_of("error-permission-denied"),
            recorded!("error-permission-denied.json"),
        );
        assert_eq!(
            denied,
            EtcdError::PermissionDenied {
                message: "etcdserver: permission denied".to_string()
            }
        );
        assert!(denied.to_string().contains("grant-permission"), "{denied}");
    }

    #[test]
    fn other_error_answers_keep_status_code_and_message() {
        let err = parse_error(
            status_of("error-not-json-request"),
            recorded!("error-not-json-request.json"),
        );
        assert_eq!(
            err,
            EtcdError::Status {
                status: 400,
                code: Some(3),
                message: "invalid character 'o' in literal null (expecting 'u')".to_string()
            }
        );
        // An unknown path: plain text, not JSON.
        let err = parse_error(
            status_of("error-not-found"),
            recorded!("error-not-found.txt"),
        );
        assert_eq!(
            err,
            EtcdError::Status {
                status: 404,
                code: None,
                message: "Not Found".to_string()
            }
        );
        assert!(err.to_string().contains("/v3/"), "{err}");
        // A write through a follower while the leader had just died (held ~7 s first).
        let err = parse_error(
            status_of("error-leader-failure"),
            recorded!("error-leader-failure.json"),
        );
        assert_eq!(
            err,
            EtcdError::Status {
                status: 503,
                code: Some(14),
                message: "etcdserver: request timed out".to_string()
            }
        );
        assert!(err.to_string().contains("endpoint health"), "{err}");
        // Nothing at all (Envoy's own 503 with an empty body, say).
        let err = parse_error(503, b"");
        assert!(matches!(
            err,
            EtcdError::Status {
                status: 503,
                code: None,
                ..
            }
        ));
    }

    #[test]
    fn bodies_that_are_not_etcd_answers_are_errors() {
        let cases: [&[u8]; 9] = [
            b"",
            b"not json",
            b"upstream connect error or disconnect/reset before headers",
            b"[]",
            b"{}",
            br#"{"header":{"revision":"five"}}"#,
            br#"{"header":{"revision":"1"},"kvs":[{"value":"YQ=="}]}"#,
            br#"{"header":{"revision":"1"},"kvs":"nope"}"#,
            &[0xff, 0xfe, b'{'],
        ];
        for body in cases {
            assert!(parse_range(body).is_err(), "{body:?}");
            assert!(parse_txn(body).is_err(), "{body:?}");
        }
        for body in [b"".as_slice(), b"<html>", b"[]", br#"{"token":7}"#] {
            assert!(parse_authenticate(body).is_err(), "{body:?}");
        }
        let err = parse_range(b"not json").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("range") && text.contains("\"not json\""),
            "{text}"
        );
        assert!(text.contains("authority"), "{text}");
    }

    #[test]
    fn bad_base64_is_an_error() {
        let err =
            parse_range(br#"{"header":{"revision":"1"},"kvs":[{"key":"!!!","mod_revision":"1"}]}"#)
                .unwrap_err();
        assert!(
            matches!(err, EtcdError::BadField { field: "key", .. }),
            "{err:?}"
        );
        let err = parse_txn(
            br#"{"header":{},"responses":[{"response_range":{"kvs":[{"key":"YQ==","value":"%%"}]}}]}"#,
        )
        .unwrap_err();
        assert!(
            matches!(err, EtcdError::BadField { field: "value", .. }),
            "{err:?}"
        );
    }

    #[test]
    fn long_bodies_are_quoted_short() {
        let long = "x".repeat(5_000);
        let text = parse_range(long.as_bytes()).unwrap_err().to_string();
        assert!(text.len() < 800, "{}", text.len());
        let err = parse_error(500, "é".repeat(1_000).as_bytes());
        let EtcdError::Status { message, .. } = err else {
            panic!("{err:?}")
        };
        assert_eq!(message.chars().count(), QUOTE_CHARS + 3);
    }
}
