//! `envoy-webhooks send`: POST event files, as the platform's event traffic would.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::{read_input, Failure, SendArgs};

/// `http://host:port/path`, split.
struct Target {
    host: String,
    port: u16,
    path: String,
}

fn parse_url(url: &str) -> Result<Target, Failure> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| Failure(format!("{url}: only http:// URLs are supported")))?;
    let (authority, path) = match rest.find('/') {
        Some(slash) => rest.split_at(slash),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => (
            host,
            port.parse::<u16>()
                .map_err(|_| Failure(format!("{url}: invalid port {port:?}")))?,
        ),
        None => (authority, 80),
    };
    if host.is_empty() {
        return Err(Failure(format!("{url}: no host")));
    }
    Ok(Target {
        host: host.to_string(),
        port,
        path: path.to_string(),
    })
}

const IO_TIMEOUT: Duration = Duration::from_secs(30);

fn connect(host: &str, port: u16) -> std::io::Result<TcpStream> {
    let mut last = std::io::Error::other(format!("{host}:{port} resolves to no address"));
    for address in (host, port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&address, Duration::from_secs(2)) {
            Ok(stream) => {
                stream.set_read_timeout(Some(IO_TIMEOUT))?;
                stream.set_write_timeout(Some(IO_TIMEOUT))?;
                return Ok(stream);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// One request on a new connection; the status code and the body.
fn request(
    target: &Target,
    method: &str,
    body: &[u8],
    content_type: &str,
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut stream = connect(&target.host, target.port)?;
    let head = format!(
        "{method} {} HTTP/1.1\r\nhost: {}:{}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nuser-agent: envoy-webhooks-send/{}\r\nconnection: close\r\n\r\n",
        target.path,
        target.host,
        target.port,
        body.len(),
        env!("CARGO_PKG_VERSION"),
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| text.strip_prefix("HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP response"))?;
    let body = match response.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(end) => response.get(end + 4..).unwrap_or_default().to_vec(),
        None => Vec::new(),
    };
    Ok((status, body))
}

/// Waits until `what` (HOST:PORT or an http:// URL) is up.
fn wait_for(what: &str, timeout: Duration) -> Result<(), Failure> {
    let deadline = Instant::now() + timeout;
    let check = || -> Result<(), String> {
        if what.starts_with("http://") {
            let target = parse_url(what).map_err(|Failure(e)| e)?;
            match request(&target, "GET", b"", "text/plain") {
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
        let (status, answer) = request(&target, "POST", &body, &args.content_type)
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
