//! A query bound to the path ids of a [`PathSet`], evaluated on an event's
//! [`Viewed`] candidates instead of a parsed value: the filter's hot path.
//!
//! The rules are those of `eval.rs` (which evaluates on a `serde_json::Value`
//! and is the oracle the tests compare this with): the same operand order,
//! the same candidates in the same order, so the same result and the same
//! regex-budget outcome.

use super::ast::{Expr, Literal, Op};
use super::eval::RegexBudget;
use super::parser::number_in_string;
use super::{Evaluation, Query};
use crate::event::view::{number_text, Candidate, PathSet, Viewed};

/// A [`Query`] whose paths are ids of one [`PathSet`].
#[derive(Debug, Clone)]
pub struct BoundQuery {
    /// `None`: the empty query, which matches every event.
    expr: Option<Bound>,
}

#[derive(Debug, Clone)]
enum Bound {
    Or(Vec<Bound>),
    And(Vec<Bound>),
    Not(Box<Bound>),
    Compare { path: usize, op: Op, value: Literal },
}

impl Query {
    /// This query with its paths added to `paths` (see [`BoundQuery`]).
    pub fn bind(&self, paths: &mut PathSet) -> BoundQuery {
        BoundQuery {
            expr: self.eval.as_ref().map(|expr| bind(expr, paths)),
        }
    }
}

fn bind(expr: &Expr, paths: &mut PathSet) -> Bound {
    match expr {
        Expr::Or(operands) => Bound::Or(operands.iter().map(|e| bind(e, paths)).collect()),
        Expr::And(operands) => Bound::And(operands.iter().map(|e| bind(e, paths)).collect()),
        Expr::Not(inner) => Bound::Not(Box::new(bind(inner, paths))),
        Expr::Compare(comparison) => Bound::Compare {
            path: paths.add(&comparison.path.segments),
            op: comparison.op,
            value: comparison.value.clone(),
        },
    }
}

impl BoundQuery {
    /// As [`Query::evaluate`], on the event's candidates.
    pub fn evaluate(&self, event: &Viewed<'_>) -> Evaluation {
        let mut budget = RegexBudget::per_evaluation();
        let matched = self
            .expr
            .as_ref()
            .is_none_or(|expr| expr.holds(event, &mut budget));
        let over_budget = budget.exceeded();
        Evaluation {
            matched: matched && !over_budget,
            over_budget,
        }
    }
}

impl Bound {
    fn holds(&self, event: &Viewed<'_>, budget: &mut RegexBudget) -> bool {
        match self {
            Bound::Or(operands) => operands.iter().any(|e| e.holds(event, budget)),
            Bound::And(operands) => operands.iter().all(|e| e.holds(event, budget)),
            Bound::Not(inner) => !inner.holds(event, budget),
            Bound::Compare { path, op, value } => {
                let mut candidates = event.candidates(*path);
                match op {
                    Op::Eq => equals(value, &mut candidates, budget),
                    Op::Ne => !equals(value, &mut candidates, budget),
                    Op::Lt | Op::Gt | Op::Le | Op::Ge => {
                        let Literal::Number(bound) = *value else {
                            // The parser accepts only numbers with these operators.
                            return false;
                        };
                        candidates.any(|candidate| {
                            numeric(&candidate).is_some_and(|n| match op {
                                Op::Lt => n < bound,
                                Op::Gt => n > bound,
                                Op::Le => n <= bound,
                                _ => n >= bound,
                            })
                        })
                    }
                }
            }
        }
    }
}

/// `path = value`: some candidate equals the literal; for `null`, also no candidate at all.
fn equals<'t>(
    literal: &Literal,
    candidates: &mut impl Iterator<Item = Candidate<'t>>,
    budget: &mut RegexBudget,
) -> bool {
    if let Literal::Null = literal {
        let mut found = false;
        let null_seen = candidates.any(|candidate| {
            found = true;
            candidate == Candidate::Null
        });
        return null_seen || !found;
    }
    candidates.any(|candidate| literal_equals(literal, &candidate, budget))
}

fn literal_equals(literal: &Literal, candidate: &Candidate<'_>, budget: &mut RegexBudget) -> bool {
    match (literal, candidate) {
        (Literal::String(expected), Candidate::String(text)) => expected == text,
        (Literal::Number(expected), candidate) => numeric(candidate) == Some(*expected),
        (Literal::Bool(expected), Candidate::Bool(value)) => expected == value,
        (Literal::Null, Candidate::Null) => true,
        (Literal::Regex(regex), Candidate::String(text)) => budget.is_match(regex, text),
        (Literal::Regex(regex), Candidate::Number { text, .. }) => {
            // As eval.rs: refuse before writing the number once the budget is spent.
            if budget.remaining() < regex.cost() {
                budget.is_match(regex, "")
            } else {
                budget.is_match(regex, &number_text(text))
            }
        }
        (Literal::Regex(regex), Candidate::Bool(value)) => {
            budget.is_match(regex, if *value { "true" } else { "false" })
        }
        _ => false,
    }
}

/// A JSON number, or a JSON string holding one (iconik's documented conversion).
fn numeric(candidate: &Candidate<'_>) -> Option<f64> {
    match candidate {
        Candidate::Number { value, .. } => Some(*value),
        Candidate::String(text) => number_in_string(text),
        _ => None,
    }
}
