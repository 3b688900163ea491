//! The message that carries a matched event from a request's context to its
//! worker's root context (in the VM's memory: they share one VM).

use std::rc::Rc;

/// One webhook an event is to be delivered to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueuedTarget {
    /// Index of the webhook in the configuration.
    pub webhook: u32,
    /// The definition's fingerprint, so that a delivery queued under an older
    /// configuration is never sent with a newer definition.
    pub fingerprint: u64,
}

/// An event and the webhooks it matched, handed to the worker's root
/// context: one message (one copy of the body) per event, however many
/// webhooks it matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedEvent {
    pub targets: Vec<QueuedTarget>,
    /// The event's `request_id`, for `webhook-id` and logs.
    pub request_id: Option<String>,
    /// Headers of the platform's request to copy into the calls
    /// (`delivery.propagate_headers`): (lower-case name, value), shared by
    /// the request's events and their deliveries.
    pub headers: Rc<[(String, String)]>,
    /// Set for an event an operator handed in (`POST .../deliver`): the
    /// `webhook-id` its deliveries carry (a redriven dead letter keeps its
    /// own). `None` for a matched event (computed when needed).
    pub message_id: Option<String>,
    /// The event's exact text, copied once from the request's body and shared
    /// by its deliveries.
    pub body: Rc<[u8]>,
}

/// Bytes of propagated header values carried per request, at most: a value
/// that would go past it is left out (W3C trace context is well under 1 KiB).
pub const MAX_PROPAGATED_BYTES: usize = 8 * 1024;
