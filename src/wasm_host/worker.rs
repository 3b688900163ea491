//! What a worker's root context shares with its request contexts: the loaded
//! plugin, the stats defined for it, and the hand-off of matched events.
//!
//! A worker's root and request contexts run in one VM on one thread, so a
//! request hands its matched events to the root's engine through memory
//! they share: no copy, no encoding. The root must make the calls (Envoy
//! cancels a context's calls when it ends, and the SDK gives an answer to the
//! context that made the call), so the request wakes it with an empty
//! message in the worker's shared queue, once until the root takes the events.
//!
//! Stats counted in any of the worker's callbacks reach Envoy with the root's
//! next tick, at most `FLUSH_INTERVAL_MS` later: one host call per stat per
//! interval, not per callback. A root context that is going flushes at once.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use proxy_wasm::hostcalls;

use crate::delivery::message::QueuedEvent;
use crate::intake::NotQueued;

use crate::plugin::Plugin;
use crate::webhook::health::Transition;

use super::metrics::Metrics;

/// Counted stats wait at most this long (plus the host's timer slack) for
/// the root's tick that adds them to Envoy's stats.
pub const FLUSH_INTERVAL_MS: u64 = 100;

pub struct Worker {
    /// Swapped whole when the tenants' webhooks change; a request keeps the
    /// one it started with.
    plugin: RefCell<Rc<Plugin>>,
    /// etcd's token for the API's calls (the root's tenant reads keep it).
    pub etcd_token: RefCell<Option<String>>,
    /// An API call found the token expired: the root authenticates again.
    pub etcd_auth_expired: Cell<bool>,
    pub metrics: Metrics,
    /// This worker's shared queue: it carries only wake-ups of the root.
    pub queue_id: u32,
    /// Matched events handed over by requests, for the root to take.
    pub handed_over: RefCell<Vec<QueuedEvent>>,
    /// A wake-up is in the queue that the root has not taken yet.
    pub wake_queued: Cell<bool>,
    /// Admin and API requests waiting for their body: (context id, Unix ms
    /// by which a body callback must have come, whether it is the API's).
    /// Envoy hands a paused request's body to the filter only with
    /// `allow_on_headers_stop_iteration`; without it the root context answers
    /// them, so that none hangs.
    pub admin_waiting: RefCell<crate::body_wait::Waiting>,
    /// A request context set the root's tick period (for `admin_waiting`):
    /// the engine's idea of it is to be set again.
    pub tick_overridden: Cell<bool>,
    /// An admin request on this worker changed a webhook's record: the
    /// engine is to read it again, not trust what it read last.
    pub health_changed: Cell<bool>,
    /// The root's tick period as last set on the host (0: no tick).
    tick_ms: Cell<u64>,
    /// Counted stats wait for a tick that comes within `FLUSH_INTERVAL_MS`.
    flush_armed: Cell<bool>,
    /// The root context is going (stopping, or its configuration replaced):
    /// nothing waits for its ticks any more.
    retired: Cell<bool>,
}

/// What the root context's wake-up carries: nothing, only that there is
/// something to take. Empty, so that its dequeue costs no call back into the
/// VM: the host asks the module to allocate only for a non-empty value
/// (proxy-wasm-cpp-host's `copyToPointerSize`), some 10,000 instructions.
pub const WAKE_UP: &[u8] = b"";

impl Worker {
    pub fn new(plugin: Rc<Plugin>, metrics: Metrics, queue_id: u32) -> Worker {
        Worker {
            plugin: RefCell::new(plugin),
            etcd_token: RefCell::new(None),
            etcd_auth_expired: Cell::new(false),
            metrics,
            queue_id,
            handed_over: RefCell::new(Vec::new()),
            wake_queued: Cell::new(false),
            admin_waiting: RefCell::default(),
            tick_overridden: Cell::new(false),
            health_changed: Cell::new(false),
            tick_ms: Cell::new(0),
            flush_armed: Cell::new(false),
            retired: Cell::new(false),
        }
    }

    /// The plugin now (requests keep the one they started with). `None`
    /// only while `set_plugin` runs, which calls nothing back.
    pub fn plugin(&self) -> Option<Rc<Plugin>> {
        self.plugin.try_borrow().ok().map(|plugin| plugin.clone())
    }

    /// The tenants' webhooks changed: requests from now on use `plugin`.
    pub fn set_plugin(&self, plugin: Rc<Plugin>) {
        if let Ok(mut current) = self.plugin.try_borrow_mut() {
            *current = plugin;
        }
    }

    /// Sets the root's tick period (0: none) unless it is set already;
    /// `false` if the host refused.
    pub fn set_tick_ms(&self, period_ms: u64) -> bool {
        if self.tick_ms.get() == period_ms {
            // Setting it again would only restart the host's timer.
            return true;
        }
        let set = hostcalls::set_tick_period(std::time::Duration::from_millis(period_ms)).is_ok();
        if set {
            self.tick_ms.set(period_ms);
        }
        set
    }

    /// Makes the root's next tick come within `period_ms`, keeping a shorter period.
    pub fn tick_within(&self, period_ms: u64) -> bool {
        match self.tick_ms.get() {
            0 => self.set_tick_ms(period_ms),
            current if current > period_ms => self.set_tick_ms(period_ms),
            _ => true,
        }
    }

    /// The shortest tick period the root needs for the stats waiting to be
    /// flushed (0: none needed).
    pub fn flush_floor_ms(&self) -> u64 {
        if self.flush_armed.get() {
            FLUSH_INTERVAL_MS
        } else {
            0
        }
    }

    /// At the end of each callback: the stats it counted wait for the root's
    /// tick (set to come within `FLUSH_INTERVAL_MS` if it would not), or reach
    /// Envoy now when no tick will come.
    pub fn end_callback(&self) {
        if self.retired.get() {
            self.metrics.flush();
            return;
        }
        if self.flush_armed.get() || !self.metrics.has_pending() {
            return;
        }
        if self.tick_within(FLUSH_INTERVAL_MS) {
            self.flush_armed.set(true);
        } else {
            self.metrics.flush();
        }
    }

    /// The root's tick: adds the waiting stats to Envoy's. `true` when the
    /// tick period is to be set again (nothing waited: the traffic stopped,
    /// and the root needs no tick for the stats until it starts again).
    pub fn flush_on_tick(&self) -> bool {
        let flushed = self.metrics.flush();
        !flushed && self.flush_armed.replace(false)
    }

    /// A new configuration's worker on the same root context: the host's tick
    /// period is what the replaced one set.
    pub fn take_tick_from(&self, replaced: &Worker) {
        self.tick_ms.set(replaced.tick_ms.get());
    }

    /// The root context is going: what is counted from now on reaches Envoy
    /// at the end of its callback.
    pub fn retire(&self) {
        self.retired.set(true);
        self.flush_armed.set(false);
        self.metrics.flush();
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

    /// The root took the wake-up from the queue: the next hand-off wakes it again.
    pub fn woken(&self) {
        self.wake_queued.set(false);
    }

    /// The events handed over since the last time.
    pub fn take_handed_over(&self) -> Vec<QueuedEvent> {
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
        let Some(plugin) = self.plugin() else {
            return;
        };
        if let Some(definition) = plugin.definitions().get(index) {
            transition.log(&definition.id);
        }
        self.metrics.webhook(index).set_status(transition.to);
    }
}
