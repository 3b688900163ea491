//! `envoy-webhooks send`: POST event files, as the platform's event traffic would.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::http::{connect, parse_url, request};
use super::{read_input, Failure, SendArgs};

/// Waits until `what` (HOST:PORT or an http:// URL) is up.
fn wait_for(what: &str, timeout: Duration) -> Result<(), Failure> {
    let deadline = Instant::now() + timeout;
    let check = || -> Result<(), String> {
        if what.starts_with("http://") {
            let target = parse_url(what).map_err(|Failure(e)| e)?;
            match request(
                &target,
                "GET",
                &[("content-type", "text/plain")],
                b"",
                "send",
            ) {
                Ok((200, _)) => Ok(()),
                Ok((status, _)) => Err(format!("answered {status}")),
                Err(e) => Err(e.to_string()),
            }
        } else {
            let (host, port) = what
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
                .ok_or_else(|| format!("{what}: expected HOST:PORT or an http:// URL"))?;
            connect(host, port).map(drop).map_err(|e| e.to_string())
        }
    };
    loop {
        match check() {
            Ok(()) => return Ok(()),
            Err(why) if why.contains("expected HOST:PORT") || why.contains("only http://") => {
                return Err(Failure(why))
            }
            Err(why) => {
                if Instant::now() >= deadline {
                    return Err(Failure(format!(
                        "{what} is not up after {} s: {why}",
                        timeout.as_secs()
                    )));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn run(args: &SendArgs) -> Result<ExitCode, Failure> {
    let target = parse_url(&args.url)?;
    for what in &args.wait {
        wait_for(what, Duration::from_secs(args.wait_timeout_s))?;
        println!("envoy-webhooks send: {what} is up");
    }
    let mut all_ok = true;
    for file in &args.files {
        let body = read_input(file)?;
        let (status, answer) = request(
            &target,
            "POST",
            &[("content-type", &args.content_type)],
            &body,
            "send",
        )
        .map_err(|e| Failure(format!("POST {}: {e}", args.url)))?;
        all_ok &= (200..300).contains(&status);
        println!(
            "envoy-webhooks send: POST {} {file} ({} bytes) -> {status} {}",
            args.url,
            body.len(),
            String::from_utf8_lossy(&answer).trim()
        );
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
