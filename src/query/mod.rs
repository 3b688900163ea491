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

mod ast;
mod error;
mod eval;
mod explain;
mod parser;

use std::fmt;

use serde_json::Value;

pub use ast::{Comparison, Expr, Literal, Op, Path, RegexLiteral};
pub use error::QueryError;
pub use eval::{any_candidate, candidates};
pub use explain::{ComparisonTrace, Explanation};
pub use parser::{MAX_DEPTH, MAX_QUERY_BYTES, MAX_REGEX_BYTES};

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

    pub fn matches(&self, event: &Value) -> bool {
        self.eval.as_ref().is_none_or(|expr| expr.matches(event))
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
