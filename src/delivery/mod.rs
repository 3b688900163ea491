//! From a matched event to a delivered, dead-lettered or lost delivery.
//!
//! - `message`: the event and its matches, handed from a request to the root.
//! - `engine`: every decision after that, over a small `crate::host::Host`.
//! - `call`: what a delivery call sends, and how its outcome is judged.
//! - `retry`: the retry schedule, jitter and `Retry-After`.
//! - `queue`: the one `Delivery` type and the bounded retry queue.
//! - `budget`: the per-worker budget for held bytes.
//! - `signature`: Standard Webhooks signing.
//! - `dead_letter`: the record sent for a delivery that could not be made.
//! - `rate_limit`: a webhook's token bucket (`rate_limit_per_s`), shared by the workers.
//! - `attempts`: the attempt log the admin API shows.

pub mod attempts;
pub mod budget;
pub mod call;
pub mod dead_letter;
pub mod engine;
pub mod message;
pub mod queue;
pub mod rate_limit;
pub mod retry;
pub mod signature;
