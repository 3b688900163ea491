//! The `nom` parser for iconik's webhook query language (plus `NOT`).
//!
//! ```text
//! query      := or
//! or         := and ("OR" and)*
//! and        := unary ("AND" unary)*
//! unary      := "NOT" unary | "(" or ")" | comparison
//! comparison := path op value
//! ```
//!
//! The parser does not recurse: `AND`/`OR` chains are read in loops and each
//! `(` pushes a group on an explicit stack. `MAX_DEPTH` bounds the nesting of
//! the resulting tree, which evaluation and printing walk recursively, so no
//! input can overflow the stack.

use nom::branch::alt;
use nom::bytes::complete::{tag, tag_no_case, take_while1};
use nom::character::complete::{char, digit1, one_of, satisfy};
use nom::combinator::{opt, recognize};
use nom::error::{ErrorKind, ParseError};
use nom::{IResult, Parser};

use super::ast::{Comparison, Expr, Literal, Op, Path, RegexLiteral};
use super::error::QueryError;

/// Longest query accepted, in bytes.
pub const MAX_QUERY_BYTES: usize = 16 * 1024;
/// Deepest nesting of parentheses and `NOT`s accepted.
pub const MAX_DEPTH: usize = 64;
/// Largest compiled size of one regex, in bytes (regex-lite's own accounting,
/// on wasm32 smaller than natively for the same regex). regex-lite's time is
/// proportional to this size times the text's length, so it is kept small.
pub const MAX_REGEX_BYTES: usize = 32 * 1024;
/// Most copies a counted repetition (`{n}`, `{n,}`, `{n,m}`) may make of what
/// it repeats; nested ones multiply (`(a{10}){20}` makes 200).
pub const MAX_REGEX_REPEAT: u64 = 100;
/// Deepest nesting of groups and repetitions inside one regex.
pub const MAX_REGEX_NEST: u32 = 16;

/// A nom error: where it happened and, once known, what was expected there.
#[derive(Debug)]
struct Failure<'a> {
    at: &'a str,
    /// What was wrong, and more detail to print after `at column N`.
    message: Option<(String, String)>,
    /// The message already says its column.
    placed: bool,
}

impl<'a> ParseError<&'a str> for Failure<'a> {
    fn from_error_kind(input: &'a str, _kind: ErrorKind) -> Self {
        Failure {
            at: input,
            message: None,
            placed: false,
        }
    }

    fn append(_input: &'a str, _kind: ErrorKind, other: Self) -> Self {
        other
    }
}

type PResult<'a, T> = IResult<&'a str, T, Failure<'a>>;

/// Parses and compiles a query. `None` means the query is empty and matches every event.
pub(crate) fn parse(src: &str) -> Result<Option<Expr>, QueryError> {
    if src.len() > MAX_QUERY_BYTES {
        return Err(QueryError::at(
            src,
            MAX_QUERY_BYTES,
            format!(
                "query is {} bytes long; the limit is {} bytes",
                src.len(),
                MAX_QUERY_BYTES
            ),
        ));
    }
    if src.trim().is_empty() {
        return Ok(None);
    }
    let parser = QueryParser { src };
    let finish = |result: PResult<'_, Expr>| -> Result<Expr, QueryError> {
        match result {
            Ok((rest, expr)) => {
                let rest = skip_ws(rest);
                if rest.is_empty() {
                    Ok(expr)
                } else if rest.starts_with(')') {
                    Err(parser.error(rest, "unmatched ')'", ""))
                } else {
                    Err(parser.error(
                        rest,
                        "expected AND, OR or the end of the query",
                        &format!(", found {}", describe(rest)),
                    ))
                }
            }
            Err(nom::Err::Error(e) | nom::Err::Failure(e)) => {
                let (head, tail) = e
                    .message
                    .unwrap_or_else(|| (format!("unexpected {}", describe(e.at)), String::new()));
                if e.placed {
                    let offset = src.len() - e.at.len();
                    Err(QueryError::at(src, offset, head + &tail))
                } else {
                    Err(parser.error(e.at, &head, &tail))
                }
            }
            Err(nom::Err::Incomplete(_)) => Err(parser.error("", "unexpected end of query", "")),
        }
    };
    finish(parser.expression(src)).map(Some)
}

struct QueryParser<'s> {
    src: &'s str,
}

/// A parenthesised group being read, or the whole query.
struct Group<'a> {
    /// The input at the group's `(` (for the whole query, the query).
    open: &'a str,
    /// The `NOT`s written just before the `(`, applied to the whole group.
    nots: usize,
    /// The finished `AND` chains, one per `OR` operand.
    ors: Vec<Expr>,
    /// The `AND` chain being read.
    ands: Vec<Expr>,
}

impl<'a> Group<'a> {
    fn new(open: &'a str, nots: usize) -> Self {
        Group {
            open,
            nots,
            ors: Vec::new(),
            ands: Vec::new(),
        }
    }

    /// The group's expression, without its `NOT`s.
    fn finish(mut self) -> Expr {
        self.ors.push(Expr::and(self.ands));
        Expr::or(self.ors)
    }
}

/// `expr` under `nots` NOTs.
fn negate(mut expr: Expr, nots: usize) -> Expr {
    for _ in 0..nots {
        expr = Expr::Not(Box::new(expr));
    }
    expr
}

impl<'s> QueryParser<'s> {
    /// A `QueryError` for the position where `rest` starts: `{head} at column N{tail}`.
    fn error(&self, rest: &str, head: &str, tail: &str) -> QueryError {
        let offset = self.src.len() - rest.len();
        let column = super::error::column_of(self.src, offset);
        QueryError::at(self.src, offset, format!("{head} at column {column}{tail}"))
    }

    fn column(&self, rest: &str) -> usize {
        super::error::column_of(self.src, self.src.len() - rest.len())
    }

    /// `query := or ; or := and ("OR" and)* ; and := unary ("AND" unary)* ;
    /// unary := "NOT" unary | "(" or ")" | comparison`, read without recursion:
    /// each `(` starts a new [`Group`] and stacks the enclosing one, each `)`
    /// ends it. `depth` counts the open parentheses and pending `NOT`s; the one
    /// that would exceed `MAX_DEPTH` is reported, so the tree stays shallow
    /// enough for evaluation and printing.
    fn expression<'a>(&self, input: &'a str) -> PResult<'a, Expr> {
        // The innermost group being read (at first the whole query), and the groups around it.
        let mut group = Group::new(input, 0);
        let mut enclosing: Vec<Group<'a>> = Vec::new();
        let mut depth = 0;
        let mut rest = input;
        loop {
            // A unary: NOTs, then either '(' (start a group and read its first
            // unary) or a comparison.
            let mut nots = 0;
            let comparison = loop {
                rest = skip_ws(rest);
                let not = keyword("NOT")(rest);
                if depth >= MAX_DEPTH && (not.is_ok() || rest.starts_with('(')) {
                    return fail(
                        rest,
                        format!(
                            "query nests deeper than {MAX_DEPTH} levels of parentheses and NOT"
                        ),
                        String::new(),
                    );
                }
                if let Ok((after, _)) = not {
                    nots += 1;
                    depth += 1;
                    rest = after;
                } else if let Some(after) = rest.strip_prefix('(') {
                    enclosing.push(std::mem::replace(&mut group, Group::new(rest, nots)));
                    nots = 0;
                    depth += 1;
                    rest = after;
                } else {
                    let (after, comparison) = self.comparison(rest)?;
                    rest = after;
                    break comparison;
                }
            };
            depth -= nots;
            let mut operand = negate(comparison, nots);
            // Then AND or OR continue the group; anything else ends it.
            loop {
                group.ands.push(operand);
                let next = skip_ws(rest);
                if let Ok((after, _)) = keyword("AND")(next) {
                    rest = after;
                    break;
                }
                if let Ok((after, _)) = keyword("OR")(next) {
                    let ands = std::mem::take(&mut group.ands);
                    group.ors.push(Expr::and(ands));
                    rest = after;
                    break;
                }
                let Some(outer) = enclosing.pop() else {
                    // The whole query: what follows is for the caller to judge.
                    return Ok((rest, group.finish()));
                };
                let inner = std::mem::replace(&mut group, outer);
                let Some(after) = next.strip_prefix(')') else {
                    let column = self.column(inner.open);
                    return fail(
                        next,
                        "expected ')'".to_string(),
                        format!(
                            " to close the '(' at column {column}, found {}",
                            describe(next)
                        ),
                    );
                };
                rest = after;
                depth -= 1 + inner.nots;
                let nots = inner.nots;
                operand = negate(inner.finish(), nots);
            }
        }
    }

    fn comparison<'a>(&self, input: &'a str) -> PResult<'a, Expr> {
        let (rest, path) = self.path(input)?;
        let rest = skip_ws(rest);
        let Ok((rest, op)) = operator(rest) else {
            return fail(
                rest,
                format!("expected a comparison operator (=, !=, <, >, <=, >=) after '{path}'"),
                format!(", found {}", describe(rest)),
            );
        };
        let value_start = skip_ws(rest);
        let (rest, value) = self.value(value_start, op)?;
        if op.is_ordering() && !matches!(value, Literal::Number(_)) {
            let found = match value {
                Literal::String(_) => "a string",
                Literal::Bool(_) => "a boolean",
                Literal::Null => "null",
                Literal::Regex(_) => "a regex",
                Literal::Number(_) => "a number",
            };
            return fail(
                value_start,
                format!("'{}' compares numbers only, but the value", op.as_str()),
                format!(
                    " is {found} (only numbers support <, >, <=, >=; write the number without quotes)"
                ),
            );
        }
        Ok((rest, Expr::Compare(Comparison { path, op, value })))
    }

    fn path<'a>(&self, input: &'a str) -> PResult<'a, Path> {
        let mut segments = Vec::new();
        let mut rest = input;
        loop {
            let (after, segment) = match rest.chars().next() {
                Some('"') => self.quoted(rest, "field name")?,
                Some(c) if is_segment_char(c) => {
                    let (after, bare) = bare_segment(rest)?;
                    (after, bare.to_string())
                }
                _ => {
                    let head = if segments.is_empty() {
                        "expected a comparison such as field=\"value\""
                    } else {
                        "expected a field name after '.'"
                    };
                    return fail(
                        rest,
                        head.to_string(),
                        format!(", found {}", describe(rest)),
                    );
                }
            };
            segments.push(segment);
            match after.strip_prefix('.') {
                Some(next) => rest = next,
                None => return Ok((after, Path { segments })),
            }
        }
    }

    /// A double-quoted string with `\"` and `\\` escapes; `what` names it in errors.
    fn quoted<'a>(&self, input: &'a str, what: &str) -> PResult<'a, String> {
        let Some(body) = input.strip_prefix('"') else {
            return fail(input, format!("expected a quoted {what}"), String::new());
        };
        let mut text = String::new();
        let mut chars = body.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => return Ok((&body[i + 1..], text)),
                '\\' => match chars.next() {
                    Some((_, escaped @ ('"' | '\\'))) => text.push(escaped),
                    Some((_, other)) => {
                        return fail(
                            &body[i..],
                            format!("invalid escape '\\{other}' in a {what}"),
                            ": only \\\" and \\\\ are escapes".to_string(),
                        )
                    }
                    None => break,
                },
                other => text.push(other),
            }
        }
        let column = self.column(input);
        fail_placed(
            input,
            format!("unterminated {what} starting at column {column} (no closing '\"')"),
        )
    }

    fn value<'a>(&self, input: &'a str, op: Op) -> PResult<'a, Literal> {
        match input.chars().next() {
            None => fail(
                input,
                format!("expected a value after '{}'", op.as_str()),
                ", found the end of the query".to_string(),
            ),
            Some('"') => {
                let (rest, text) = self.quoted(input, "string")?;
                Ok((rest, Literal::String(text)))
            }
            Some('/') => self.regex(input),
            Some(c) if c == '-' || c.is_ascii_digit() => {
                let invalid = || {
                    fail(
                        input,
                        format!("invalid number {}", describe(input)),
                        " (numbers are written as in JSON: 12, -0.5, 1.5e3)".to_string(),
                    )
                };
                let Ok((rest, text)) = json_number(input) else {
                    return invalid();
                };
                if rest.starts_with(is_segment_char) || rest.starts_with('.') {
                    return invalid();
                }
                match text.parse::<f64>() {
                    Ok(number) if number.is_finite() => Ok((rest, Literal::Number(number))),
                    _ => fail(
                        input,
                        format!("number {text} is out of range"),
                        String::new(),
                    ),
                }
            }
            Some(c) if is_segment_char(c) => {
                let (rest, word) = bare_segment(input)?;
                let literal = match word {
                    "true" => Literal::Bool(true),
                    "false" => Literal::Bool(false),
                    "null" => Literal::Null,
                    _ => {
                        return fail(
                            input,
                            format!("unquoted value '{word}'"),
                            format!(
                                ": put strings in double quotes (\"{word}\"), or use a number, true, false, null or a /regex/"
                            ),
                        )
                    }
                };
                Ok((rest, literal))
            }
            Some(_) => fail(
                input,
                format!("expected a value after '{}'", op.as_str()),
                format!(
                    " (a \"string\", number, true, false, null or /regex/), found {}",
                    describe(input)
                ),
            ),
        }
    }

    fn regex<'a>(&self, input: &'a str) -> PResult<'a, Literal> {
        let body = &input[1..];
        let mut pattern = String::new();
        let mut chars = body.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '/' => {
                    end = Some(i);
                    break;
                }
                '\\' => match chars.next() {
                    Some((_, '/')) => pattern.push('/'),
                    Some((_, other)) => {
                        pattern.push('\\');
                        pattern.push(other);
                    }
                    None => break,
                },
                other => pattern.push(other),
            }
        }
        let Some(end) = end else {
            let column = self.column(input);
            return fail_placed(
                input,
                format!(
                    "unterminated regex starting at column {column} (no closing '/'; write \\/ for a '/' inside it)"
                ),
            );
        };
        let mut rest = &body[end + 1..];
        let case_insensitive = rest.starts_with('i');
        if case_insensitive {
            rest = &rest[1..];
        }
        if rest.starts_with(is_segment_char) {
            return fail(
                rest,
                format!("unknown regex flag {}", describe(rest)),
                ": the only flag is 'i' (case-insensitive)".to_string(),
            );
        }
        let column = self.column(input);
        let shown = shown_regex(&input[..input.len() - rest.len()]);
        let repeats = largest_repetition(&pattern);
        if repeats > MAX_REGEX_REPEAT {
            return fail_placed(
                input,
                format!(
                    "regex {shown} at column {column} repeats something up to {repeats} times; the limit is {MAX_REGEX_REPEAT} (nested counts multiply): use + or *, or smaller counts"
                ),
            );
        }
        match compile_regex(&pattern, case_insensitive) {
            Ok((regex, cost)) => Ok((
                rest,
                Literal::Regex(RegexLiteral {
                    pattern,
                    case_insensitive,
                    regex,
                    cost,
                }),
            )),
            Err(e) => {
                let reason = e.to_string().replace('\n', " ");
                let message = if reason.contains("size limit") {
                    format!(
                        "regex {shown} at column {column} compiles to more than {MAX_REGEX_BYTES} bytes, the limit: use fewer or smaller counted repetitions and classes"
                    )
                } else if reason.contains("too much nesting") {
                    format!(
                        "regex {shown} at column {column} nests groups and repetitions deeper than {MAX_REGEX_NEST} levels, the limit"
                    )
                } else {
                    format!("invalid regex at column {column}: {reason}")
                };
                fail_placed(input, message)
            }
        }
    }
}

/// The regex as written, for messages: cut short when long.
fn shown_regex(written: &str) -> String {
    if written.chars().count() > 40 {
        let cut: String = written.chars().take(37).collect();
        format!("{cut}...")
    } else {
        written.to_string()
    }
}

/// Compiles `pattern` within the limits, and estimates its size: an upper
/// bound within an eighth of regex-lite's own accounting, found by compiling
/// under smaller size limits (failing compilations stop at the limit, so all
/// of them together cost a few times one compilation).
fn compile_regex(
    pattern: &str,
    case_insensitive: bool,
) -> Result<(regex_lite::Regex, u64), regex_lite::Error> {
    let build = |limit: usize| {
        regex_lite::RegexBuilder::new(pattern)
            .case_insensitive(case_insensitive)
            .size_limit(limit)
            .nest_limit(MAX_REGEX_NEST)
            .build()
    };
    let regex = build(MAX_REGEX_BYTES)?;
    // The smallest power of two that is enough, then a few halvings of the gap.
    let mut fits = 64;
    while fits < MAX_REGEX_BYTES && build(fits).is_err() {
        fits *= 2;
    }
    let mut too_small = fits / 2;
    for _ in 0..3 {
        let middle = too_small + (fits - too_small) / 2;
        if build(middle).is_ok() {
            fits = middle;
        } else {
            too_small = middle;
        }
    }
    let cost = u64::try_from(fits.min(MAX_REGEX_BYTES)).unwrap_or(u64::MAX);
    Ok((regex, cost))
}

/// The largest number of copies any counted repetition of `pattern` makes,
/// nested counts multiplied; 1 without any. `pattern` is one regex-lite
/// accepted, so only valid syntax needs reading.
fn largest_repetition(pattern: &str) -> u64 {
    let mut frames = vec![Frame {
        largest: 1,
        last: 1,
    }];
    let mut verbose = false;
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                // \x{7F}, \u{..}: a braced escape is one character, not a
                // repetition (but in \d{3} the braces repeat \d).
                if chars
                    .next()
                    .is_some_and(|e| matches!(e, 'x' | 'u' | 'U' | 'p' | 'P'))
                    && chars.peek() == Some(&'{')
                {
                    for skipped in chars.by_ref() {
                        if skipped == '}' {
                            break;
                        }
                    }
                }
                set_last(&mut frames, 1);
            }
            '[' => {
                skip_class(&mut chars);
                set_last(&mut frames, 1);
            }
            '(' => {
                if chars.peek() == Some(&'?') {
                    let flags: String = chars
                        .clone()
                        .skip(1)
                        .take_while(|f| *f != ')' && *f != ':')
                        .collect();
                    if let Some(on) = flags.split('-').next() {
                        verbose |= on.contains('x');
                    }
                }
                frames.push(Frame {
                    largest: 1,
                    last: 1,
                });
            }
            ')' => {
                if frames.len() > 1 {
                    let inner = frames.pop().map_or(1, |f| f.largest);
                    set_last(&mut frames, inner);
                }
            }
            '|' => set_last(&mut frames, 1),
            '#' if verbose => {
                for skipped in chars.by_ref() {
                    if skipped == '\n' {
                        break;
                    }
                }
            }
            '{' => {
                let mut text = String::new();
                for inner in chars.by_ref() {
                    if inner == '}' {
                        break;
                    }
                    text.push(inner);
                }
                let count = text
                    .split(',')
                    .filter_map(|n| n.trim().parse::<u64>().ok())
                    .max()
                    .unwrap_or(1);
                if let Some(frame) = frames.last_mut() {
                    let copies = frame.last.saturating_mul(count);
                    frame.last = copies;
                    frame.largest = frame.largest.max(copies);
                }
            }
            _ => set_last(&mut frames, 1),
        }
    }
    frames.iter().map(|f| f.largest).max().unwrap_or(1)
}

/// An open group of a regex: the largest count inside it, and the count of the
/// last thing read (what a following `{n,m}` repeats).
struct Frame {
    largest: u64,
    last: u64,
}

/// Something counting `copies` was read in the innermost group.
fn set_last(frames: &mut [Frame], copies: u64) {
    if let Some(frame) = frames.last_mut() {
        frame.last = copies;
        frame.largest = frame.largest.max(copies);
    }
}

/// Skips a character class whose `[` was read, nested classes included.
fn skip_class(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    let mut depth = 1;
    // A `]` first in a class (after an optional `^`) is a literal.
    if chars.peek() == Some(&'^') {
        chars.next();
    }
    if chars.peek() == Some(&']') {
        chars.next();
    }
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '[' => {
                depth += 1;
                if chars.peek() == Some(&'^') {
                    chars.next();
                }
                if chars.peek() == Some(&']') {
                    chars.next();
                }
            }
            ']' => {
                depth -= 1;
                if depth == 0 {
                    return;
                }
            }
            _ => {}
        }
    }
}

/// Fails with `{head} at column N{tail}`.
fn fail<T>(at: &str, head: String, tail: String) -> PResult<'_, T> {
    Err(nom::Err::Failure(Failure {
        at,
        message: Some((head, tail)),
        placed: false,
    }))
}

/// Like `fail`, for a message that already names its column.
fn fail_placed<T>(at: &str, message: String) -> PResult<'_, T> {
    Err(nom::Err::Failure(Failure {
        at,
        message: Some((message, String::new())),
        placed: true,
    }))
}

/// Skips whitespace, Unicode's included (as `trim` does for the empty query,
/// and as `keyword` and `describe` see it): a no-break space separates tokens.
fn skip_ws(input: &str) -> &str {
    input.trim_start()
}

fn is_segment_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

fn bare_segment(input: &str) -> PResult<'_, &str> {
    take_while1(is_segment_char).parse(input)
}

/// `AND`, `OR` or `NOT`, any case, as a whole word: followed by whitespace, `(`, `"` or the end.
fn keyword<'a>(word: &'static str) -> impl Fn(&'a str) -> PResult<'a, &'a str> {
    move |input: &'a str| {
        let (rest, matched) = tag_no_case(word).parse(input)?;
        match rest.chars().next() {
            None => Ok((rest, matched)),
            Some(c) if c.is_whitespace() || c == '(' || c == '"' => Ok((rest, matched)),
            _ => Err(nom::Err::Error(Failure {
                at: input,
                message: None,
                placed: false,
            })),
        }
    }
}

fn operator(input: &str) -> PResult<'_, Op> {
    alt((
        tag("!=").map(|_| Op::Ne),
        tag("<=").map(|_| Op::Le),
        tag(">=").map(|_| Op::Ge),
        tag("=").map(|_| Op::Eq),
        tag("<").map(|_| Op::Lt),
        tag(">").map(|_| Op::Gt),
    ))
    .parse(input)
}

/// A number in JSON syntax: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
fn json_number(input: &str) -> PResult<'_, &str> {
    recognize((
        opt(char('-')),
        alt((
            recognize((satisfy(|c| ('1'..='9').contains(&c)), opt(digit1))),
            tag("0"),
        )),
        opt((char('.'), digit1)),
        opt((one_of("eE"), opt(one_of("+-")), digit1)),
    ))
    .parse(input)
}

/// The value of a string holding exactly one JSON number (surrounding
/// whitespace allowed), as iconik converts `"3840"` for `width>=1920`.
pub(crate) fn number_in_string(text: &str) -> Option<f64> {
    let trimmed = text.trim();
    match json_number(trimmed) {
        Ok(("", digits)) => digits.parse::<f64>().ok().filter(|n| n.is_finite()),
        _ => None,
    }
}

/// `'x'` for the next token, or `the end of the query`.
fn describe(rest: &str) -> String {
    let token: String = rest
        .chars()
        .take_while(|c| !c.is_whitespace())
        .take(20)
        .collect();
    if token.is_empty() {
        if rest.is_empty() {
            "the end of the query".to_string()
        } else {
            "whitespace".to_string()
        }
    } else {
        format!("'{token}'")
    }
}
