//! Evaluating a compiled query against one event.

use serde_json::Value;

use super::ast::{Comparison, Expr, Literal, Op, Path};
use super::parser::number_in_string;

impl Expr {
    /// Reorders the operands of every AND and OR so that the cheapest are
    /// evaluated first: they often decide the result before a regex or a
    /// deep path is reached. The result is the same; only the work differs.
    pub fn cheapest_first(mut self) -> Expr {
        self.reorder();
        self
    }

    /// Reorders in place and returns a rough relative cost. Works on `&mut`
    /// with small frames, so the deepest queries allowed fit small stacks.
    fn reorder(&mut self) -> usize {
        match self {
            Expr::Or(operands) | Expr::And(operands) => {
                let mut costs = Vec::with_capacity(operands.len());
                for operand in operands.iter_mut() {
                    costs.push(operand.reorder());
                }
                let total = costs.iter().sum();
                let mut costed: Vec<(usize, Expr)> =
                    costs.into_iter().zip(operands.drain(..)).collect();
                costed.sort_by_key(|(cost, _)| *cost);
                operands.extend(costed.into_iter().map(|(_, operand)| operand));
                total
            }
            Expr::Not(inner) => inner.reorder(),
            Expr::Compare(comparison) => {
                let literal = match comparison.value {
                    Literal::Regex(_) => 20,
                    Literal::String(_) | Literal::Number(_) => 2,
                    Literal::Bool(_) | Literal::Null => 1,
                };
                comparison.path.segments.len() + literal
            }
        }
    }

    pub fn matches(&self, event: &Value) -> bool {
        match self {
            Expr::Or(operands) => operands.iter().any(|e| e.matches(event)),
            Expr::And(operands) => operands.iter().all(|e| e.matches(event)),
            Expr::Not(inner) => !inner.matches(event),
            Expr::Compare(comparison) => comparison.holds(event),
        }
    }
}

impl Comparison {
    /// Whether the comparison holds for `event` (see the crate docs for the rules).
    pub fn holds(&self, event: &Value) -> bool {
        match self.op {
            Op::Eq => self.equals(event),
            Op::Ne => !self.equals(event),
            Op::Lt | Op::Gt | Op::Le | Op::Ge => {
                let Literal::Number(bound) = self.value else {
                    // The parser accepts only numbers with these operators.
                    return false;
                };
                any_candidate(event, &self.path, |candidate| {
                    numeric_value(candidate).is_some_and(|n| match self.op {
                        Op::Lt => n < bound,
                        Op::Gt => n > bound,
                        Op::Le => n <= bound,
                        _ => n >= bound,
                    })
                })
            }
        }
    }

    /// `path = value`: some candidate equals the literal; for `null`, also no candidate at all.
    fn equals(&self, event: &Value) -> bool {
        match &self.value {
            Literal::Null => {
                let mut found = false;
                let null_seen = any_candidate(event, &self.path, |candidate| {
                    found = true;
                    candidate.is_null()
                });
                null_seen || !found
            }
            literal => any_candidate(event, &self.path, |candidate| {
                literal_equals(literal, candidate)
            }),
        }
    }
}

fn literal_equals(literal: &Literal, candidate: &Value) -> bool {
    match (literal, candidate) {
        (Literal::String(expected), Value::String(text)) => expected == text,
        (Literal::Number(expected), candidate) => numeric_value(candidate) == Some(*expected),
        (Literal::Bool(expected), Value::Bool(value)) => expected == value,
        (Literal::Null, Value::Null) => true,
        (Literal::Regex(regex), Value::String(text)) => regex.regex.is_match(text),
        (Literal::Regex(regex), Value::Number(number)) => regex.regex.is_match(&number.to_string()),
        (Literal::Regex(regex), Value::Bool(value)) => {
            regex.regex.is_match(if *value { "true" } else { "false" })
        }
        _ => false,
    }
}

/// A JSON number, or a JSON string holding one (iconik's documented conversion).
fn numeric_value(candidate: &Value) -> Option<f64> {
    match candidate {
        Value::Number(number) => number.as_f64(),
        Value::String(text) => number_in_string(text),
        _ => None,
    }
}

/// Calls `test` on each candidate value at `path` until it returns true.
///
/// Object keys are followed; an array met on the way is entered element by
/// element (arrays nest). When the path ends at an array, its elements are the
/// candidates; an empty array is a candidate itself, so it exists (`!= null`).
pub fn any_candidate<F: FnMut(&Value) -> bool>(event: &Value, path: &Path, mut test: F) -> bool {
    visit(event, &path.segments, &mut test)
}

fn visit<F: FnMut(&Value) -> bool>(value: &Value, segments: &[String], test: &mut F) -> bool {
    match (segments.split_first(), value) {
        (None, Value::Array(items)) if !items.is_empty() => {
            items.iter().any(|item| visit(item, segments, test))
        }
        (None, value) => test(value),
        (Some((key, rest)), Value::Object(map)) => {
            map.get(key.as_str()).is_some_and(|v| visit(v, rest, test))
        }
        (Some(_), Value::Array(items)) => items.iter().any(|item| visit(item, segments, test)),
        (Some(_), _) => false,
    }
}

/// All candidate values at `path`, for explaining a result.
pub fn candidates<'v>(event: &'v Value, path: &Path) -> Vec<&'v Value> {
    let mut found = Vec::new();
    collect(event, &path.segments, &mut found);
    found
}

fn collect<'v>(value: &'v Value, segments: &[String], found: &mut Vec<&'v Value>) {
    match (segments.split_first(), value) {
        (None, Value::Array(items)) if !items.is_empty() => {
            items.iter().for_each(|item| collect(item, segments, found))
        }
        (None, value) => found.push(value),
        (Some((key, rest)), Value::Object(map)) => {
            if let Some(v) = map.get(key.as_str()) {
                collect(v, rest, found)
            }
        }
        (Some(_), Value::Array(items)) => {
            items.iter().for_each(|item| collect(item, segments, found))
        }
        (Some(_), _) => {}
    }
}
