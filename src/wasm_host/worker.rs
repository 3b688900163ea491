//! What a worker's root context shares with its request contexts: the loaded
//! plugin, the stats defined for it, and the worker's delivery queue.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use crate::plugin::Plugin;
use crate::webhook::health::Transition;

use super::metrics::Metrics;

pub struct Worker {
    pub plugin: Rc<Plugin>,
    pub metrics: Metrics,
    /// This worker's delivery queue.
    pub queue_id: u32,
    /// Admin requests waiting for their body (`deliver`): (context id, Unix ms
    /// by which a body callback must have come). Envoy hands a paused
    /// request's body to the filter only with `allow_on_headers_stop_iteration`;
    /// without it the root context answers them, so that none hangs.
    pub admin_waiting: RefCell<Vec<(u32, u64)>>,
    /// A request context set the root's tick period (for `admin_waiting`):
    /// the engine's idea of it is to be set again.
    pub tick_overridden: Cell<bool>,
}

impl Worker {
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
