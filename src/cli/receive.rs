//! `envoy-webhooks receive`: a webhook receiver for trying things out. Prints
//! every delivery, verifies Standard Webhooks signatures, answers a chosen status.

use std::io::Write;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use envoy_webhooks::signature::{self, SigningSecret};

use super::pretty::pretty_json;
use super::{Failure, ReceiveArgs};

/// Headers not worth printing: transport and Envoy's own.
fn shown(name: &str) -> bool {
    !matches!(
        name,
        "content-length" | "connection" | "transfer-encoding" | "accept-encoding"
    ) && !name.starts_with("x-envoy-")
        && !name.starts_with("x-forwarded-")
}

pub fn run(args: &ReceiveArgs) -> Result<ExitCode, Failure> {
    let secrets = match &args.secret {
        Some(text) => {
            Some(SigningSecret::parse_list(text).map_err(|e| Failure(format!("--secret: {e}")))?)
        }
        None => None,
    };
    let address = format!("{}:{}", args.host, args.port);
    let server = tiny_http::Server::http(address.as_str())
        .map_err(|e| Failure(format!("cannot listen on {address}: {e}")))?;
    println!(
        "envoy-webhooks receive: listening on http://{address}, answering {}, signatures {}",
        args.status,
        if secrets.is_some() {
            "verified"
        } else {
            "not checked (no --secret)"
        }
    );
    flush();
    let mut received: u64 = 0;
    for mut request in server.incoming_requests() {
        received = received.saturating_add(1);
        let mut body = Vec::new();
        let read = request.as_reader().read_to_end(&mut body);
        let headers: Vec<(String, String)> = request
            .headers()
            .iter()
            .map(|h| {
                (
                    h.field.as_str().as_str().to_ascii_lowercase(),
                    h.value.as_str().to_string(),
                )
            })
            .collect();
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        let mut status = args.status;
        let mut out = format!(
            "=== delivery {received}: {} {}\n",
            request.method(),
            request.url()
        );
        for (name, value) in headers.iter().filter(|(n, _)| shown(n)) {
            out.push_str(&format!("{name}: {value}\n"));
        }
        if let Some(secrets) = &secrets {
            let verdict = match (
                header("webhook-id"),
                header("webhook-timestamp"),
                header("webhook-signature"),
            ) {
                (Some(id), Some(timestamp), Some(signatures)) => signature::verify(
                    secrets,
                    id,
                    timestamp,
                    signatures,
                    &body,
                    now_s(),
                    signature::TIMESTAMP_TOLERANCE_S,
                ),
                _ => Err("unsigned: webhook-id, -timestamp or -signature is missing".to_string()),
            };
            match verdict {
                Ok(()) => out.push_str("signature: verified\n"),
                Err(why) => {
                    out.push_str(&format!("signature: INVALID ({why})\n"));
                    status = 401;
                }
            }
        }
        match read {
            Err(e) => out.push_str(&format!("body: cannot be read: {e}\n")),
            Ok(_) => match pretty_json(&body) {
                Some(json) => {
                    out.push_str(&format!("body ({} bytes, JSON):\n{json}\n", body.len()))
                }
                None => out.push_str(&format!(
                    "body ({} bytes, not JSON):\n{}\n",
                    body.len(),
                    String::from_utf8_lossy(&body)
                )),
            },
        }
        out.push_str(&format!("answered: {status}\n"));
        print!("{out}");
        flush();
        let response =
            tiny_http::Response::from_string(if status < 300 { "ok\n" } else { "refused\n" })
                .with_status_code(tiny_http::StatusCode(status));
        if let Err(e) = request.respond(response) {
            eprintln!("envoy-webhooks receive: cannot answer delivery {received}: {e}");
        }
        if args.count.is_some_and(|count| received >= count) {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn flush() {
    // A pipe (docker logs) would otherwise hold output back.
    let _ = std::io::stdout().flush();
}
