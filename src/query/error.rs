//! Parse errors that point at the offending column.

use std::fmt;

/// Why a query could not be compiled, and where.
///
/// `Display` gives the message, then the query with a caret under the
/// offending column:
///
/// ```text
/// expected a value after '=' at column 13
///   data.status=
///               ^
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryError {
    message: String,
    column: usize,
    query: String,
}

impl QueryError {
    /// `offset` is a byte offset into `query`; the column counts characters from 1.
    pub(crate) fn at(query: &str, offset: usize, message: impl Into<String>) -> QueryError {
        QueryError {
            message: message.into(),
            column: column_of(query, offset),
            query: query.to_string(),
        }
    }

    /// The message alone, ending in `at column N` (or the reason for a whole-query error).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// 1-based column, in characters.
    pub fn column(&self) -> usize {
        self.column
    }
}

/// 1-based character column of a byte offset.
pub(crate) fn column_of(query: &str, offset: usize) -> usize {
    let offset = offset.min(query.len());
    query
        .char_indices()
        .take_while(|(i, _)| *i < offset)
        .count()
        + 1
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        // Long queries are shown around the column only, so the caret stays readable.
        const CONTEXT: usize = 60;
        let chars: Vec<char> = self
            .query
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let caret = self.column.saturating_sub(1);
        let start = caret.saturating_sub(CONTEXT);
        let end = (caret + CONTEXT).min(chars.len());
        let mut shown: String = chars[start..end].iter().collect();
        let mut caret_at = caret - start;
        if start > 0 {
            shown.insert_str(0, "...");
            caret_at += 3;
        }
        if end < chars.len() {
            shown.push_str("...");
        }
        write!(f, "\n  {}\n  {}^", shown, " ".repeat(caret_at))
    }
}

impl std::error::Error for QueryError {}
