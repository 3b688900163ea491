//! Webhook status shared by every Envoy of a deployment, through etcd:
//! `etcd` speaks its v3 JSON gateway, `sync` keeps the local records and the
//! cluster's in step.

mod clock;
pub mod etcd;
mod handoff;
mod journal;
mod members;
mod sweep;
mod sync;

pub use sync::{ClusterSync, EtcdAnswer};
// The root context's timer; natively nothing drives it.
#[cfg(target_arch = "wasm32")]
pub use sync::CHECK_INTERVAL_MS;
