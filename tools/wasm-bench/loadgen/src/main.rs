//! openloop: a fixed-rate HTTP/1.1 load generator (the part of wrk2 that
//! `scripts/bench` needs: Debian has no wrk2).
//!
//! ```text
//! openloop --port PORT --bodies EVENTS.ndjson --rate REQ_PER_S --duration S
//!          [--connections 32] [--host 127.0.0.1] [--path /api/v1/events]
//!          [--content-type application/json]
//! ```
//!
//! Requests are due on a fixed schedule, `start + k / rate` for the k-th,
//! whatever happens to earlier ones: each of `--connections` threads owns one
//! keep-alive connection, takes the next due request as soon as it is free,
//! waits for its time and sends it (the lines of `--bodies` in turn). A request
//! only waits past its time when every connection is busy. Latency is measured
//! from the moment a request was *due*, not from when it could be sent, so a
//! stall delays every request queued behind it and shows in the percentiles
//! (no "coordinated omission", as in wrk2). The time from sending to the
//! answer is reported too (`service_us`), and how late requests went out
//! (`send_lateness_us`: the generator's own delay plus waiting for a free
//! connection).
//!
//! Requests due within `--duration` are sent; those not sent within 5 s after
//! it count as `missed`. Prints one JSON object: requests, errors, achieved
//! rate, and latency percentiles in microseconds.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Options {
    host: String,
    port: u16,
    path: String,
    content_type: String,
    bodies: String,
    rate: f64,
    duration: f64,
    connections: usize,
}

#[derive(Default)]
struct ThreadResult {
    /// From due time to the end of the answer, µs.
    latency: Vec<u32>,
    /// From sending to the end of the answer, µs.
    service: Vec<u32>,
    /// From due time to sending, µs (the generator's own lateness).
    lateness: Vec<u32>,
    status_errors: u64,
    io_errors: u64,
    missed: u64,
}

extern "C" {
    fn prctl(option: i32, ...) -> i32;
}
const PR_SET_TIMERSLACK: i32 = 29;

fn main() -> ExitCode {
    match parse_options().and_then(run) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("openloop: {e}");
            ExitCode::from(2)
        }
    }
}

fn parse_options() -> Result<Options, String> {
    let mut o = Options {
        host: "127.0.0.1".into(),
        port: 0,
        path: "/api/v1/events".into(),
        content_type: "application/json".into(),
        bodies: String::new(),
        rate: 0.0,
        duration: 10.0,
        connections: 32,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let bad = || format!("bad value for {flag}: {value}");
        match flag.as_str() {
            "--host" => o.host = value.clone(),
            "--port" => o.port = value.parse().map_err(|_| bad())?,
            "--path" => o.path = value.clone(),
            "--content-type" => o.content_type = value.clone(),
            "--bodies" => o.bodies = value.clone(),
            "--rate" => o.rate = value.parse().map_err(|_| bad())?,
            "--duration" => o.duration = value.parse().map_err(|_| bad())?,
            "--connections" => o.connections = value.parse().map_err(|_| bad())?,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    if o.port == 0 || o.bodies.is_empty() || o.rate <= 0.0 || o.connections == 0 {
        return Err("usage: openloop --port PORT --bodies FILE --rate REQ_PER_S --duration S [--connections N] [--host H] [--path P] [--content-type T]".into());
    }
    Ok(o)
}

fn run(o: Options) -> Result<String, String> {
    let text = std::fs::read_to_string(&o.bodies).map_err(|e| format!("{}: {e}", o.bodies))?;
    let requests: Vec<Vec<u8>> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|body| {
            format!(
                "POST {} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\r\n{}",
                o.path,
                o.host,
                o.port,
                o.content_type,
                body.len(),
                body
            )
            .into_bytes()
        })
        .collect();
    if requests.is_empty() {
        return Err(format!("{}: no bodies", o.bodies));
    }
    let requests = Arc::new(requests);
    let address = format!("{}:{}", o.host, o.port);
    let schedule = Arc::new(Schedule {
        // Every thread connects first; the schedule starts once all are ready.
        start: Instant::now() + Duration::from_millis(300),
        step: Duration::from_secs_f64(1.0 / o.rate),
        length: Duration::from_secs_f64(o.duration),
        next: AtomicU64::new(0),
    });
    let handles: Vec<_> = (0..o.connections)
        .map(|_| {
            let requests = Arc::clone(&requests);
            let schedule = Arc::clone(&schedule);
            let address = address.clone();
            std::thread::spawn(move || {
                // Sleeps end within microseconds of their deadline.
                unsafe {
                    prctl(PR_SET_TIMERSLACK, 1u64);
                }
                connection(&address, &requests, &schedule)
            })
        })
        .collect();
    let mut total = ThreadResult::default();
    for handle in handles {
        let r = handle
            .join()
            .map_err(|_| "a connection thread panicked".to_string())?;
        total.latency.extend(r.latency);
        total.service.extend(r.service);
        total.lateness.extend(r.lateness);
        total.status_errors += r.status_errors;
        total.io_errors += r.io_errors;
        total.missed += r.missed;
    }
    let elapsed = o.duration;
    let done = total.latency.len();
    Ok(format!(
        "{{\"tool\":\"openloop\",\"target_rate\":{:.1},\"duration_s\":{:.1},\"connections\":{},\"requests\":{},\"achieved_rate\":{:.1},\"status_errors\":{},\"io_errors\":{},\"missed\":{},\"latency_us\":{},\"service_us\":{},\"send_lateness_us\":{}}}",
        o.rate,
        elapsed,
        o.connections,
        done,
        done as f64 / elapsed,
        total.status_errors,
        total.io_errors,
        total.missed,
        percentiles(&mut total.latency),
        percentiles(&mut total.service),
        percentiles(&mut total.lateness),
    ))
}

fn percentiles(values: &mut [u32]) -> String {
    if values.is_empty() {
        return "null".into();
    }
    values.sort_unstable();
    let at =
        |q: f64| values[((values.len() as f64 * q).ceil() as usize).clamp(1, values.len()) - 1];
    let mean = values.iter().map(|&v| v as f64).sum::<f64>() / values.len() as f64;
    format!(
        "{{\"mean\":{mean:.1},\"p50\":{},\"p90\":{},\"p99\":{},\"p999\":{},\"max\":{}}}",
        at(0.50),
        at(0.90),
        at(0.99),
        at(0.999),
        values[values.len() - 1]
    )
}

struct Connection {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

fn connect(address: &str) -> std::io::Result<Connection> {
    let stream = TcpStream::connect(address)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let writer = stream.try_clone()?;
    Ok(Connection {
        reader: BufReader::with_capacity(16 * 1024, stream),
        writer,
    })
}

/// The requests' due times, shared by all connections.
struct Schedule {
    start: Instant,
    step: Duration,
    length: Duration,
    /// The next request to take.
    next: AtomicU64,
}

fn connection(address: &str, requests: &[Vec<u8>], schedule: &Schedule) -> ThreadResult {
    let mut result = ThreadResult::default();
    let mut conn = connect(address).ok();
    // Past this, the target is hopelessly behind: the rest counts as missed.
    let give_up = schedule.start + schedule.length + Duration::from_secs(5);
    loop {
        let k = schedule.next.fetch_add(1, Ordering::Relaxed);
        let offset = schedule.step.as_secs_f64() * k as f64;
        if offset >= schedule.length.as_secs_f64() {
            break;
        }
        let due = schedule.start + Duration::from_secs_f64(offset);
        let now = Instant::now();
        if now > give_up {
            result.missed += 1;
            continue;
        }
        if due > now {
            std::thread::sleep(due - now);
        }
        let request = &requests[(k % requests.len() as u64) as usize];
        if conn.is_none() {
            conn = connect(address).ok();
        }
        let Some(live) = conn.as_mut() else {
            result.io_errors += 1;
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let sent = Instant::now();
        match exchange(live, request) {
            Ok((status, keep_alive)) => {
                let finished = Instant::now();
                if !(200..300).contains(&status) {
                    result.status_errors += 1;
                }
                result.latency.push(micros(finished - due));
                result.service.push(micros(finished - sent));
                result
                    .lateness
                    .push(micros(sent.saturating_duration_since(due)));
                if !keep_alive {
                    conn = None;
                }
            }
            Err(_) => {
                result.io_errors += 1;
                conn = None;
            }
        }
    }
    result
}

fn micros(d: Duration) -> u32 {
    d.as_micros().min(u32::MAX as u128) as u32
}

/// Sends one request and reads its answer; returns the status and whether the
/// connection stays open.
fn exchange(conn: &mut Connection, request: &[u8]) -> std::io::Result<(u16, bool)> {
    conn.writer.write_all(request)?;
    let mut line = String::new();
    if conn.reader.read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let (mut length, mut chunked, mut keep_alive) = (None, false, true);
    loop {
        line.clear();
        if conn.reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse::<u64>().ok();
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.to_ascii_lowercase().contains("chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                keep_alive = !value.eq_ignore_ascii_case("close");
            }
        }
    }
    if status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok((status, keep_alive));
    }
    if chunked {
        loop {
            line.clear();
            conn.reader.read_line(&mut line)?;
            let size = u64::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)
                .map_err(|_| std::io::Error::other("bad chunk size"))?;
            if size == 0 {
                // Trailers, up to the empty line.
                loop {
                    line.clear();
                    if conn.reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            std::io::copy(&mut (&mut conn.reader).take(size), &mut std::io::sink())?;
            line.clear();
            conn.reader.read_line(&mut line)?;
        }
    } else if let Some(n) = length {
        std::io::copy(&mut (&mut conn.reader).take(n), &mut std::io::sink())?;
    } else {
        std::io::copy(&mut conn.reader, &mut std::io::sink())?;
        keep_alive = false;
    }
    Ok((status, keep_alive))
}
