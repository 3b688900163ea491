//! iconik's webhook API, per tenant: who calls, what a request may say, and
//! where the webhooks are kept.

pub mod caller;
pub mod exchange;
pub mod resource;
