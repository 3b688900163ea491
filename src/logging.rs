//! What the filter writes to Envoy's log: values from outside made safe to
//! print, and repeated warnings limited to one line per interval with a count.

use std::fmt;

use hashbrown::HashMap;

/// A value from outside (a `request_id`, an error text, a header) as it is
/// printed in a log line: control characters, quotes and backslashes escaped,
/// so that no value can end a line and forge the next one. At most `MAX_CHARS`
/// characters are printed.
pub struct Printable<'a>(pub &'a str);

/// Enough of a value to recognise it in a log line.
const MAX_CHARS: usize = 256;

impl fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (count, c) in self.0.chars().enumerate() {
            if count == MAX_CHARS {
                return f.write_str("...");
            }
            if c.is_control() || c == '\\' || c == '\u{2028}' || c == '\u{2029}' {
                write!(f, "{}", c.escape_default())?;
            } else {
                fmt::Write::write_char(f, c)?;
            }
        }
        Ok(())
    }
}

/// Lets one warning of each kind through per interval; the next one that gets
/// through says how many were held back meanwhile.
#[derive(Debug, Default)]
pub struct WarningLimiter {
    kinds: HashMap<&'static str, Window>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Window {
    last_ms: Option<u64>,
    suppressed: u64,
}

/// One line per kind at most this often.
pub const WARNING_INTERVAL_MS: u64 = 5_000;

impl WarningLimiter {
    /// `Some(suppressed)` when a warning of `kind` may be logged now, with the
    /// number held back since the last one; `None` when it is to be held back.
    pub fn admit(&mut self, kind: &'static str, now_ms: u64) -> Option<u64> {
        let window = self.kinds.entry(kind).or_default();
        match window.last_ms {
            Some(last) if now_ms.saturating_sub(last) < WARNING_INTERVAL_MS => {
                window.suppressed = window.suppressed.saturating_add(1);
                None
            }
            _ => {
                window.last_ms = Some(now_ms);
                Some(std::mem::take(&mut window.suppressed))
            }
        }
    }
}

impl WarningLimiter {
    /// Kinds whose held-back warnings are due to be summed up in a line (their
    /// interval has passed), with the count; each starts a new interval.
    pub fn due(&mut self, now_ms: u64) -> Vec<(&'static str, u64)> {
        let mut due = Vec::new();
        for (kind, window) in self.kinds.iter_mut() {
            let elapsed = window
                .last_ms
                .is_none_or(|last| now_ms.saturating_sub(last) >= WARNING_INTERVAL_MS);
            if window.suppressed > 0 && elapsed {
                due.push((*kind, std::mem::take(&mut window.suppressed)));
                window.last_ms = Some(now_ms);
            }
        }
        due
    }

    /// Whether some warnings are held back, to be summed up later.
    pub fn holds_back(&self) -> bool {
        self.kinds.values().any(|w| w.suppressed > 0)
    }
}

/// ` (and N more like it in the last T s)`, or nothing.
pub fn suppressed_note(suppressed: u64) -> String {
    if suppressed == 0 {
        String::new()
    } else {
        format!(
            " (and {suppressed} more like it since the last such line; at most one every {} s)",
            WARNING_INTERVAL_MS / 1000
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_cannot_forge_a_line() {
        let printed = Printable("r-1\n[critical] forged\r\u{1b}[31m\\").to_string();
        assert_eq!(printed, "r-1\\n[critical] forged\\r\\u{1b}[31m\\\\");
        assert!(!printed.contains('\n'));
        assert_eq!(Printable("plain-id_42").to_string(), "plain-id_42");
        let long = "x".repeat(1_000);
        assert_eq!(Printable(&long).to_string().len(), MAX_CHARS + 3);
    }

    #[test]
    fn one_line_per_interval_then_the_count() {
        let mut limiter = WarningLimiter::default();
        assert_eq!(limiter.admit("lost", 0), Some(0));
        for t in 1..100 {
            assert_eq!(limiter.admit("lost", t), None);
        }
        // Another kind has its own window.
        assert_eq!(limiter.admit("discarded", 50), Some(0));
        assert_eq!(limiter.admit("lost", WARNING_INTERVAL_MS), Some(99));
        assert_eq!(limiter.admit("lost", WARNING_INTERVAL_MS + 1), None);
        assert!(suppressed_note(99).contains("99 more"));
        // Held-back warnings are summed up once their interval has passed, even
        // when no new one comes.
        assert_eq!(limiter.admit("lost", WARNING_INTERVAL_MS + 2), None);
        assert!(limiter.holds_back());
        assert!(limiter.due(WARNING_INTERVAL_MS + 3).is_empty(), "not yet");
        assert_eq!(limiter.due(2 * WARNING_INTERVAL_MS), [("lost", 2)]);
        assert!(!limiter.holds_back());
        assert!(limiter.due(10 * WARNING_INTERVAL_MS).is_empty());
        assert_eq!(suppressed_note(0), "");
    }
}
