//! Requests of ours (the admin API's `deliver`, the API's creates and
//! changes) that wait for their body: Envoy hands a paused request's body
//! to the filter only with `allow_on_headers_stop_iteration`, so one that
//! has not come by its deadline is answered 501, saying why, and none hangs.

use serde_json::json;

/// How long a request may wait for the first piece of its body.
pub const STALLED_MS: u64 = 3_000;
/// How often the root context looks at waiting requests meanwhile.
pub const CHECK_MS: u64 = 500;

/// The answer to a request whose body Envoy does not hand over.
pub const STALLED_ANSWER: &str = "this Envoy does not hand the filter a request body before the request goes on: set allow_on_headers_stop_iteration: true in the Wasm filter's config (Envoy 1.35 or later; see docs/operations.md)";

/// Which API a waiting request is for: it decides the error's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Admin,
    /// iconik's webhook API: `{"errors": {...}}`.
    Webhooks,
}

/// One worker's waiting requests, by context id.
#[derive(Debug, Default)]
pub struct Waiting {
    requests: Vec<(u32, u64, Api)>,
}

impl Waiting {
    /// Request `context_id` waits for its body from `now_ms`.
    pub fn add(&mut self, context_id: u32, api: Api, now_ms: u64) {
        self.requests
            .push((context_id, now_ms.saturating_add(STALLED_MS), api));
    }

    /// Its body came, or it ended.
    pub fn remove(&mut self, context_id: u32) {
        self.requests.retain(|(id, _, _)| *id != context_id);
    }

    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }

    /// The requests whose deadline passed, each with its answer (status
    /// and JSON body); they wait no more.
    pub fn stalled(&mut self, now_ms: u64) -> Vec<(u32, u16, String)> {
        let (stalled, waiting): (Vec<_>, Vec<_>) = self
            .requests
            .drain(..)
            .partition(|(_, deadline, _)| *deadline <= now_ms);
        self.requests = waiting;
        stalled
            .into_iter()
            .map(|(id, _, api)| {
                let body = match api {
                    Api::Admin => json!({ "error": STALLED_ANSWER }),
                    Api::Webhooks => json!({"errors": {"body": STALLED_ANSWER}}),
                };
                (id, 501, body.to_string())
            })
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_request_whose_body_never_comes_is_answered_once_in_its_apis_shape() {
        let mut waiting = Waiting::default();
        waiting.add(7, Api::Admin, 1_000);
        waiting.add(8, Api::Webhooks, 2_000);
        waiting.add(9, Api::Admin, 2_000);
        waiting.remove(9);
        assert!(waiting.stalled(3_999).is_empty());
        let first = waiting.stalled(4_000);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].0, 7);
        assert_eq!(first[0].1, 501);
        assert!(first[0].2.starts_with("{\"error\":"));
        let second = waiting.stalled(10_000);
        assert_eq!(second.iter().map(|s| s.0).collect::<Vec<_>>(), vec![8]);
        assert!(second[0].2.contains("\"errors\":{\"body\""));
        assert!(waiting.stalled(20_000).is_empty() && waiting.is_empty());
    }
}
