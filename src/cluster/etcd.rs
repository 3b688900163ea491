//! etcd v3's JSON gateway, as far as the cluster state uses it: read every
//! key under a prefix, put a key if its `mod_revision` is still the one read
//! (else read it back in the same round trip), and authenticate.
//!
//! Keys and values travel as base64; 64-bit integers as JSON strings, and
//! fields equal to their default (0, false, empty) are left out.

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::{json, Value};

pub const RANGE_PATH: &str = "/v3/kv/range";
pub const TXN_PATH: &str = "/v3/kv/txn";
pub const AUTHENTICATE_PATH: &str = "/v3/auth/authenticate";
pub const LEASE_GRANT_PATH: &str = "/v3/lease/grant";
pub const LEASE_KEEPALIVE_PATH: &str = "/v3/lease/keepalive";
pub const LEASE_REVOKE_PATH: &str = "/v3/lease/revoke";

/// A call to etcd's gateway at `path` through the cluster `config` names:
/// marked as ours (an Envoy with the filter on the way lets it pass), with
/// the auth `token` on every path but authentication itself.
pub fn call<'a>(
    config: &'a crate::config::EtcdConfig,
    path: &'a str,
    body: &'a [u8],
    token: Option<&'a str>,
) -> crate::host::Call<'a> {
    let mut headers = vec![
        (":method", "POST"),
        (":path", path),
        (":authority", config.authority.as_str()),
        ("content-type", "application/json"),
        (crate::config::DELIVERY_MARKER, "1"),
    ];
    if let (Some(token), false) = (token, path == AUTHENTICATE_PATH) {
        headers.push(("authorization", token));
    }
    crate::host::Call {
        cluster: &config.cluster,
        headers,
        body,
        timeout_ms: config.timeout_ms,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

/// How a compare-and-set ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOutcome {
    /// Written; `revision` is the key's new `mod_revision`.
    Applied { revision: i64 },
    /// Someone wrote first: what the key holds now (`None`: it does not exist).
    Conflict { current: Option<KeyValue> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EtcdError {
    /// The answer is not what etcd's gateway sends.
    Malformed(String),
    /// The token is missing, invalid or expired: authenticate again.
    AuthExpired { status: u16, message: String },
    /// etcd (or Envoy in front of it) refused the request.
    Refused { status: u16, message: String },
    /// The lease named in the request is gone (it lapsed): grant a new one.
    LeaseNotFound,
    /// The call ended without an answer: etcd down, a timeout or a reset.
    /// A write may or may not have applied.
    NoAnswer,
}

impl fmt::Display for EtcdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EtcdError::Malformed(why) => write!(
                f,
                "the answer is not etcd's v3 JSON gateway ({why}); check that cluster_state.etcd.cluster reaches etcd's client port"
            ),
            EtcdError::AuthExpired { status, message } => write!(
                f,
                "HTTP {status}: {message}; authenticating again"
            ),
            EtcdError::Refused { status, message } => write!(f, "HTTP {status}: {message}"),
            EtcdError::LeaseNotFound => {
                write!(f, "etcdserver: requested lease not found; granting a new one")
            }
            EtcdError::NoAnswer => write!(f, "no answer (etcd down, a timeout or a reset)"),
        }
    }
}

fn encode(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
}

/// The first key after every key starting with `prefix` (etcd's `range_end`).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last.saturating_add(1));
            return end;
        }
    }
    // Every byte 0xff (or empty): to the end of the keyspace.
    vec![0]
}

pub fn range_prefix_request(prefix: &[u8]) -> Vec<u8> {
    json!({"key": encode(prefix), "range_end": encode(&prefix_end(prefix))})
        .to_string()
        .into_bytes()
}

pub fn txn_put_if_revision(key: &[u8], expected_mod_revision: i64, value: &[u8]) -> Vec<u8> {
    let key = encode(key);
    json!({
        "compare": [{"key": key, "target": "MOD", "result": "EQUAL",
                     "mod_revision": expected_mod_revision.to_string()}],
        "success": [{"request_put": {"key": key, "value": encode(value)}}],
        "failure": [{"request_range": {"key": key}}],
    })
    .to_string()
    .into_bytes()
}

/// Every key under `all_prefix`, and a page of at most `limit` keys of
/// `[from, range_end of page_prefix)`, without values, all read at one
/// revision: a transaction of ranges is one consistent view, and without
/// `serializable` it is linearizable (served through the leader, never by a
/// member that is behind). A prefix that can grow large is read a page a time.
pub fn txn_read_keys_page(
    all_prefix: &[u8],
    page_prefix: &[u8],
    from: &[u8],
    limit: usize,
) -> Vec<u8> {
    let from = if from.is_empty() { page_prefix } else { from };
    json!({"success": [
        {"request_range": {"key": encode(all_prefix), "range_end": encode(&prefix_end(all_prefix)),
                           "keys_only": true}},
        {"request_range": {"key": encode(from), "range_end": encode(&prefix_end(page_prefix)),
                           "keys_only": true, "limit": limit.to_string()}},
    ]})
    .to_string()
    .into_bytes()
}

/// Each of `keys` with its value, all read at one revision.
pub fn txn_read_values(keys: &[&[u8]]) -> Vec<u8> {
    let ranges: Vec<Value> = keys
        .iter()
        .map(|key| json!({"request_range": {"key": encode(key)}}))
        .collect();
    json!({"success": ranges}).to_string().into_bytes()
}

/// The key-values of each range of a read-only transaction's answer, in order.
pub fn parse_txn_ranges(body: &[u8], expected: usize) -> Result<Vec<Vec<KeyValue>>, EtcdError> {
    let answer = parse_json(body)?;
    header_revision(&answer)?;
    let responses: &[Value] = match answer.get("responses") {
        None | Some(Value::Null) => &[],
        Some(Value::Array(items)) => items,
        Some(_) => return Err(EtcdError::Malformed("responses is not a list".to_string())),
    };
    if responses.len() != expected {
        return Err(EtcdError::Malformed(format!(
            "{} ranges in the answer to a transaction of {expected}",
            responses.len()
        )));
    }
    responses
        .iter()
        .map(|response| {
            let range = response.get("response_range").ok_or_else(|| {
                EtcdError::Malformed("a read transaction answered without a range".to_string())
            })?;
            key_values(range)
        })
        .collect()
}

/// One read of a read-only transaction.
#[derive(Debug, Clone, Copy)]
pub enum Read<'a> {
    /// One key, with its value.
    Key(&'a [u8]),
    /// The keys under a prefix with their values, at most `limit` (0: all),
    /// written after revision `since` (0: all; etcd's `min_mod_revision`).
    Prefix {
        prefix: &'a [u8],
        limit: usize,
        since: i64,
    },
    /// How many keys are under a prefix (none sent).
    Count(&'a [u8]),
}

/// `reads`, all at one revision (a transaction is one consistent view).
pub fn txn_reads(reads: &[Read<'_>]) -> Vec<u8> {
    let ranges: Vec<Value> = reads
        .iter()
        .map(|read| match *read {
            Read::Key(key) => json!({"request_range": {"key": encode(key)}}),
            Read::Prefix {
                prefix,
                limit,
                since,
            } => {
                let mut range = json!({"key": encode(prefix), "range_end": encode(&prefix_end(prefix))});
                if limit > 0 {
                    range["limit"] = json!(limit.to_string());
                }
                if since > 0 {
                    range["min_mod_revision"] = json!(since.saturating_add(1).to_string());
                }
                json!({"request_range": range})
            }
            Read::Count(prefix) => json!({"request_range": {
                "key": encode(prefix), "range_end": encode(&prefix_end(prefix)), "count_only": true}}),
        })
        .collect();
    json!({"success": ranges}).to_string().into_bytes()
}

/// The answer to one `Read`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RangeRead {
    pub kvs: Vec<KeyValue>,
    /// Every key the range holds, also those over its limit.
    pub count: u64,
    /// Keys were left out (the limit).
    pub more: bool,
}

/// The store's revision and the answer to each read of `txn_reads`, in order.
pub fn parse_reads(body: &[u8], expected: usize) -> Result<(i64, Vec<RangeRead>), EtcdError> {
    let answer = parse_json(body)?;
    let revision = header_revision(&answer)?;
    let responses: &[Value] = match answer.get("responses") {
        None | Some(Value::Null) => &[],
        Some(Value::Array(items)) => items,
        Some(_) => return Err(EtcdError::Malformed("responses is not a list".to_string())),
    };
    if responses.len() != expected {
        return Err(EtcdError::Malformed(format!(
            "{} ranges in the answer to a transaction of {expected}",
            responses.len()
        )));
    }
    let reads = responses
        .iter()
        .map(|response| {
            let range = response.get("response_range").ok_or_else(|| {
                EtcdError::Malformed("a read transaction answered without a range".to_string())
            })?;
            let count = u64::try_from(int(range, "count")?)
                .map_err(|_| EtcdError::Malformed("a negative count".to_string()))?;
            Ok(RangeRead {
                kvs: key_values(range)?,
                count,
                more: range.get("more") == Some(&Value::Bool(true)),
            })
        })
        .collect::<Result<Vec<_>, EtcdError>>()?;
    Ok((revision, reads))
}

/// What must still hold for a conditional write to apply.
#[derive(Debug, Clone, Copy)]
pub enum Condition<'a> {
    /// The key is as read: its `mod_revision` is still this.
    Unchanged(&'a [u8], i64),
    /// The key does not exist (etcd compares a missing key's `mod_revision` as 0).
    Absent(&'a [u8]),
    /// No key under the prefix was written after `revision` (etcd compares
    /// every key of a range, and an empty range as a missing key). Deleted
    /// keys leave no trace here: pair it with what a delete writes.
    PrefixUnchangedSince(&'a [u8], i64),
}

/// One write of a conditional transaction.
#[derive(Debug, Clone, Copy)]
pub enum Write<'a> {
    Put(&'a [u8], &'a [u8]),
    Delete(&'a [u8]),
}

/// `writes`, applied together only if every condition holds; the answer
/// says which (`parse_txn_applied`).
pub fn txn_if(conditions: &[Condition<'_>], writes: &[Write<'_>]) -> Vec<u8> {
    let compare: Vec<Value> = conditions
        .iter()
        .map(|condition| match *condition {
            Condition::Unchanged(key, revision) => json!({"key": encode(key), "target": "MOD",
                "result": "EQUAL", "mod_revision": revision.to_string()}),
            Condition::Absent(key) => json!({"key": encode(key), "target": "MOD",
                "result": "EQUAL", "mod_revision": "0"}),
            Condition::PrefixUnchangedSince(prefix, revision) => json!({"key": encode(prefix),
                "range_end": encode(&prefix_end(prefix)), "target": "MOD", "result": "LESS",
                "mod_revision": revision.saturating_add(1).to_string()}),
        })
        .collect();
    let success: Vec<Value> = writes
        .iter()
        .map(|write| match *write {
            Write::Put(key, value) => {
                json!({"request_put": {"key": encode(key), "value": encode(value)}})
            }
            Write::Delete(key) => json!({"request_delete_range": {"key": encode(key)}}),
        })
        .collect();
    json!({"compare": compare, "success": success})
        .to_string()
        .into_bytes()
}

/// Puts and deletes in one transaction (no compare: it always applies).
pub fn txn_write(puts: &[(Vec<u8>, Vec<u8>)], deletes: &[Vec<u8>], lease: Option<i64>) -> Vec<u8> {
    let mut ops: Vec<Value> = puts
        .iter()
        .map(|(key, value)| {
            let mut put = json!({"key": encode(key), "value": encode(value)});
            if let Some(lease) = lease {
                put["lease"] = json!(lease.to_string());
            }
            json!({"request_put": put})
        })
        .collect();
    ops.extend(
        deletes
            .iter()
            .map(|key| json!({"request_delete_range": {"key": encode(key)}})),
    );
    json!({"success": ops}).to_string().into_bytes()
}

/// A take's receipt: the key the taker writes (under its own lease) in the
/// same transaction as the delete, holding what it took. A take sent again
/// because its answer was lost fails its compare (the first one applied) and
/// reads the receipt instead, so the taker knows the record is its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub key: Vec<u8>,
    /// The record's value, as read just before (etcd cannot copy a value).
    pub value: Vec<u8>,
    pub lease: i64,
}

/// Reads and deletes `key` if its `mod_revision` is still `expected` and
/// `unless_key` does not exist (etcd compares a missing key's `mod_revision`
/// as 0): whoever gets it, gets it alone, and only while its owner's liveness
/// key is gone, as etcd sees it when it applies the take. The value is kept
/// under `receipt` (see `Receipt`).
pub fn txn_take_if_revision(
    key: &[u8],
    expected_mod_revision: i64,
    unless_key: &[u8],
    receipt: &Receipt,
) -> Vec<u8> {
    let compare = vec![
        json!({"key": encode(key), "target": "MOD", "result": "EQUAL",
               "mod_revision": expected_mod_revision.to_string()}),
        json!({"key": encode(unless_key), "target": "MOD", "result": "EQUAL",
               "mod_revision": "0"}),
    ];
    take_txn(key, compare, Some(receipt))
}

/// The transaction of a take or removal: with a receipt, the success branch
/// moves the value to it and the failure branch reads it.
fn take_txn(key: &[u8], compare: Vec<Value>, receipt: Option<&Receipt>) -> Vec<u8> {
    let key = encode(key);
    let mut success = vec![
        json!({"request_range": {"key": key}}),
        json!({"request_delete_range": {"key": key}}),
    ];
    let mut failure = Vec::new();
    if let Some(receipt) = receipt {
        success.push(json!({"request_put": {"key": encode(&receipt.key),
                                            "value": encode(&receipt.value),
                                            "lease": receipt.lease.to_string()}}));
        failure.push(json!({"request_range": {"key": encode(&receipt.key)}}));
    }
    let mut txn = json!({"compare": compare, "success": success});
    if !failure.is_empty() {
        txn["failure"] = Value::Array(failure);
    }
    txn.to_string().into_bytes()
}

/// Reads and deletes `key` if its `mod_revision` is still `expected`, the
/// key `unless_key` (if any) does not exist, and no key under `unchanged_prefix`
/// was written after `revision` (etcd compares every key of a range, and an
/// empty range as a missing key, `mod_revision` 0): a removal decided from
/// what was read at `revision` applies only if that is still true. With a
/// receipt, as a take.
pub fn txn_remove_if_unchanged(
    key: &[u8],
    expected_mod_revision: i64,
    unless_key: Option<&[u8]>,
    unchanged_prefix: &[u8],
    revision: i64,
    receipt: Option<&Receipt>,
) -> Vec<u8> {
    let mut compare = vec![
        json!({"key": encode(key), "target": "MOD", "result": "EQUAL",
                                  "mod_revision": expected_mod_revision.to_string()}),
    ];
    if let Some(unless_key) = unless_key {
        compare.push(
            json!({"key": encode(unless_key), "target": "MOD", "result": "EQUAL",
                            "mod_revision": "0"}),
        );
    }
    compare.push(json!({"key": encode(unchanged_prefix),
                        "range_end": encode(&prefix_end(unchanged_prefix)),
                        "target": "MOD", "result": "LESS",
                        "mod_revision": revision.saturating_add(1).to_string()}));
    take_txn(key, compare, receipt)
}

pub fn lease_grant_request(ttl_s: u64) -> Vec<u8> {
    json!({"TTL": ttl_s.to_string()}).to_string().into_bytes()
}

pub fn lease_id_request(id: i64) -> Vec<u8> {
    json!({"ID": id.to_string()}).to_string().into_bytes()
}

/// The granted lease's id.
pub fn parse_lease_grant(body: &[u8]) -> Result<i64, EtcdError> {
    let answer = parse_json(body)?;
    if let Some(error) = answer
        .get("error")
        .and_then(Value::as_str)
        .filter(|e| !e.is_empty())
    {
        return Err(EtcdError::Refused {
            status: 200,
            message: error.to_string(),
        });
    }
    match int(&answer, "ID")? {
        0 => Err(EtcdError::Malformed(
            "a lease grant without an ID".to_string(),
        )),
        id => Ok(id),
    }
}

/// The body of an answer, or the error it (or its absence) stands for.
pub fn answer_body(status: Option<u16>, body: &[u8]) -> Result<&[u8], EtcdError> {
    match status {
        Some(200) => Ok(body),
        Some(status) => Err(parse_error(status, body)),
        None => Err(EtcdError::NoAnswer),
    }
}

/// Whether the lease is still alive (a lapsed one answers without a TTL).
pub fn parse_keepalive(body: &[u8]) -> Result<bool, EtcdError> {
    let answer = parse_json(body)?;
    let result = answer
        .get("result")
        .ok_or_else(|| EtcdError::Malformed("a keepalive answer without a result".to_string()))?;
    Ok(int(result, "TTL")? > 0)
}

/// A transaction without compare, or one whose compare failed: whether it applied.
pub fn parse_txn_applied(body: &[u8]) -> Result<bool, EtcdError> {
    let answer = parse_json(body)?;
    header_revision(&answer)?;
    match answer.get("succeeded") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(EtcdError::Malformed(
            "succeeded is not a boolean".to_string(),
        )),
    }
}

/// How a take or removal ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// Taken now: the record as it was.
    Now(KeyValue),
    /// Taken by an earlier send of the same take, whose answer was lost:
    /// the receipt's key-value (its value is the record's).
    Earlier(KeyValue),
    /// Changed, taken or removed by someone else.
    NotTaken,
}

/// What `txn_take_if_revision` or `txn_remove_if_unchanged` took.
pub fn parse_take(body: &[u8]) -> Result<Taken, EtcdError> {
    let applied = parse_txn_applied(body)?;
    let answer = parse_json(body)?;
    let range = answer
        .get("responses")
        .and_then(Value::as_array)
        .and_then(|responses| responses.first())
        .and_then(|response| response.get("response_range"));
    let Some(range) = range else {
        if applied {
            return Err(EtcdError::Malformed(
                "a take without the range of its key".to_string(),
            ));
        }
        // No receipt asked for.
        return Ok(Taken::NotTaken);
    };
    let found = key_values(range)?.into_iter().next();
    Ok(match (applied, found) {
        (true, Some(kv)) => Taken::Now(kv),
        (true, None) => {
            return Err(EtcdError::Malformed(
                "a take that read no record".to_string(),
            ))
        }
        (false, Some(receipt)) => Taken::Earlier(receipt),
        (false, None) => Taken::NotTaken,
    })
}

pub fn authenticate_request(name: &str, password: &str) -> Vec<u8> {
    json!({"name": name, "password": password})
        .to_string()
        .into_bytes()
}

fn parse_json(body: &[u8]) -> Result<Value, EtcdError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| EtcdError::Malformed(format!("not JSON: {e}")))?;
    if !value.is_object() {
        return Err(EtcdError::Malformed("not a JSON object".to_string()));
    }
    Ok(value)
}

/// An int64 field: a string, a number, or absent (0).
fn int(value: &Value, field: &str) -> Result<i64, EtcdError> {
    match value.get(field) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::String(text)) => text
            .parse()
            .map_err(|_| EtcdError::Malformed(format!("{field} is \"{text}\", not an integer"))),
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| EtcdError::Malformed(format!("{field} is {n}, not an int64"))),
        Some(_) => Err(EtcdError::Malformed(format!("{field} is not an integer"))),
    }
}

/// A base64 field; absent is empty.
fn bytes(value: &Value, field: &str) -> Result<Vec<u8>, EtcdError> {
    match value.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(text)) => BASE64
            .decode(text)
            .map_err(|e| EtcdError::Malformed(format!("{field} is not base64: {e}"))),
        Some(_) => Err(EtcdError::Malformed(format!("{field} is not a string"))),
    }
}

fn key_values(range: &Value) -> Result<Vec<KeyValue>, EtcdError> {
    match range.get("kvs") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|kv| {
                Ok(KeyValue {
                    key: bytes(kv, "key")?,
                    value: bytes(kv, "value")?,
                    mod_revision: int(kv, "mod_revision")?,
                })
            })
            .collect(),
        Some(_) => Err(EtcdError::Malformed("kvs is not a list".to_string())),
    }
}

fn header_revision(answer: &Value) -> Result<i64, EtcdError> {
    let header = answer
        .get("header")
        .ok_or_else(|| EtcdError::Malformed("no header".to_string()))?;
    int(header, "revision")
}

/// The store's revision and every key-value of a range answer.
pub fn parse_range(body: &[u8]) -> Result<(i64, Vec<KeyValue>), EtcdError> {
    let answer = parse_json(body)?;
    Ok((header_revision(&answer)?, key_values(&answer)?))
}

pub fn parse_txn(body: &[u8]) -> Result<TxnOutcome, EtcdError> {
    let answer = parse_json(body)?;
    let revision = header_revision(&answer)?;
    let succeeded = match answer.get("succeeded") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(EtcdError::Malformed(
                "succeeded is not a boolean".to_string(),
            ))
        }
    };
    if succeeded {
        return Ok(TxnOutcome::Applied { revision });
    }
    let range = answer
        .get("responses")
        .and_then(Value::as_array)
        .and_then(|responses| responses.first())
        .and_then(|response| response.get("response_range"))
        .ok_or_else(|| {
            EtcdError::Malformed("a failed txn without the range of its key".to_string())
        })?;
    let current = key_values(range)?.into_iter().next();
    Ok(TxnOutcome::Conflict { current })
}

pub fn parse_authenticate(body: &[u8]) -> Result<String, EtcdError> {
    let answer = parse_json(body)?;
    match answer.get("token").and_then(Value::as_str) {
        Some(token) if !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(token.to_string())
        }
        _ => Err(EtcdError::Malformed(
            "no usable token in the authenticate answer".to_string(),
        )),
    }
}

/// A non-200 answer. etcd's gateway sends `{"error", "message", "code"}`
/// with gRPC codes; 16 (unauthenticated) and the token messages mean the
/// token must be renewed.
pub fn parse_error(status: u16, body: &[u8]) -> EtcdError {
    let answer: Option<Value> = serde_json::from_slice(body).ok();
    let message = answer
        .as_ref()
        .and_then(|a| a.get("message").or_else(|| a.get("error")))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| {
            let start = body.get(..body.len().min(200)).unwrap_or_default();
            String::from_utf8_lossy(start).into_owned()
        });
    let code = answer
        .as_ref()
        .and_then(|a| a.get("code"))
        .and_then(Value::as_u64);
    // "user name is empty" (etcd has authentication on and no credentials
    // are configured) is not renewed by authenticating again: it is refused.
    let token_problem =
        message.contains("invalid auth token") || message.contains("revision of auth store is old");
    if code == Some(16) || token_problem {
        EtcdError::AuthExpired { status, message }
    } else if message.contains("requested lease not found") {
        EtcdError::LeaseNotFound
    } else {
        EtcdError::Refused { status, message }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_end_is_the_next_key_after_the_prefix() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }

    #[test]
    fn a_range_answer_with_strings_for_integers_and_omitted_defaults() {
        let body = br#"{"header":{"cluster_id":"1","member_id":"2","revision":"9","raft_term":"2"},
            "kvs":[{"key":"L3gvYQ==","create_revision":"4","mod_revision":"7","version":"2","value":"e30="},
                   {"key":"L3gvYg==","mod_revision":"8"}],"count":"2"}"#;
        let (revision, kvs) = parse_range(body).unwrap();
        assert_eq!(revision, 9);
        assert_eq!(kvs[0].key, b"/x/a");
        assert_eq!(kvs[0].value, b"{}");
        assert_eq!(kvs[0].mod_revision, 7);
        assert_eq!(kvs[1].value, b"");
        let (_, none) = parse_range(br#"{"header":{"revision":"3"}}"#).unwrap();
        assert!(none.is_empty());
    }

    #[test]
    fn a_txn_applied_or_in_conflict() {
        let applied = br#"{"header":{"revision":"12"},"succeeded":true,"responses":[{"response_put":{"header":{"revision":"12"}}}]}"#;
        assert_eq!(
            parse_txn(applied).unwrap(),
            TxnOutcome::Applied { revision: 12 }
        );
        let conflict = br#"{"header":{"revision":"12"},"responses":[{"response_range":{"header":{"revision":"12"},"kvs":[{"key":"YQ==","value":"Yg==","mod_revision":"11"}],"count":"1"}}]}"#;
        assert_eq!(
            parse_txn(conflict).unwrap(),
            TxnOutcome::Conflict {
                current: Some(KeyValue {
                    key: b"a".to_vec(),
                    value: b"b".to_vec(),
                    mod_revision: 11
                })
            }
        );
        let gone = br#"{"header":{"revision":"12"},"responses":[{"response_range":{"header":{"revision":"12"}}}]}"#;
        assert_eq!(
            parse_txn(gone).unwrap(),
            TxnOutcome::Conflict { current: None }
        );
    }

    #[test]
    fn what_is_not_etcd_is_an_error_not_a_panic() {
        for body in [
            &b"<html>"[..],
            b"[]",
            b"{}",
            br#"{"header":{"revision":"x"}}"#,
            br#"{"header":{"revision":"1"},"kvs":[{"key":"%%%"}]}"#,
            br#"{"header":{"revision":"1"},"kvs":{}}"#,
        ] {
            assert!(
                parse_range(body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
            assert!(parse_txn(body).is_err());
        }
        assert!(parse_authenticate(br#"{"token":""}"#).is_err());
        assert!(parse_authenticate(b"{\"token\":\"a\\nb\"}").is_err());
    }

    #[test]
    fn an_invalid_token_means_authenticate_again() {
        let body = br#"{"error":"etcdserver: invalid auth token","code":16,"message":"etcdserver: invalid auth token"}"#;
        assert!(matches!(
            parse_error(401, body),
            EtcdError::AuthExpired { .. }
        ));
        let other = parse_error(
            503,
            b"upstream connect error or disconnect/reset before headers",
        );
        assert!(matches!(other, EtcdError::Refused { status: 503, .. }));
        assert!(other.to_string().contains("upstream connect error"));
    }

    #[test]
    fn requests_carry_base64_and_the_revision_as_a_string() {
        let txn: Value = serde_json::from_slice(&txn_put_if_revision(b"k", 5, b"v")).unwrap();
        assert_eq!(txn["compare"][0]["mod_revision"], "5");
        assert_eq!(txn["compare"][0]["key"], "aw==");
        assert_eq!(txn["success"][0]["request_put"]["value"], "dg==");
        let range: Value = serde_json::from_slice(&range_prefix_request(b"/p/")).unwrap();
        assert_eq!(range["range_end"], encode(b"/p0"));
    }
}
