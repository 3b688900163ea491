//! Collecting every configuration problem at once, each with where it is.

use std::fmt;

use serde_json::{Map, Value};

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `webhook "id"` (or `webhooks[3]` before the id is known), `events`, `delivery`, ...
    pub place: String,
    /// The field at fault, e.g. `query`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.place, self.message)
        } else {
            write!(
                f,
                "{}: field '{}': {}",
                self.place, self.field, self.message
            )
        }
    }
}

/// Every problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.problems.len();
        write!(
            f,
            "invalid configuration ({count} problem{}):",
            if count == 1 { "" } else { "s" }
        )?;
        for problem in &self.problems {
            // Multi-line messages (query errors with a caret) stay indented under their problem.
            write!(f, "\n  - {}", problem.to_string().replace('\n', "\n    "))?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Reads the fields of one JSON object, recording problems instead of stopping at the first.
pub(crate) struct Fields<'a, 'p> {
    object: &'a Map<String, Value>,
    place: String,
    seen: Vec<&'static str>,
    problems: &'p mut Vec<Problem>,
}

impl<'a, 'p> Fields<'a, 'p> {
    /// `value` must be an object; otherwise a problem is recorded and `None` returned.
    pub fn of(
        value: &'a Value,
        place: impl Into<String>,
        problems: &'p mut Vec<Problem>,
    ) -> Option<Fields<'a, 'p>> {
        let place = place.into();
        match value {
            Value::Object(object) => Some(Fields {
                object,
                place,
                seen: Vec::new(),
                problems,
            }),
            other => {
                problems.push(Problem {
                    place,
                    field: String::new(),
                    message: format!("expected a JSON object, found {}", kind_of(other)),
                });
                None
            }
        }
    }

    pub fn set_place(&mut self, place: impl Into<String>) {
        self.place = place.into();
    }

    pub fn problem(&mut self, field: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            place: self.place.clone(),
            field: field.to_string(),
            message: message.into(),
        });
    }

    /// The field's value, treating JSON `null` as absent.
    pub fn get(&mut self, field: &'static str) -> Option<&'a Value> {
        self.seen.push(field);
        self.object.get(field).filter(|v| !v.is_null())
    }

    pub fn string(&mut self, field: &'static str) -> Option<&'a str> {
        match self.get(field)? {
            Value::String(text) => Some(text),
            other => {
                let message = format!("expected a string, found {}", kind_of(other));
                self.problem(field, message);
                None
            }
        }
    }

    pub fn required_string(&mut self, field: &'static str) -> Option<&'a str> {
        let value = self.string(field);
        if value.is_none() && self.object.get(field).is_none_or(Value::is_null) {
            self.problem(field, "is required");
        }
        value
    }

    /// A whole number within `min..=max`.
    pub fn integer(&mut self, field: &'static str, min: u64, max: u64) -> Option<u64> {
        let value = self.get(field)?;
        match value.as_u64() {
            Some(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                let message = format!(
                    "expected a whole number from {min} to {max}, found {}",
                    short(value)
                );
                self.problem(field, message);
                None
            }
        }
    }

    /// A size or count within `min..=max`. The bounds are `usize`, so they hold
    /// on this platform (32 bits on wasm32); the value is converted with
    /// `try_from`, so one that does not fit is a problem, never truncated.
    pub fn size(&mut self, field: &'static str, min: usize, max: usize) -> Option<usize> {
        // usize is at most 64 bits on every target Rust supports: these never saturate.
        let wide = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        let n = self.integer(field, wide(min), wide(max))?;
        match usize::try_from(n) {
            Ok(n) => Some(n),
            Err(_) => {
                let message = format!("{n} does not fit in this platform's usize");
                self.problem(field, message);
                None
            }
        }
    }

    pub fn boolean(&mut self, field: &'static str) -> Option<bool> {
        match self.get(field)? {
            Value::Bool(value) => Some(*value),
            other => {
                let message = format!("expected true or false, found {}", kind_of(other));
                self.problem(field, message);
                None
            }
        }
    }

    /// Whether the field is given (not `null`).
    pub fn has(&self, field: &str) -> bool {
        self.object.get(field).is_some_and(|v| !v.is_null())
    }

    pub fn string_list(&mut self, field: &'static str) -> Option<Vec<&'a str>> {
        let value = self.get(field)?;
        let strings: Option<Vec<&str>> = value
            .as_array()
            .and_then(|items| items.iter().map(Value::as_str).collect());
        match strings {
            Some(list) => Some(list),
            None => {
                let message = format!("expected a list of strings, found {}", short(value));
                self.problem(field, message);
                None
            }
        }
    }

    /// Records a problem for each field not read; call last.
    pub fn reject_unknown(self, known_hint: &str) {
        for key in self.object.keys() {
            if !self.seen.iter().any(|seen| seen == key) {
                self.problems.push(Problem {
                    place: self.place.clone(),
                    field: key.clone(),
                    message: format!("unknown field (known fields: {known_hint})"),
                });
            }
        }
    }
}

pub(crate) fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The JSON text of `value`, cut short for messages.
pub(crate) fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 40 {
        let cut: String = text.chars().take(37).collect();
        format!("{cut}...")
    } else {
        text
    }
}
