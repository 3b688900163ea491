//! A webhook's `rate_limit_per_s`: one token bucket per webhook for the whole
//! Envoy, kept in shared data so that every worker draws from it.
//!
//! The bucket is counted in thousandths of a call, so that a rate of `r` a
//! second refills exactly `r` thousandths a millisecond: no fractions.

use crate::config::RateLimit;
use crate::host::{SharedData, StoreError};
use crate::webhook::store;

/// Thousandths of a call in one call.
const ONE_CALL: u64 = 1000;

/// Compare-and-swap rounds before a worker gives up for now (then it waits
/// as if the bucket were empty: a lost race means others are calling).
const MAX_CAS_ATTEMPTS: usize = 16;

/// A bucket as stored: `tokens` (thousandths of a call, little-endian u64)
/// and `updated_ms` (little-endian u64).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bucket {
    tokens: u64,
    updated_ms: u64,
}

impl Bucket {
    fn full(limit: RateLimit, now_ms: u64) -> Bucket {
        Bucket {
            tokens: limit.burst.saturating_mul(ONE_CALL),
            updated_ms: now_ms,
        }
    }

    fn decode(bytes: &[u8]) -> Option<Bucket> {
        let tokens = u64::from_le_bytes(bytes.get(0..8)?.try_into().ok()?);
        let updated_ms = u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?);
        Some(Bucket { tokens, updated_ms })
    }

    fn encode(self) -> [u8; 16] {
        let mut bytes = [0; 16];
        let (tokens, updated) = bytes.split_at_mut(8);
        tokens.copy_from_slice(&self.tokens.to_le_bytes());
        updated.copy_from_slice(&self.updated_ms.to_le_bytes());
        bytes
    }

    /// Refilled up to `now_ms`, never past the burst (a lowered burst applies at once).
    fn refilled(self, limit: RateLimit, now_ms: u64) -> Bucket {
        let elapsed = now_ms.saturating_sub(self.updated_ms);
        let capacity = limit.burst.saturating_mul(ONE_CALL);
        Bucket {
            tokens: self
                .tokens
                .saturating_add(elapsed.saturating_mul(limit.per_s))
                .min(capacity),
            updated_ms: now_ms.max(self.updated_ms),
        }
    }
}

/// Takes one call from webhook `id`'s bucket: `Ok` to call now, or
/// `Err(ms)`: how long until the bucket holds a call again.
pub fn take<S: SharedData + ?Sized>(
    store: &mut S,
    id: &str,
    limit: RateLimit,
    now_ms: u64,
) -> Result<(), u64> {
    let key = store::rate_limit_key(id);
    for _ in 0..MAX_CAS_ATTEMPTS {
        let (bytes, cas) = store.get(&key);
        let bucket = bytes.as_deref().and_then(Bucket::decode).map_or_else(
            || Bucket::full(limit, now_ms),
            |b| b.refilled(limit, now_ms),
        );
        if bucket.tokens < ONE_CALL {
            return Err(wait_ms(bucket.tokens, limit));
        }
        let taken = Bucket {
            tokens: bucket.tokens.saturating_sub(ONE_CALL),
            ..bucket
        };
        match store.set(&key, &taken.encode(), Some(cas.unwrap_or(u32::MAX))) {
            Ok(()) => return Ok(()),
            Err(StoreError::CasMismatch) => continue,
            Err(StoreError::Other(problem)) => {
                // Never seen in practice; failing open keeps deliveries going.
                log::warn!(
                    "envoy-webhooks: webhook {id}: cannot keep its rate limit in shared data ({problem}); calling without it"
                );
                return Ok(());
            }
        }
    }
    Err(interval_ms(limit))
}

/// Milliseconds until a bucket holding `tokens` holds one call, at least 1.
fn wait_ms(tokens: u64, limit: RateLimit) -> u64 {
    let missing = ONE_CALL.saturating_sub(tokens);
    missing.div_ceil(limit.per_s.max(1)).max(1)
}

/// Milliseconds between two calls at the limit's rate, at least 1.
pub fn interval_ms(limit: RateLimit) -> u64 {
    (ONE_CALL / limit.per_s.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[derive(Default)]
    struct Store(HashMap<String, (Vec<u8>, u32)>);

    impl SharedData for Store {
        fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
            match self.0.get(key) {
                Some((value, cas)) => (Some(value.clone()), Some(*cas)),
                None => (None, None),
            }
        }
        fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
            let current = self.0.get(key).map(|(_, c)| *c);
            if let (Some(current), Some(cas)) = (current, cas) {
                if current != cas {
                    return Err(StoreError::CasMismatch);
                }
            }
            let next = current.unwrap_or(0) + 1;
            self.0.insert(key.to_string(), (value.to_vec(), next));
            Ok(())
        }
    }

    const LIMIT: RateLimit = RateLimit {
        per_s: 20,
        burst: 5,
    };

    #[test]
    fn a_full_bucket_lets_the_burst_go_then_the_rate() {
        let mut store = Store::default();
        for _ in 0..5 {
            assert_eq!(take(&mut store, "a", LIMIT, 1_000), Ok(()));
        }
        assert_eq!(take(&mut store, "a", LIMIT, 1_000), Err(50));
        assert_eq!(take(&mut store, "a", LIMIT, 1_030), Err(20));
        assert_eq!(take(&mut store, "a", LIMIT, 1_050), Ok(()));
        assert_eq!(take(&mut store, "a", LIMIT, 1_050), Err(50));
        // Over ten seconds at most the rate goes, whatever the callers try.
        let mut calls = 0;
        for ms in (1_051..11_051).step_by(7) {
            if take(&mut store, "a", LIMIT, ms).is_ok() {
                calls += 1;
            }
        }
        assert!(
            (199..=201).contains(&calls),
            "{calls} calls in 10 s at 20/s"
        );
    }

    #[test]
    fn an_idle_bucket_refills_only_to_the_burst_and_webhooks_do_not_share() {
        let mut store = Store::default();
        for _ in 0..5 {
            assert_eq!(take(&mut store, "a", LIMIT, 0), Ok(()));
        }
        assert_eq!(take(&mut store, "b", LIMIT, 0), Ok(()), "another bucket");
        let later = 3_600_000;
        for _ in 0..5 {
            assert_eq!(take(&mut store, "a", LIMIT, later), Ok(()));
        }
        assert!(take(&mut store, "a", LIMIT, later).is_err());
    }

    #[test]
    fn a_clock_going_back_refills_nothing() {
        let mut store = Store::default();
        let limit = RateLimit { per_s: 1, burst: 1 };
        assert_eq!(take(&mut store, "a", limit, 10_000), Ok(()));
        assert_eq!(take(&mut store, "a", limit, 5_000), Err(1_000));
        assert_eq!(take(&mut store, "a", limit, 10_999), Err(1));
        assert_eq!(take(&mut store, "a", limit, 11_000), Ok(()));
    }

    #[test]
    fn intervals() {
        assert_eq!(interval_ms(LIMIT), 50);
        assert_eq!(
            interval_ms(RateLimit {
                per_s: 100_000,
                burst: 1
            }),
            1
        );
    }
}
