//! iconik's webhook query language, with `NOT` added.
//!
//! A [`Query`] is parsed once from text and then evaluated on many events:
//!
//! ```
//! use envoy_webhooks::query::Query;
//!
//! let query = Query::parse(r#"data.status="ACTIVE" AND data.components.metadata.width>=1920"#).unwrap();
//! let event = serde_json::json!({"data": {"status": "ACTIVE",
//!     "components": [{"metadata": {"width": "3840"}}]}});
//! assert!(query.matches(&event));
//! ```

// No `as` casts here: on wasm32 `usize` is 32 bits, and a silently truncated
// size (8 GiB became 0) is how limits stop limiting. Convert with `try_from`.
#![deny(clippy::as_conversions, clippy::cast_possible_truncation)]

mod ast;
mod bound;
mod error;
mod eval;
mod explain;
mod parser;

use std::fmt;

use serde_json::Value;

pub use ast::{Comparison, Expr, Literal, Op, Path, RegexLiteral};
pub use bound::BoundQuery;
pub use error::QueryError;
pub use eval::{any_candidate, candidates, RegexBudget, REGEX_BUDGET};
pub use explain::{ComparisonTrace, Explanation};
pub use parser::{MAX_DEPTH, MAX_QUERY_BYTES, MAX_REGEX_BYTES, MAX_REGEX_NEST, MAX_REGEX_REPEAT};

/// The outcome of one evaluation of a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evaluation {
    pub matched: bool,
    /// A regex was not run because the evaluation's budget could not pay
    /// for it; its comparison did not match for that value.
    pub over_budget: bool,
}

/// A compiled query. The empty query matches every event.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    expr: Option<Expr>,
    /// The same expression with cheap operands first, for evaluation.
    eval: Option<Expr>,
}

impl Query {
    /// Parses and compiles `text`, regexes included.
    pub fn parse(text: &str) -> Result<Query, QueryError> {
        parser::parse(text).map(|expr| Query {
            eval: expr.clone().map(Expr::cheapest_first),
            expr,
        })
    }

    /// A query that matches every event.
    pub fn match_all() -> Query {
        Query {
            expr: None,
            eval: None,
        }
    }

    /// Whether the query matches `event`, within one evaluation's regex
    /// budget ([`REGEX_BUDGET`]); [`Query::evaluate`] also tells whether the
    /// budget ran out.
    pub fn matches(&self, event: &Value) -> bool {
        self.evaluate(event).matched
    }

    /// Whether the query matches, and whether a regex was refused for lack of
    /// budget (counted as `regex_over_budget` by the filter). A query whose
    /// evaluation ran out of budget does not match, whatever the refused
    /// comparison sat under (`NOT`, `!=`): an event crafted to exhaust the
    /// budget must not make a webhook fire.
    pub fn evaluate(&self, event: &Value) -> Evaluation {
        let mut budget = RegexBudget::per_evaluation();
        let matched = self.matches_within(event, &mut budget);
        let over_budget = budget.exceeded();
        Evaluation {
            matched: matched && !over_budget,
            over_budget,
        }
    }

    /// Whether the query matches, charging its regex runs to `budget`.
    pub fn matches_within(&self, event: &Value, budget: &mut RegexBudget) -> bool {
        self.eval
            .as_ref()
            .is_none_or(|expr| expr.matches_within(event, budget))
    }

    /// A hash of the query's structure: equal queries (`==`) hash the same,
    /// so that definitions sharing a query can share its evaluation.
    pub fn structure_hash(&self) -> u64 {
        use std::hash::{BuildHasher, Hash, Hasher};
        let mut hasher = hashbrown::DefaultHashBuilder::default().build_hasher();
        match &self.eval {
            Some(expr) => expr.hash_structure(&mut hasher),
            None => 0u8.hash(&mut hasher),
        }
        hasher.finish()
    }

    /// The largest [`RegexLiteral::cost`] of the query's regexes; 0 without any.
    pub fn max_regex_cost(&self) -> u64 {
        let mut largest = 0;
        if let Some(expr) = &self.expr {
            expr.for_each_comparison(&mut |comparison| {
                if let Literal::Regex(regex) = &comparison.value {
                    largest = largest.max(regex.cost());
                }
            });
        }
        largest
    }

    pub fn explain(&self, event: &Value) -> Explanation {
        explain::explain(self.expr.as_ref(), event)
    }

    /// The compiled expression; `None` for the empty query.
    pub fn expr(&self) -> Option<&Expr> {
        self.expr.as_ref()
    }
}

impl fmt::Display for Query {
    /// The normalised, fully parenthesised query; empty for the empty query.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.expr {
            Some(expr) => write!(f, "{expr}"),
            None => Ok(()),
        }
    }
}
