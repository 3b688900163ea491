//! One per-worker budget for the bytes of event bodies the filter holds:
//! deliveries waiting in a request for its end (or for the upstream's 2xx),
//! in flight, waiting for a retry, and dead letters.
//!
//! Envoy's Wasm heap is about 1 GB and a trap fails every later request of
//! the worker, so what we hold is bounded as a whole: a delivery that does
//! not fit is not made (counted, dead-lettered when the record fits, else
//! counted as lost), never an out-of-memory trap.

use std::cell::Cell;

/// Bytes a held delivery costs beyond its body: its bookkeeping, and what
/// Envoy keeps for the call (headers, buffers).
pub const OVERHEAD_BYTES: usize = 512;

/// The worker's budget, shared by its root context and its requests (one
/// thread: plain cells).
#[derive(Debug)]
pub struct HeldBytes {
    limit: usize,
    /// Reserved by requests for the deliveries they hold.
    in_requests: Cell<usize>,
    /// In flight, waiting for a retry, and dead letters: the root's own count.
    in_root: Cell<usize>,
}

impl HeldBytes {
    pub fn new(limit: usize) -> HeldBytes {
        HeldBytes {
            limit,
            in_requests: Cell::new(0),
            in_root: Cell::new(0),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn total(&self) -> usize {
        self.in_requests.get().saturating_add(self.in_root.get())
    }

    /// Whether `bytes` more would still be within the budget.
    pub fn fits(&self, bytes: usize) -> bool {
        self.total().saturating_add(bytes) <= self.limit
    }

    /// Reserves `bytes` for a request; `false` (and nothing reserved) when they do not fit.
    pub fn reserve_in_request(&self, bytes: usize) -> bool {
        if !self.fits(bytes) {
            return false;
        }
        self.in_requests
            .set(self.in_requests.get().saturating_add(bytes));
        true
    }

    /// How many deliveries costing `each` still fit.
    pub fn room_for(&self, each: usize) -> usize {
        self.limit
            .saturating_sub(self.total())
            .checked_div(each)
            .unwrap_or(usize::MAX)
    }

    /// Gives back what a request reserved.
    pub fn release_in_request(&self, bytes: usize) {
        self.in_requests
            .set(self.in_requests.get().saturating_sub(bytes));
    }

    /// The root's current count.
    pub fn set_in_root(&self, bytes: usize) {
        self.in_root.set(bytes);
    }
}

/// What one delivery of a body of `body_len` bytes costs.
pub fn delivery_cost(body_len: usize) -> usize {
    body_len.saturating_add(OVERHEAD_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_root_share_one_limit() {
        let held = HeldBytes::new(1_000);
        assert!(held.reserve_in_request(600));
        assert!(
            !held.reserve_in_request(500),
            "over the limit: nothing reserved"
        );
        assert_eq!(held.total(), 600);
        held.set_in_root(400);
        assert!(held.fits(0));
        assert!(!held.fits(1));
        held.release_in_request(600);
        assert!(held.reserve_in_request(600));
        held.release_in_request(10_000);
        assert_eq!(held.total(), 400, "releasing too much never underflows");
        assert_eq!(delivery_cost(100), 100 + OVERHEAD_BYTES);
        assert_eq!(held.room_for(100), 6);
        assert_eq!(held.room_for(0), usize::MAX);
        assert_eq!(delivery_cost(usize::MAX), usize::MAX);
    }
}
