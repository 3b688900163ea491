//! `envoy-webhooks redrive`: send dead-letter records again through the
//! filter's admin API, `POST {admin}/webhooks/{id}/deliver`, one request a
//! record. The record goes as it was written, so the filter delivers its event
//! under the record's `message_id` (receivers de-duplicate on it).

use std::fmt;
use std::process::ExitCode;

use serde_json::value::RawValue;
use serde_json::Value;

use super::http::{parse_url, request, Target};
use super::{read_input, Failure, RedriveArgs};

/// Where a record is in the input.
#[derive(Clone, Copy)]
enum Place {
    /// JSON Lines: the line number, from 1.
    Line(usize),
    /// A JSON array: the element's index, from 0.
    Index(usize),
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Line(n) => write!(f, "line {n}"),
            Place::Index(n) => write!(f, "index {n}"),
        }
    }
}

/// A record that can be sent: its text as written, and what names it.
struct Record<'a> {
    webhook_id: String,
    message_id: Option<String>,
    body: &'a [u8],
}

/// The records of the input, each with its place and text as written: one a
/// line, or the elements of one JSON array (the first non-blank byte is `[`).
fn split<'a>(bytes: &'a [u8], name: &str) -> Result<Vec<(Place, &'a [u8])>, Failure> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    if bytes.trim_ascii_start().first() == Some(&b'[') {
        let text = std::str::from_utf8(bytes)
            .map_err(|e| Failure(format!("{name} is not UTF-8 text: {e}")))?;
        let elements: Vec<&RawValue> = serde_json::from_str(text)
            .map_err(|e| Failure(format!("{name} is not a JSON array of records: {e}")))?;
        Ok(elements
            .into_iter()
            .enumerate()
            .map(|(index, element)| (Place::Index(index), element.get().as_bytes()))
            .collect())
    } else {
        Ok(bytes
            .split(|&b| b == b'\n')
            .enumerate()
            .map(|(index, line)| (Place::Line(index + 1), line.trim_ascii()))
            .filter(|(_, line)| !line.is_empty())
            .collect())
    }
}

/// A JSON object with a string `webhook_id` and an `event`, or why not.
fn check(text: &[u8]) -> Result<Record<'_>, String> {
    let value: Value = serde_json::from_slice(text).map_err(|e| format!("not JSON: {e}"))?;
    let object = value
        .as_object()
        .ok_or_else(|| "not a JSON object".to_string())?;
    let webhook_id = match object.get("webhook_id") {
        Some(Value::String(id)) => id,
        Some(_) => return Err("\"webhook_id\" is not a string".to_string()),
        None => return Err("no \"webhook_id\"".to_string()),
    };
    if webhook_id.is_empty() {
        return Err("\"webhook_id\" is empty".to_string());
    }
    if webhook_id == "." || webhook_id == ".." {
        return Err(format!(
            "\"webhook_id\" {webhook_id:?} cannot be a URL path segment"
        ));
    }
    if !object.contains_key("event") {
        return Err("no \"event\"".to_string());
    }
    Ok(Record {
        webhook_id: webhook_id.clone(),
        message_id: object
            .get("message_id")
            .and_then(Value::as_str)
            .map(str::to_string),
        body: text,
    })
}

/// `id` as one path segment: every byte but `A-Z a-z 0-9 - . _ ~` percent-encoded.
fn encode_segment(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An id as printed: as is when plain, else quoted with escapes.
fn shown(id: &str) -> String {
    if !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~:".contains(&b))
    {
        id.to_string()
    } else {
        format!("{id:?}")
    }
}

/// The filter's words kept to one line of at most 300 characters.
fn one_line(text: &str) -> String {
    let mut out = String::new();
    for (count, c) in text.trim().chars().enumerate() {
        if count == 300 {
            out.push_str("...");
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A 202's `{"message_id": "..."}`, in words.
fn accepted(answer: &[u8]) -> String {
    let value: Option<Value> = serde_json::from_slice(answer).ok();
    match value
        .as_ref()
        .and_then(|v| v.get("message_id"))
        .and_then(Value::as_str)
    {
        Some(id) => format!("delivered again as {}", shown(id)),
        None if answer.trim_ascii().is_empty() => "accepted".to_string(),
        None => format!("accepted: {}", one_line(&String::from_utf8_lossy(answer))),
    }
}

/// Any other answer's `{"error": "..."}`, or its body.
fn refusal(answer: &[u8]) -> String {
    let value: Option<Value> = serde_json::from_slice(answer).ok();
    match value
        .as_ref()
        .and_then(|v| v.get("error"))
        .and_then(Value::as_str)
    {
        Some(error) => one_line(error),
        None if answer.trim_ascii().is_empty() => "(no body)".to_string(),
        None => one_line(&String::from_utf8_lossy(answer)),
    }
}

/// The admin token from the environment variable `var`.
fn read_token(var: &str) -> Result<String, Failure> {
    if var.is_empty() || var.contains(['=', '\0']) {
        return Err(Failure(format!(
            "--token-env: {var:?} is not an environment variable name"
        )));
    }
    let token = match std::env::var_os(var) {
        None => {
            return Err(Failure(format!(
                "--token-env: the environment variable {var} is not set (it holds the admin token)"
            )))
        }
        Some(value) => value.into_string().map_err(|_| {
            Failure(format!(
                "--token-env: the environment variable {var} is not UTF-8"
            ))
        })?,
    };
    if token.is_empty() {
        return Err(Failure(format!(
            "--token-env: the environment variable {var} is empty (it holds the admin token)"
        )));
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Failure(format!(
            "--token-env: the environment variable {var} holds whitespace or control characters (an admin token has none)"
        )));
    }
    Ok(token)
}

pub fn run(args: &RedriveArgs) -> Result<ExitCode, Failure> {
    let admin = parse_url(&args.admin).map_err(|Failure(e)| Failure(format!("--admin: {e}")))?;
    if admin.path.contains(['?', '#']) {
        return Err(Failure(format!(
            "--admin: {}: expected http://HOST:PORT/PREFIX, without a query or fragment",
            args.admin
        )));
    }
    let authorization = match (&args.token_env, args.dry_run) {
        (_, true) => None,
        (Some(var), false) => Some(format!("Bearer {}", read_token(var)?)),
        (None, false) => {
            return Err(Failure(
                "--token-env is required unless --dry-run".to_string(),
            ))
        }
    };
    let prefix = admin.path.trim_end_matches('/');
    let base = args.admin.trim_end_matches('/');

    let bytes = read_input(&args.file)?;
    let name = if args.file == "-" {
        "standard input"
    } else {
        &args.file
    };
    let items = split(&bytes, name)?;

    let (mut accepted_count, mut failed) = (0_usize, 0_usize);
    for &(place, text) in &items {
        let record = match check(text) {
            Ok(record) => record,
            Err(why) => {
                failed += 1;
                println!("redrive: {place}: invalid record: {why}");
                continue;
            }
        };
        let segment = encode_segment(&record.webhook_id);
        let url = format!("{base}/webhooks/{segment}/deliver");
        let label = format!(
            "redrive: {place} webhook {} message_id {}",
            shown(&record.webhook_id),
            record
                .message_id
                .as_deref()
                .map_or_else(|| "(none)".to_string(), shown),
        );
        let Some(authorization) = &authorization else {
            accepted_count += 1;
            println!("{label} -> would POST {url} ({} bytes)", record.body.len());
            continue;
        };
        let target = Target {
            path: format!("{prefix}/webhooks/{segment}/deliver"),
            ..admin.clone()
        };
        let headers = [
            ("content-type", "application/json"),
            ("authorization", authorization.as_str()),
        ];
        match request(&target, "POST", &headers, record.body, "redrive") {
            Ok((202, answer)) => {
                accepted_count += 1;
                println!("{label} -> 202 {}", accepted(&answer));
            }
            Ok((status, answer)) => {
                failed += 1;
                println!("{label} -> {status} {}", refusal(&answer));
            }
            Err(e) => {
                failed += 1;
                println!("{label} -> no answer: POST {url}: {e}");
            }
        }
    }
    let total = items.len();
    if args.dry_run {
        if failed == 0 {
            println!("redrive: {total} record(s): would send {accepted_count}");
        } else {
            println!("redrive: {total} record(s): would send {accepted_count}, {failed} invalid");
        }
    } else {
        println!("redrive: {total} record(s): {accepted_count} sent, {failed} failed");
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_percent_encoded_as_one_segment() {
        assert_eq!(encode_segment("formats-to_x.1~"), "formats-to_x.1~");
        assert_eq!(encode_segment("a b/c"), "a%20b%2Fc");
        assert_eq!(encode_segment("é?#%"), "%C3%A9%3F%23%25");
    }

    #[test]
    fn lines_and_arrays_split_into_records_as_written() {
        let lines = split(b"{\"a\":1}\r\n\n  \n{\"b\": 2}  \n", "f")
            .ok()
            .unwrap_or_default();
        let got: Vec<String> = lines
            .iter()
            .map(|(place, text)| format!("{place} {}", String::from_utf8_lossy(text)))
            .collect();
        assert_eq!(got, ["line 1 {\"a\":1}", "line 4 {\"b\": 2}"]);
        let array = split(b" [ {\"a\": 1} , 2 ]", "f").ok().unwrap_or_default();
        let got: Vec<String> = array
            .iter()
            .map(|(place, text)| format!("{place} {}", String::from_utf8_lossy(text)))
            .collect();
        assert_eq!(got, ["index 0 {\"a\": 1}", "index 1 2"]);
        assert!(split(b"[1,", "f").is_err());
    }
}
