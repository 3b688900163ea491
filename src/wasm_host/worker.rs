//! What a worker's root context shares with its request contexts: the loaded
//! plugin, the stats defined for it, and the worker's delivery queue.

use std::rc::Rc;

use crate::plugin::Plugin;
use crate::webhook::health::Transition;

use super::metrics::Metrics;

pub struct Worker {
    pub plugin: Rc<Plugin>,
    pub metrics: Metrics,
    /// This worker's delivery queue.
    pub queue_id: u32,
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
