//! Evaluating a compiled query against one event.

use serde_json::Value;

use super::ast::{Comparison, Expr, Literal, Op, Path, RegexLiteral};
use super::parser::number_in_string;

/// The regex work one evaluation of a query may do, in units of
/// [`RegexLiteral::cost`] × bytes of text. regex-lite's time grows with both
/// the regex's size and the text's length; this bounds their product, so no
/// query runs long on any event: natively at most about 0.3 ns per unit, so
/// some 15 ms (a few times that in the Wasm VM). The simplest regexes (cost
/// about 200) may search about 250 KB of text per evaluation, the largest
/// allowed (cost 32 KiB) about 1.5 KB.
pub const REGEX_BUDGET: u64 = 50_000_000;

/// What one evaluation may still spend running regexes. A regex whose run
/// would exceed it is not run: that comparison does not match for that
/// value, and [`RegexBudget::exceeded`] tells (for counting and logging).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegexBudget {
    remaining: u64,
    exceeded: bool,
}

impl RegexBudget {
    pub fn new(units: u64) -> RegexBudget {
        RegexBudget {
            remaining: units,
            exceeded: false,
        }
    }

    /// The budget of one evaluation: [`REGEX_BUDGET`].
    pub fn per_evaluation() -> RegexBudget {
        RegexBudget::new(REGEX_BUDGET)
    }

    /// Whether some regex was refused for lack of budget.
    pub fn exceeded(&self) -> bool {
        self.exceeded
    }

    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Whether `regex` matches `text`, if the budget allows running it (it is
    /// charged `cost × (len + 1)`); `false` if not, noted as exceeded.
    pub fn is_match(&mut self, regex: &RegexLiteral, text: &str) -> bool {
        let length = u64::try_from(text.len()).unwrap_or(u64::MAX);
        let work = regex.cost().saturating_mul(length.saturating_add(1));
        if work > self.remaining {
            self.exceeded = true;
            return false;
        }
        self.remaining -= work;
        regex.regex.is_match(text)
    }
}

impl Default for RegexBudget {
    fn default() -> Self {
        RegexBudget::per_evaluation()
    }
}

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

    /// Whether the expression holds, within one evaluation's regex budget.
    pub fn matches(&self, event: &Value) -> bool {
        self.matches_within(event, &mut RegexBudget::per_evaluation())
    }

    /// Whether the expression holds, charging regex runs to `budget`.
    pub fn matches_within(&self, event: &Value, budget: &mut RegexBudget) -> bool {
        match self {
            Expr::Or(operands) => operands.iter().any(|e| e.matches_within(event, budget)),
            Expr::And(operands) => operands.iter().all(|e| e.matches_within(event, budget)),
            Expr::Not(inner) => !inner.matches_within(event, budget),
            Expr::Compare(comparison) => comparison.holds_within(event, budget),
        }
    }
}

impl Comparison {
    /// Whether the comparison holds for `event` (see the crate docs for the
    /// rules), within one evaluation's regex budget.
    pub fn holds(&self, event: &Value) -> bool {
        self.holds_within(event, &mut RegexBudget::per_evaluation())
    }

    /// Whether the comparison holds, charging regex runs to `budget`.
    pub fn holds_within(&self, event: &Value, budget: &mut RegexBudget) -> bool {
        match self.op {
            Op::Eq => self.equals(event, budget),
            Op::Ne => !self.equals(event, budget),
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
    fn equals(&self, event: &Value, budget: &mut RegexBudget) -> bool {
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
                literal_equals(literal, candidate, budget)
            }),
        }
    }
}

fn literal_equals(literal: &Literal, candidate: &Value, budget: &mut RegexBudget) -> bool {
    match (literal, candidate) {
        (Literal::String(expected), Value::String(text)) => expected == text,
        (Literal::Number(expected), candidate) => numeric_value(candidate) == Some(*expected),
        (Literal::Bool(expected), Value::Bool(value)) => expected == value,
        (Literal::Null, Value::Null) => true,
        (Literal::Regex(regex), Value::String(text)) => budget.is_match(regex, text),
        (Literal::Regex(regex), Value::Number(number)) => {
            // A number's text is short: refuse before writing it once the
            // budget is spent, so a long array of numbers stays cheap.
            if budget.remaining() < regex.cost() {
                budget.is_match(regex, "")
            } else {
                budget.is_match(regex, &number.to_string())
            }
        }
        (Literal::Regex(regex), Value::Bool(value)) => {
            budget.is_match(regex, if *value { "true" } else { "false" })
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
