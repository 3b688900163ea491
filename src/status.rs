//! A webhook's status, as iconik names it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The status of a webhook. Only `Enabled` and `Failing` webhooks are called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Enabled,
    /// Deliveries have been failing; still called, and one success recovers it.
    Failing,
    /// Failed for too long or too often; no longer called until enabled again.
    Failed,
    /// Switched off in the configuration.
    Disabled,
}

impl Status {
    pub const ALL: [Status; 4] = [
        Status::Enabled,
        Status::Failing,
        Status::Failed,
        Status::Disabled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Enabled => "ENABLED",
            Status::Failing => "FAILING",
            Status::Failed => "FAILED",
            Status::Disabled => "DISABLED",
        }
    }

    /// Case-insensitive, as users write `enabled` as often as `ENABLED`.
    pub fn parse(text: &str) -> Option<Status> {
        Status::ALL
            .into_iter()
            .find(|status| status.as_str().eq_ignore_ascii_case(text))
    }

    pub fn delivers(self) -> bool {
        matches!(self, Status::Enabled | Status::Failing)
    }

    /// The value of the per-webhook status gauge.
    pub fn gauge_value(self) -> u64 {
        match self {
            Status::Enabled => 0,
            Status::Failing => 1,
            Status::Failed => 2,
            Status::Disabled => 3,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
