//! What a worker's root context shares with its request contexts: the loaded
//! plugin, the stats defined for it, and the hand-off of matched events.
//!
//! A worker's root and request contexts run in one VM on one thread, so a
//! request hands its matched events to the root's engine through memory
//! they share: no copy, no encoding. The root must make the calls (Envoy
//! cancels a context's calls when it ends, and the SDK gives an answer to the
//! context that made the call), so the request wakes it with a one-byte
//! message in the worker's shared queue, once until the root takes the events.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use proxy_wasm::hostcalls;

use crate::delivery::message::QueuedEvent;
use crate::intake::NotQueued;

use crate::plugin::Plugin;
use crate::webhook::health::Transition;

use super::metrics::Metrics;

pub struct Worker {
    pub plugin: Rc<Plugin>,
    pub metrics: Metrics,
    /// This worker's shared queue: it carries only wake-ups of the root.
    pub queue_id: u32,
    /// Matched events handed over by requests, for the root to take.
    pub handed_over: RefCell<Vec<QueuedEvent>>,
    /// A wake-up is in the queue that the root has not taken yet.
    pub wake_queued: Cell<bool>,
    /// Admin requests waiting for their body (`deliver`): (context id, Unix ms
    /// by which a body callback must have come). Envoy hands a paused
    /// request's body to the filter only with `allow_on_headers_stop_iteration`;
    /// without it the root context answers them, so that none hangs.
    pub admin_waiting: RefCell<Vec<(u32, u64)>>,
    /// A request context set the root's tick period (for `admin_waiting`):
    /// the engine's idea of it is to be set again.
    pub tick_overridden: Cell<bool>,
}

/// What the root context's wake-up carries: only that there is something to take.
pub const WAKE_UP: &[u8] = b"w";

impl Worker {
    pub fn new(plugin: Rc<Plugin>, metrics: Metrics, queue_id: u32) -> Worker {
        Worker {
            plugin,
            metrics,
            queue_id,
            handed_over: RefCell::new(Vec::new()),
            wake_queued: Cell::new(false),
            admin_waiting: RefCell::new(Vec::new()),
            tick_overridden: Cell::new(false),
        }
    }

    /// Hands a matched event to the root's engine; gives it back, with why,
    /// if the root cannot be woken to take it.
    pub fn hand_over(&self, event: QueuedEvent) -> Result<(), Box<NotQueued>> {
        if !self.wake_queued.get() {
            if let Err(status) = hostcalls::enqueue_shared_queue(self.queue_id, Some(WAKE_UP)) {
                let why = format!("cannot wake the worker's root context ({status:?})");
                return Err(Box::new(NotQueued { event, why }));
            }
            self.wake_queued.set(true);
        }
        let Ok(mut handed_over) = self.handed_over.try_borrow_mut() else {
            // Never re-entered (one thread, no callback runs inside another).
            let why = "the hand-off is in use".to_string();
            return Err(Box::new(NotQueued { event, why }));
        };
        handed_over.push(event);
        Ok(())
    }

    /// The events handed over since the last time; the next hand-off wakes the root again.
    pub fn take_handed_over(&self) -> Vec<QueuedEvent> {
        self.wake_queued.set(false);
        self.handed_over
            .try_borrow_mut()
            .map(|mut events| std::mem::take(&mut *events))
            .unwrap_or_default()
    }

    /// Logs a status change made here (an admin `enable`) and updates the gauge.
    pub fn report(&self, index: usize, transition: Option<&Transition>) {
        let Some(transition) = transition else {
            return;
        };
        if let Some(definition) = self.plugin.definitions().get(index) {
            transition.log(&definition.id);
        }
        self.metrics.webhook(index).set_status(transition.to);
    }
}
