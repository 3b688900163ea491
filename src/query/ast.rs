//! The compiled form of a query, and its normalised (fully parenthesised) text.

use std::fmt;

/// A boolean expression over one event.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// Holds when any operand holds. Never nested directly in another `Or`.
    Or(Vec<Expr>),
    /// Holds when every operand holds. Never nested directly in another `And`.
    And(Vec<Expr>),
    /// Our extension: iconik's language has no `NOT`.
    Not(Box<Expr>),
    Compare(Comparison),
}

/// `path op value`, for example `data.components.metadata.width >= 1920`.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub path: Path,
    pub op: Op,
    pub value: Literal,
}

/// Object keys to follow from the top of the event; arrays on the way are
/// entered element by element.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Path {
    pub segments: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Gt,
    Le,
    Ge,
}

/// The right-hand side of a comparison.
#[derive(Debug, Clone)]
pub enum Literal {
    String(String),
    Number(f64),
    Bool(bool),
    Null,
    Regex(RegexLiteral),
}

/// `/pattern/` or `/pattern/i`, compiled once when the query is parsed.
#[derive(Debug, Clone)]
pub struct RegexLiteral {
    /// The pattern as handed to the regex engine (`\/` already turned into `/`).
    pub pattern: String,
    pub case_insensitive: bool,
    pub regex: regex_lite::Regex,
    /// Estimated size of the compiled regex in bytes (regex-lite's
    /// accounting, within an eighth above it): its matching time per byte of
    /// text is roughly proportional to this. See [`RegexLiteral::cost`].
    pub cost: u64,
}

impl RegexLiteral {
    /// Roughly the work per byte of text this regex does, in the units of
    /// [`RegexBudget`](super::RegexBudget): running it on a text of `n` bytes
    /// costs `cost() * (n + 1)`. At least 1, at most `MAX_REGEX_BYTES`.
    pub fn cost(&self) -> u64 {
        self.cost.max(1)
    }
}

impl PartialEq for Literal {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Literal::String(a), Literal::String(b)) => a == b,
            (Literal::Number(a), Literal::Number(b)) => a == b,
            (Literal::Bool(a), Literal::Bool(b)) => a == b,
            (Literal::Null, Literal::Null) => true,
            (Literal::Regex(a), Literal::Regex(b)) => {
                a.pattern == b.pattern && a.case_insensitive == b.case_insensitive
            }
            _ => false,
        }
    }
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Gt => ">",
            Op::Le => "<=",
            Op::Ge => ">=",
        }
    }

    /// `<`, `>`, `<=`, `>=`: these compare numbers only.
    pub fn is_ordering(self) -> bool {
        matches!(self, Op::Lt | Op::Gt | Op::Le | Op::Ge)
    }
}

impl Expr {
    /// Feeds the expression's structure to `hasher`: equal expressions
    /// (`==`: numbers by value, regexes by pattern and flag) feed the same.
    pub fn hash_structure<H: std::hash::Hasher>(&self, hasher: &mut H) {
        use std::hash::Hash;
        match self {
            Expr::Or(operands) | Expr::And(operands) => {
                u8::from(matches!(self, Expr::Or(_))).hash(hasher);
                operands.len().hash(hasher);
                for operand in operands {
                    operand.hash_structure(hasher);
                }
            }
            Expr::Not(inner) => {
                2u8.hash(hasher);
                inner.hash_structure(hasher);
            }
            Expr::Compare(comparison) => {
                3u8.hash(hasher);
                comparison.path.hash(hasher);
                comparison.op.as_str().hash(hasher);
                match &comparison.value {
                    Literal::String(text) => (0u8, text).hash(hasher),
                    // 0.0 and -0.0 are equal: hashed alike.
                    Literal::Number(n) => (1u8, (n + 0.0).to_bits()).hash(hasher),
                    Literal::Bool(b) => (2u8, b).hash(hasher),
                    Literal::Null => 3u8.hash(hasher),
                    Literal::Regex(regex) => {
                        (4u8, &regex.pattern, regex.case_insensitive).hash(hasher);
                    }
                }
            }
        }
    }

    /// Builds an `Or`, merging operands that are themselves `Or`s so that
    /// printing and parsing again gives the same tree.
    pub(crate) fn or(operands: Vec<Expr>) -> Expr {
        Self::flatten(operands, true)
    }

    /// Builds an `And`, merging operands that are themselves `And`s.
    pub(crate) fn and(operands: Vec<Expr>) -> Expr {
        Self::flatten(operands, false)
    }

    fn flatten(operands: Vec<Expr>, is_or: bool) -> Expr {
        let mut flat = Vec::with_capacity(operands.len());
        for operand in operands {
            match operand {
                Expr::Or(inner) if is_or => flat.extend(inner),
                Expr::And(inner) if !is_or => flat.extend(inner),
                other => flat.push(other),
            }
        }
        if flat.len() == 1 {
            if let Some(only) = flat.pop() {
                return only;
            }
        }
        if is_or {
            Expr::Or(flat)
        } else {
            Expr::And(flat)
        }
    }

    /// Calls `f` on every comparison, left to right.
    pub fn for_each_comparison<'a>(&'a self, f: &mut impl FnMut(&'a Comparison)) {
        match self {
            Expr::Or(operands) | Expr::And(operands) => {
                for operand in operands {
                    operand.for_each_comparison(f);
                }
            }
            Expr::Not(inner) => inner.for_each_comparison(f),
            Expr::Compare(comparison) => f(comparison),
        }
    }
}

fn is_bare_segment(segment: &str) -> bool {
    !segment.is_empty()
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Writes `text` in double quotes, escaping `"` and `\`.
pub(crate) fn write_quoted(f: &mut impl fmt::Write, text: &str) -> fmt::Result {
    f.write_char('"')?;
    for c in text.chars() {
        if c == '"' || c == '\\' {
            f.write_char('\\')?;
        }
        f.write_char(c)?;
    }
    f.write_char('"')
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.segments.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            // A first segment spelled like NOT would read as the keyword.
            let keyword_like = i == 0 && segment.eq_ignore_ascii_case("not");
            if is_bare_segment(segment) && !keyword_like {
                f.write_str(segment)?;
            } else {
                write_quoted(f, segment)?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Literal::String(text) => write_quoted(f, text),
            Literal::Number(number) => {
                // Plain digits in the usual range; an exponent outside it, so that
                // 1e300 does not print as 301 digits (both forms are JSON numbers).
                let magnitude = number.abs();
                if magnitude != 0.0 && !(1e-6..1e21).contains(&magnitude) {
                    write!(f, "{number:e}")
                } else {
                    write!(f, "{number}")
                }
            }
            Literal::Bool(value) => write!(f, "{value}"),
            Literal::Null => f.write_str("null"),
            Literal::Regex(regex) => {
                f.write_str("/")?;
                let mut chars = regex.pattern.chars();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            f.write_str("\\")?;
                            if let Some(next) = chars.next() {
                                fmt::Write::write_char(f, next)?;
                            }
                        }
                        '/' => f.write_str("\\/")?,
                        other => fmt::Write::write_char(f, other)?,
                    }
                }
                f.write_str("/")?;
                if regex.case_insensitive {
                    f.write_str("i")?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.path, self.op.as_str(), self.value)
    }
}

impl fmt::Display for Expr {
    /// Fully parenthesised: every `AND`/`OR` group is wrapped in parentheses.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Or(operands) | Expr::And(operands) => {
                let keyword = if matches!(self, Expr::Or(_)) {
                    " OR "
                } else {
                    " AND "
                };
                f.write_str("(")?;
                for (i, operand) in operands.iter().enumerate() {
                    if i > 0 {
                        f.write_str(keyword)?;
                    }
                    write!(f, "{operand}")?;
                }
                f.write_str(")")
            }
            Expr::Not(inner) => write!(f, "NOT {inner}"),
            Expr::Compare(comparison) => write!(f, "{comparison}"),
        }
    }
}
