//! A tiny HTTP/1.1 client for `send` and `redrive`: one request per connection,
//! `http://` only.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::Failure;

/// `http://host:port/path`, split.
#[derive(Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub path: String,
}

pub fn parse_url(url: &str) -> Result<Target, Failure> {
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

pub fn connect(host: &str, port: u16) -> std::io::Result<TcpStream> {
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
///
/// `headers` are written after `host`, in order, then `content-length`,
/// `user-agent: envoy-webhooks-{agent}/VERSION` and `connection: close`. The
/// caller makes sure their values hold no CR or LF.
pub fn request(
    target: &Target,
    method: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    agent: &str,
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut stream = connect(&target.host, target.port)?;
    let mut head = format!(
        "{method} {} HTTP/1.1\r\nhost: {}:{}\r\n",
        target.path, target.host, target.port,
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!(
        "content-length: {}\r\nuser-agent: envoy-webhooks-{agent}/{}\r\nconnection: close\r\n\r\n",
        body.len(),
        env!("CARGO_PKG_VERSION"),
    ));
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
