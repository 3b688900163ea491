//! Retry schedule, jitter bounds, `Retry-After` and `410 Gone`.

use std::time::{Duration, UNIX_EPOCH};

use envoy_webhooks::testing::retry::{
    after_failure, jittered_ms, parse_retry_after, AttemptOutcome, RetryDecision,
    DEFAULT_SCHEDULE_S,
};

const NOW_MS: u64 = 1_700_000_000_000;

fn now() -> std::time::SystemTime {
    UNIX_EPOCH + Duration::from_millis(NOW_MS)
}

fn http(code: u16) -> AttemptOutcome<'static> {
    AttemptOutcome::Status {
        code,
        retry_after: None,
    }
}

#[test]
fn each_failed_attempt_waits_its_scheduled_delay_within_twenty_percent() {
    for (attempt, base_s) in DEFAULT_SCHEDULE_S.iter().enumerate() {
        let base_ms = base_s * 1000;
        for unit in [0.0, 0.25, 0.5, 0.75, 0.999_999] {
            let RetryDecision::RetryIn(delay) = after_failure(
                &DEFAULT_SCHEDULE_S,
                attempt as u32 + 1,
                AttemptOutcome::NoAnswer,
                unit,
                now(),
            ) else {
                panic!("attempt {} should be retried", attempt + 1);
            };
            assert!(
                delay as f64 >= base_ms as f64 * 0.8 && delay as f64 <= base_ms as f64 * 1.2,
                "attempt {}: {delay} ms is outside {base_ms} ms ± 20%",
                attempt + 1
            );
        }
    }
}

#[test]
fn jitter_spans_the_whole_band_and_centres_on_the_schedule() {
    assert_eq!(jittered_ms(10_000, 0.0), 8_000);
    assert_eq!(jittered_ms(10_000, 0.5), 10_000);
    assert_eq!(jittered_ms(10_000, 1.0), 12_000);
    // Out-of-range randomness cannot push a delay outside the band.
    assert_eq!(jittered_ms(10_000, -3.0), 8_000);
    assert_eq!(jittered_ms(10_000, 7.0), 12_000);
    assert_eq!(jittered_ms(10_000, f64::NAN), 10_000);
}

#[test]
fn random_jitter_stays_in_bounds_and_varies() {
    let delays: Vec<u64> = (0..1000)
        .map(|_| jittered_ms(30_000, fastrand::f64()))
        .collect();
    assert!(delays.iter().all(|d| (24_000..=36_000).contains(d)));
    let distinct: std::collections::HashSet<_> = delays.iter().collect();
    assert!(distinct.len() > 100, "jitter should spread retries out");
}

#[test]
fn retries_end_when_the_schedule_does() {
    let schedule = [1, 2];
    assert!(matches!(
        after_failure(&schedule, 1, http(500), 0.5, now()),
        RetryDecision::RetryIn(1000)
    ));
    assert!(matches!(
        after_failure(&schedule, 2, http(500), 0.5, now()),
        RetryDecision::RetryIn(2000)
    ));
    assert_eq!(
        after_failure(&schedule, 3, http(500), 0.5, now()),
        RetryDecision::Exhausted
    );
    assert_eq!(
        after_failure(&[], 1, AttemptOutcome::NoAnswer, 0.5, now()),
        RetryDecision::Exhausted
    );
}

#[test]
fn every_failure_kind_is_retried_except_gone() {
    for code in [400, 401, 404, 408, 429, 500, 502, 503, 504, 302] {
        assert!(
            matches!(
                after_failure(&[5], 1, http(code), 0.5, now()),
                RetryDecision::RetryIn(_)
            ),
            "HTTP {code} should be retried"
        );
    }
    assert_eq!(
        after_failure(&[5], 1, http(410), 0.5, now()),
        RetryDecision::Gone
    );
    // 410 ends retries even when the schedule has more to give.
    assert_eq!(
        after_failure(&DEFAULT_SCHEDULE_S, 1, http(410), 0.5, now()),
        RetryDecision::Gone
    );
}

#[test]
fn retry_after_is_honoured_between_the_schedule_and_twice_it() {
    let with = |header: &'static str| AttemptOutcome::Status {
        code: 503,
        retry_after: Some(header),
    };
    // Within the band: exactly as asked, no jitter.
    assert_eq!(
        after_failure(&[5], 1, with("7"), 0.0, now()),
        RetryDecision::RetryIn(7_000)
    );
    // Sooner than the schedule: the schedule.
    assert_eq!(
        after_failure(&[5], 1, with("1"), 0.0, now()),
        RetryDecision::RetryIn(5_000)
    );
    // Later than twice the schedule: twice the schedule.
    assert_eq!(
        after_failure(&[5], 1, with("3600"), 0.0, now()),
        RetryDecision::RetryIn(10_000)
    );
    // An unreadable header falls back to the jittered schedule.
    assert_eq!(
        after_failure(&[5], 1, with("soon"), 0.5, now()),
        RetryDecision::RetryIn(5_000)
    );
}

#[test]
fn retry_after_reads_seconds_and_http_dates() {
    assert_eq!(
        parse_retry_after("120", now()),
        Some(Duration::from_secs(120))
    );
    assert_eq!(parse_retry_after(" 0 ", now()), Some(Duration::ZERO));
    let in_90_s = httpdate::fmt_http_date(now() + Duration::from_secs(90));
    assert_eq!(
        parse_retry_after(&in_90_s, now()),
        Some(Duration::from_secs(90))
    );
    let past = httpdate::fmt_http_date(now() - Duration::from_secs(90));
    assert_eq!(parse_retry_after(&past, now()), Some(Duration::ZERO));
    assert_eq!(
        parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now()),
        Some(Duration::ZERO)
    );
    for bad in [
        "",
        "-5",
        "1.5",
        "soon",
        "Wed, 99 Oct 2015 07:28:00 GMT",
        "99999999999999999999999",
    ] {
        assert_eq!(parse_retry_after(bad, now()), None, "{bad:?}");
    }
}
