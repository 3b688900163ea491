//! When to try a failed delivery again: the retry schedule, its jitter, and
//! the receiver's `Retry-After`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The default `delivery.retry_schedule_s`: delays before the 2nd, 3rd, ... attempt.
pub const DEFAULT_SCHEDULE_S: [u64; 6] = [5, 30, 120, 600, 1800, 3600];

/// Each delay is moved by up to this fraction either way, so that receivers
/// that failed together are not retried together.
pub const JITTER: f64 = 0.2;

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Try again after this many milliseconds.
    RetryIn(u64),
    /// No attempts left.
    Exhausted,
    /// The receiver answered `410 Gone`: it wants no more deliveries.
    Gone,
}

/// How an attempt ended, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome<'a> {
    Success,
    /// An HTTP answer that is not 2xx, with its `Retry-After` header if any.
    Status {
        code: u16,
        retry_after: Option<&'a str>,
    },
    /// No answer: timeout, reset, refused, or the call could not be made.
    NoAnswer,
}

/// Decides the retry after failed attempt number `attempts` (1 = the first).
///
/// `unit_random` is uniform in `[0, 1)`; it picks the jitter. `now` is used to
/// read an HTTP-date `Retry-After`.
pub fn after_failure(
    schedule_s: &[u64],
    attempts: u32,
    outcome: AttemptOutcome<'_>,
    unit_random: f64,
    now: SystemTime,
) -> RetryDecision {
    if let AttemptOutcome::Status { code: 410, .. } = outcome {
        return RetryDecision::Gone;
    }
    let next = usize::try_from(attempts.saturating_sub(1)).ok();
    let Some(&base_s) = next.and_then(|n| schedule_s.get(n)) else {
        return RetryDecision::Exhausted;
    };
    let base_ms = base_s.saturating_mul(1000);
    let jittered = jittered_ms(base_ms, unit_random);
    let delay = match outcome {
        AttemptOutcome::Status {
            retry_after: Some(header),
            ..
        } => match parse_retry_after(header, now) {
            // Honoured, but never sooner than the schedule nor later than twice it.
            Some(wanted) => u64::try_from(wanted.as_millis())
                .unwrap_or(u64::MAX)
                .clamp(base_ms, base_ms.saturating_mul(2)),
            None => jittered,
        },
        _ => jittered,
    };
    RetryDecision::RetryIn(delay)
}

/// `base_ms` moved by up to ±20%, chosen by `unit_random` in `[0, 1)`.
pub fn jittered_ms(base_ms: u64, unit_random: f64) -> u64 {
    let unit = if unit_random.is_finite() {
        unit_random.clamp(0.0, 1.0)
    } else {
        0.5
    };
    let factor = 1.0 - JITTER + 2.0 * JITTER * unit;
    // Exact: delays are at most a week (6.048e8 ms < 2^53), so the u64 → f64
    // conversion loses nothing, and the product (at most 1.2 × that) is finite
    // and non-negative, so f64 → u64 (which saturates) cannot go wrong.
    #[allow(clippy::as_conversions, clippy::cast_possible_truncation)]
    let jittered = (base_ms as f64 * factor).round() as u64;
    jittered
}

/// Reads `Retry-After`: delay-seconds (`120`) or an HTTP-date
/// (`Wed, 21 Oct 2015 07:28:00 GMT`). A date in the past means now.
pub fn parse_retry_after(header: &str, now: SystemTime) -> Option<Duration> {
    let header = header.trim();
    if !header.is_empty() && header.bytes().all(|b| b.is_ascii_digit()) {
        return header.parse::<u64>().ok().map(Duration::from_secs);
    }
    let when = httpdate::parse_http_date(header).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Unix milliseconds as a `SystemTime`.
pub fn system_time(unix_ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(unix_ms)
}
