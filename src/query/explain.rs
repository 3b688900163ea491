//! Why a query did or did not match: every comparison with the values it saw.

use std::fmt;

use serde_json::Value;

use super::ast::Expr;
use super::eval::candidates;

/// The outcome of each comparison of a query on one event, in query order.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    pub matched: bool,
    pub comparisons: Vec<ComparisonTrace>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ComparisonTrace {
    /// The comparison, normalised (`data.status = "ACTIVE"`).
    pub comparison: String,
    /// The JSON text of each candidate value found at the path.
    pub seen: Vec<String>,
    pub held: bool,
}

pub(crate) fn explain(expr: Option<&Expr>, event: &Value) -> Explanation {
    let Some(expr) = expr else {
        return Explanation {
            matched: true,
            comparisons: Vec::new(),
        };
    };
    let mut comparisons = Vec::new();
    expr.for_each_comparison(&mut |comparison| {
        comparisons.push(ComparisonTrace {
            comparison: comparison.to_string(),
            seen: candidates(event, &comparison.path)
                .into_iter()
                .map(|v| v.to_string())
                .collect(),
            held: comparison.holds(event),
        })
    });
    Explanation {
        matched: expr.matches(event),
        comparisons,
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.comparisons.is_empty() {
            writeln!(f, "empty query: matches every event")?;
        }
        for trace in &self.comparisons {
            let verdict = if trace.held { "held" } else { "did not hold" };
            writeln!(f, "{:<12} {}", verdict, trace.comparison)?;
            if trace.seen.is_empty() {
                writeln!(f, "             saw nothing at this path")?;
            } else {
                writeln!(f, "             saw {}", trace.seen.join(", "))?;
            }
        }
        write!(f, "{}", if self.matched { "match" } else { "no match" })
    }
}
