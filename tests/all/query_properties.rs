//! Property tests for the query language: printing round-trips, no input
//! panics the parser or the evaluator, and the evaluator agrees with a small
//! reference model of the specification. Plus limits on pathological input,
//! checked on a thread with a small stack so that deep recursion would show.

use envoy_webhooks::query::{
    candidates, Comparison, Expr, Literal, Op, Path, Query, MAX_DEPTH, MAX_QUERY_BYTES,
};
use proptest::collection::{hash_map, vec};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::Value;

// ---------------------------------------------------------------------------
// Generators

/// Keys shared by generated paths and generated events, so that paths find values.
const KEYS: &[&str] = &[
    "a", "b", "data", "名前", "", "NOT", "x y", "AND", "or", "true", "-", "1e5",
];

fn arb_key() -> impl Strategy<Value = String> {
    select(KEYS).prop_map(String::from)
}

/// Any segment: bare-able, keyword-like, or any text (quotes, backslashes, control characters).
fn arb_segment() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => arb_key(),
        2 => "[A-Za-z0-9_-]{1,6}",
        1 => ".{0,4}",
        1 => r#"["\\ .a]{0,4}"#,
    ]
}

fn arb_path() -> BoxedStrategy<Path> {
    vec(arb_segment(), 1..4)
        .prop_map(|segments| Path { segments })
        .boxed()
}

fn arb_event_path() -> BoxedStrategy<Path> {
    vec(arb_key(), 1..4)
        .prop_map(|segments| Path { segments })
        .boxed()
}

/// Strings that are, or nearly are, JSON numbers.
fn numeric_string() -> impl Strategy<Value = String> {
    prop_oneof![
        r"[ \t\u{a0}]?-?(0|[1-9][0-9]{0,3})(\.[0-9]{1,3})?([eE][+-]?[0-9]{1,3})?[ \n]?",
        select(&["01", "1.", "+1", "0x10", "1e999", "-", "NaN", "inf", "1 2", ".5", "1e"][..])
            .prop_map(String::from),
    ]
}

fn arb_number() -> impl Strategy<Value = f64> {
    prop_oneof![
        (-20i32..20).prop_map(f64::from),
        (-1000.0f64..1000.0),
        any::<f64>().prop_filter("finite", |n| n.is_finite()),
    ]
}

fn arb_string_literal() -> impl Strategy<Value = String> {
    prop_oneof![
        select(&["ACTIVE", "x", "true", "null", "", "名前", "a\"b\\c"][..]).prop_map(String::from),
        numeric_string(),
        ".{0,6}",
    ]
}

/// Pieces that are valid regex syntax anywhere, so every pattern built from them compiles.
/// They are written as in a query: `\/` is a slash.
const REGEX_PIECES: &[&str] = &[
    "a", "B", "é", ".", r"\/", r"\\", r"\d", "(x|y)", "[0-9]", "1+", "^", "$", " ", "\"", "ru",
];

/// A regex literal, compiled by the parser itself (the only way to build one).
fn arb_regex() -> impl Strategy<Value = Literal> {
    (vec(select(REGEX_PIECES), 0..5), any::<bool>()).prop_filter_map(
        "regex pieces compile",
        |(pieces, case_insensitive)| {
            let flag = if case_insensitive { "i" } else { "" };
            let query = Query::parse(&format!("x=/{}/{flag}", pieces.concat())).ok()?;
            match query.expr()? {
                Expr::Compare(comparison) => Some(comparison.value.clone()),
                _ => None,
            }
        },
    )
}

fn arb_literal() -> impl Strategy<Value = Literal> {
    prop_oneof![
        arb_string_literal().prop_map(Literal::String),
        arb_number().prop_map(Literal::Number),
        any::<bool>().prop_map(Literal::Bool),
        Just(Literal::Null),
        arb_regex(),
    ]
}

fn arb_comparison_on(path: BoxedStrategy<Path>) -> impl Strategy<Value = Comparison> {
    let equality = (path.clone(), select(&[Op::Eq, Op::Ne][..]), arb_literal());
    let ordering = (
        path,
        select(&[Op::Lt, Op::Gt, Op::Le, Op::Ge][..]),
        arb_number().prop_map(Literal::Number),
    );
    prop_oneof![equality, ordering].prop_map(|(path, op, value)| Comparison { path, op, value })
}

/// Any expression tree, including shapes the parser never builds (an `Or`
/// directly inside an `Or`, one-operand groups).
fn arb_expr_on(path: BoxedStrategy<Path>) -> impl Strategy<Value = Expr> {
    arb_comparison_on(path)
        .prop_map(Expr::Compare)
        .prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                vec(inner.clone(), 1..4).prop_map(Expr::Or),
                vec(inner.clone(), 1..4).prop_map(Expr::And),
                inner.prop_map(|e| Expr::Not(Box::new(e))),
            ]
        })
}

fn arb_scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-20i32..20).prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |n| serde_json::Number::from_f64(n)
            .map(Value::Number)),
        numeric_string().prop_map(Value::String),
        arb_string_literal().prop_map(Value::String),
    ]
}

fn arb_json() -> impl Strategy<Value = Value> {
    arb_scalar().prop_recursive(5, 48, 5, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            hash_map(arb_key(), inner, 0..5)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// A small world for comparing with the model, where generated paths usually
/// find something and generated literals usually meet equal-looking values:
/// few keys, strings that are almost numbers, numbers that are almost strings.
const FOCUS_KEYS: &[&str] = &["a", "b", "x y"];
const FOCUS_STRINGS: &[&str] = &[
    "1", " 1 ", "\u{a0}1", "1.0", "01", "+1", "1e0", "-0", "0x1", "1e999", "x", "X", "", "true",
    "null", "a\"b",
];
const FOCUS_NUMBERS: &[f64] = &[-1.0, -0.0, 0.0, 0.5, 1.0, 2.0, 1e300];
const FOCUS_REGEXES: &[&str] = &[
    "1", "^1$", "x", "^$", r"\d", "e", "tru", "^true$", "^false$", "", r"\.0", "^-",
];

fn focus_path() -> BoxedStrategy<Path> {
    vec(select(FOCUS_KEYS).prop_map(String::from), 1..3)
        .prop_map(|segments| Path { segments })
        .boxed()
}

fn focus_literal() -> impl Strategy<Value = Literal> {
    let regex = (select(FOCUS_REGEXES), any::<bool>()).prop_filter_map(
        "regex compiles",
        |(pattern, case_insensitive)| {
            let flag = if case_insensitive { "i" } else { "" };
            let query = Query::parse(&format!("x=/{pattern}/{flag}")).ok()?;
            match query.expr()? {
                Expr::Compare(comparison) => Some(comparison.value.clone()),
                _ => None,
            }
        },
    );
    prop_oneof![
        select(FOCUS_STRINGS).prop_map(|s| Literal::String(s.to_string())),
        select(FOCUS_NUMBERS).prop_map(Literal::Number),
        any::<bool>().prop_map(Literal::Bool),
        Just(Literal::Null),
        regex,
    ]
}

fn focus_expr() -> impl Strategy<Value = Expr> {
    let equality = (focus_path(), select(&[Op::Eq, Op::Ne][..]), focus_literal());
    let ordering = (
        focus_path(),
        select(&[Op::Lt, Op::Gt, Op::Le, Op::Ge][..]),
        select(FOCUS_NUMBERS).prop_map(Literal::Number),
    );
    prop_oneof![equality, ordering]
        .prop_map(|(path, op, value)| Expr::Compare(Comparison { path, op, value }))
        .prop_recursive(3, 12, 3, |inner| {
            prop_oneof![
                vec(inner.clone(), 1..3).prop_map(Expr::Or),
                vec(inner.clone(), 1..3).prop_map(Expr::And),
                inner.prop_map(|e| Expr::Not(Box::new(e))),
            ]
        })
}

/// An object with each focus key present most of the time, holding scalars,
/// arrays (empty ones included) and objects of the same kind.
fn focus_json() -> impl Strategy<Value = Value> {
    let scalar = prop_oneof![
        1 => Just(Value::Null),
        2 => any::<bool>().prop_map(Value::Bool),
        1 => select(FOCUS_NUMBERS).prop_filter_map("finite", |n| serde_json::Number::from_f64(n)
            .map(Value::Number)),
        1 => (-2i64..3).prop_map(Value::from),
        2 => select(FOCUS_STRINGS).prop_map(|s| Value::String(s.to_string())),
    ];
    let value = scalar.prop_recursive(3, 16, 3, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..3).prop_map(Value::Array),
            vec(proptest::option::weighted(0.7, inner), FOCUS_KEYS.len()).prop_map(focus_object),
        ]
    });
    vec(proptest::option::weighted(0.8, value), FOCUS_KEYS.len()).prop_map(focus_object)
}

fn focus_object(values: Vec<Option<Value>>) -> Value {
    let map = FOCUS_KEYS
        .iter()
        .zip(values)
        .filter_map(|(key, value)| Some((key.to_string(), value?)))
        .collect();
    Value::Object(map)
}

/// Text made of the language's own tokens, glued with or without whitespace.
const TOKENS: &[&str] = &[
    "(",
    ")",
    "(",
    ")",
    "NOT",
    "not",
    "AND",
    "and",
    "OR",
    "Or",
    "a",
    "data",
    ".",
    ".",
    "a.b",
    "data.components.metadata.width",
    "\"Legal Hold\"",
    "\"",
    "\\",
    "\"a\\\"b\"",
    "=",
    "!=",
    "<",
    ">",
    "<=",
    ">=",
    "==",
    "!",
    "1",
    "-0.5e3",
    "01",
    "1.",
    "1e999",
    "-",
    "true",
    "false",
    "null",
    "TRUE",
    "word",
    "\"x\"",
    "/x\\//i",
    "/",
    "/(/",
    "/a/g",
    "//",
    "é",
    "🎉",
    "名前",
    "\u{a0}",
];
const GLUE: &[&str] = &["", " ", " ", "\t", "\n", "\u{a0}"];

fn token_soup() -> impl Strategy<Value = String> {
    vec((select(TOKENS), select(GLUE)), 0..40).prop_map(|parts| {
        parts
            .into_iter()
            .flat_map(|(token, glue)| [token, glue])
            .collect()
    })
}

/// Well-formed comparisons joined by keywords and parentheses, so most inputs parse.
fn query_like() -> impl Strategy<Value = String> {
    let comparison = prop_oneof![
        Just("a=1"),
        Just("data.status = \"ACTIVE\""),
        Just("b != null"),
        Just("\"x y\".a>=-2.5e1"),
        Just("a=/B|é/i"),
        Just("NOT a<3"),
        Just("data.components.metadata.width >= 1920"),
    ];
    let joiner = select(
        &[
            " AND ",
            " OR ",
            " and ",
            " or ",
            " AND NOT ",
            ")",
            " OR (",
            "(",
        ][..],
    );
    (comparison.clone(), vec((joiner, comparison), 0..12)).prop_map(|(first, rest)| {
        let mut text = first.to_string();
        for (joiner, comparison) in rest {
            text.push_str(joiner);
            text.push_str(comparison);
        }
        text
    })
}

// ---------------------------------------------------------------------------
// A reference model of the specification, written independently of src/query/eval.rs

/// Candidate values: object keys followed, arrays entered element by element;
/// an empty array at the end of the path is a candidate itself.
fn model_candidates<'v>(value: &'v Value, segments: &[String], out: &mut Vec<&'v Value>) {
    if let Value::Array(items) = value {
        if !(segments.is_empty() && items.is_empty()) {
            for item in items {
                model_candidates(item, segments, out);
            }
            return;
        }
    }
    match segments.split_first() {
        None => out.push(value),
        Some((key, rest)) => {
            if let Some(next) = value.as_object().and_then(|map| map.get(key)) {
                model_candidates(next, rest, out);
            }
        }
    }
}

/// A JSON number, or a string that serde_json reads as one (surrounding whitespace allowed).
fn model_number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(number) => number.as_f64(),
        Value::String(text) => serde_json::from_str::<f64>(text.trim())
            .ok()
            .filter(|n| n.is_finite()),
        _ => None,
    }
}

fn model_equals(literal: &Literal, candidate: &Value) -> bool {
    match literal {
        Literal::String(text) => candidate.as_str() == Some(text.as_str()),
        Literal::Number(number) => model_number(candidate) == Some(*number),
        Literal::Bool(flag) => candidate.as_bool() == Some(*flag),
        Literal::Null => candidate.is_null(),
        Literal::Regex(regex) => match candidate {
            Value::String(text) => regex.regex.is_match(text),
            Value::Number(_) | Value::Bool(_) => regex.regex.is_match(&candidate.to_string()),
            _ => false,
        },
    }
}

fn model_holds(comparison: &Comparison, event: &Value) -> bool {
    let mut found = Vec::new();
    model_candidates(event, &comparison.path.segments, &mut found);
    let equal = |found: &[&Value]| match comparison.value {
        Literal::Null => found.is_empty() || found.iter().any(|c| c.is_null()),
        ref literal => found.iter().any(|c| model_equals(literal, c)),
    };
    let Literal::Number(bound) = comparison.value else {
        return match comparison.op {
            Op::Eq => equal(&found),
            Op::Ne => !equal(&found),
            _ => false,
        };
    };
    let ordered = |test: fn(f64, f64) -> bool| {
        found
            .iter()
            .filter_map(|c| model_number(c))
            .any(|n| test(n, bound))
    };
    match comparison.op {
        Op::Eq => equal(&found),
        Op::Ne => !equal(&found),
        Op::Lt => ordered(|n, b| n < b),
        Op::Gt => ordered(|n, b| n > b),
        Op::Le => ordered(|n, b| n <= b),
        Op::Ge => ordered(|n, b| n >= b),
    }
}

fn model_matches(expr: &Expr, event: &Value) -> bool {
    match expr {
        Expr::Or(operands) => operands.iter().any(|e| model_matches(e, event)),
        Expr::And(operands) => operands.iter().all(|e| model_matches(e, event)),
        Expr::Not(inner) => !model_matches(inner, event),
        Expr::Compare(comparison) => model_holds(comparison, event),
    }
}

// ---------------------------------------------------------------------------
// Checks shared by several properties

/// Errors name a column inside the query (or just after it) and show a caret.
fn check_error(text: &str, error: &envoy_webhooks::query::QueryError) -> Result<(), TestCaseError> {
    let columns = text.chars().count() + 1;
    prop_assert!(
        (1..=columns).contains(&error.column()),
        "column {} outside 1..={columns}",
        error.column()
    );
    prop_assert!(!error.message().is_empty());
    if text.len() <= MAX_QUERY_BYTES {
        let at = format!("at column {}", error.column());
        prop_assert!(
            error.message().contains(&at),
            "message {:?} does not say {at:?}",
            error.message()
        );
    }
    let shown = error.to_string();
    prop_assert!(shown.starts_with(error.message()));
    prop_assert!(shown.ends_with('^'), "no caret line: {shown:?}");
    Ok(())
}

/// A parsed query prints as text that parses to the same query and prints the same.
fn check_round_trip(query: &Query) -> Result<(), TestCaseError> {
    let printed = query.to_string();
    let again = Query::parse(&printed)
        .map_err(|e| TestCaseError::fail(format!("printed form does not parse: {e}")))?;
    prop_assert_eq!(&again, query, "printed as {}", printed);
    prop_assert_eq!(again.to_string(), printed);
    Ok(())
}

fn formats_event() -> Value {
    let text = include_str!("../fixtures/seed-formats-event.json");
    serde_json::from_str(text).unwrap_or(Value::Null)
}

// ---------------------------------------------------------------------------
// Properties

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// (a) Printing a generated tree and parsing it gives a query whose printing is a fixed point,
    /// and the query means what the tree meant.
    #[test]
    fn printed_ast_parses_back(expr in arb_expr_on(arb_path()), events in vec(arb_json(), 3)) {
        let printed = expr.to_string();
        let query = Query::parse(&printed)
            .map_err(|e| TestCaseError::fail(format!("printed tree does not parse: {e}")))?;
        check_round_trip(&query)?;
        for event in &events {
            prop_assert_eq!(query.matches(event), expr.matches(event), "{}", printed);
        }
    }

    /// (a) The same for queries written as text.
    #[test]
    fn parsed_text_round_trips(text in query_like()) {
        match Query::parse(&text) {
            Ok(query) => check_round_trip(&query)?,
            Err(error) => check_error(&text, &error)?,
        }
    }

    /// (a) Every finite number prints as a number literal that reads back exactly.
    #[test]
    fn numbers_round_trip(number in any::<f64>().prop_filter("finite", |n| n.is_finite())) {
        let query = Query::parse(&format!("a = {}", Literal::Number(number)))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let Some(Expr::Compare(comparison)) = query.expr() else {
            return Err(TestCaseError::fail("not a comparison"));
        };
        prop_assert_eq!(&comparison.value, &Literal::Number(number));
    }

    /// (b) The parser never panics, on any string.
    #[test]
    fn parser_total_on_any_string(text in any::<String>()) {
        match Query::parse(&text) {
            Ok(query) => check_round_trip(&query)?,
            Err(error) => check_error(&text, &error)?,
        }
    }

    /// (b) ... nor on strings made of the language's own tokens.
    #[test]
    fn parser_total_on_token_soup(text in token_soup()) {
        match Query::parse(&text) {
            Ok(query) => {
                check_round_trip(&query)?;
                let event = formats_event();
                prop_assert_eq!(query.explain(&event).matched, query.matches(&event));
            }
            Err(error) => check_error(&text, &error)?,
        }
    }

    /// (b) ... nor on long paths and deep nesting built from tokens.
    #[test]
    fn parser_total_on_deep_input(
        segments in 1usize..3000,
        opens in 0usize..200,
        closes in 0usize..200,
        nots in 0usize..100,
    ) {
        let path = vec!["a"; segments].join(".");
        let text = format!("{}{}{path}=1{}", "NOT ".repeat(nots), "(".repeat(opens), ")".repeat(closes));
        match Query::parse(&text) {
            Ok(query) => {
                prop_assert!(opens == closes && opens + nots <= MAX_DEPTH);
                check_round_trip(&query)?;
            }
            Err(error) => check_error(&text, &error)?,
        }
    }

    /// (c) Evaluation never panics, on any JSON value, and agrees with explain and with the model.
    #[test]
    fn evaluation_total_on_any_json(expr in arb_expr_on(arb_event_path()), event in arb_json()) {
        check_against_model(&expr, &event)?;
    }

    /// (d) `a != v` is exactly `NOT (a = v)`, with any literal and any event.
    #[test]
    fn not_equal_is_not_equal_on_any_json(path in arb_event_path(), value in arb_literal(), event in arb_json()) {
        check_not_equal(&path, value, &event)?;
    }
}

proptest! {
    // These are cheap, and collisions worth finding are rarer.
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]


    /// (c) The evaluator agrees with the model where values and literals collide often.
    #[test]
    fn evaluation_matches_model(expr in focus_expr(), event in focus_json()) {
        check_against_model(&expr, &event)?;
    }

    /// (c) Candidate resolution agrees with the model.
    #[test]
    fn candidates_match_model(path in focus_path(), event in focus_json()) {
        let mut expected = Vec::new();
        model_candidates(&event, &path.segments, &mut expected);
        prop_assert_eq!(candidates(&event, &path), expected);
    }

    /// (d) `a != v` is exactly `NOT (a = v)`, and `= null` means "nothing or a null".
    #[test]
    fn not_equal_is_not_equal(path in focus_path(), value in focus_literal(), event in focus_json()) {
        check_not_equal(&path, value, &event)?;
    }
}

fn parse_ok(text: &str) -> Result<Query, TestCaseError> {
    Query::parse(text).map_err(|e| TestCaseError::fail(format!("{text:?} does not parse: {e}")))
}

fn check_against_model(expr: &Expr, event: &Value) -> Result<(), TestCaseError> {
    let query = parse_ok(&expr.to_string())?;
    let matched = query.matches(event);
    prop_assert_eq!(
        matched,
        model_matches(expr, event),
        "{} on {}",
        query,
        event
    );
    let explanation = query.explain(event);
    prop_assert_eq!(explanation.matched, matched);
    let _ = explanation.to_string();
    Ok(())
}

fn check_not_equal(path: &Path, value: Literal, event: &Value) -> Result<(), TestCaseError> {
    let eq = Comparison {
        path: path.clone(),
        op: Op::Eq,
        value: value.clone(),
    };
    let ne = Comparison {
        path: path.clone(),
        op: Op::Ne,
        value,
    };
    let eq_query = parse_ok(&eq.to_string())?;
    let ne_query = parse_ok(&ne.to_string())?;
    let not_query = parse_ok(&format!("NOT ({eq})"))?;
    prop_assert_eq!(
        ne_query.matches(event),
        !eq_query.matches(event),
        "{} on {}",
        ne,
        event
    );
    prop_assert_eq!(not_query.matches(event), ne_query.matches(event));

    let null_query = parse_ok(&format!("{path} = null"))?;
    let found = candidates(event, path);
    prop_assert_eq!(
        null_query.matches(event),
        found.is_empty() || found.iter().any(|v| v.is_null()),
        "{} on {}",
        null_query,
        event
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Pathological input, on a small stack

const SMALL_STACK: usize = 256 * 1024;

/// Runs `f` on a thread with a 256 KiB stack: recursion proportional to the
/// input's size would overflow it.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let handle = std::thread::Builder::new()
        .stack_size(SMALL_STACK)
        .spawn(f)
        .expect("spawn a thread");
    match handle.join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

fn parse_error(text: String) -> (usize, String) {
    on_small_stack(move || match Query::parse(&text) {
        Ok(query) => panic!("expected an error, parsed {query}"),
        Err(error) => (error.column(), error.message().to_string()),
    })
}

#[test]
fn ten_thousand_term_or_chain_is_too_long() {
    let text = vec!["a=1"; 10_000].join(" OR ");
    let (column, message) = parse_error(text);
    assert!(
        message.contains("bytes long; the limit is 16384 bytes"),
        "{message}"
    );
    assert_eq!(column, MAX_QUERY_BYTES + 1);
}

#[test]
fn longest_or_and_chains_under_the_limit_parse_and_evaluate() {
    for keyword in [" OR ", " AND ", " OR NOT "] {
        let terms = MAX_QUERY_BYTES / ("a=1".len() + keyword.len());
        let text = vec!["a=1"; terms].join(keyword);
        assert!(text.len() <= MAX_QUERY_BYTES);
        let matched = on_small_stack(move || {
            let query = Query::parse(&text).expect("a long chain parses");
            let printed = query.to_string();
            let event = serde_json::json!({"a": 1});
            let explained = query.explain(&event).matched;
            let matched = query.matches(&event);
            assert_eq!(explained, matched);
            assert!(printed.len() > text.len());
            matched
        });
        // The first term holds, so every chain holds.
        assert!(matched, "chain joined by {keyword:?}");
    }
}

#[test]
fn thousand_nested_parentheses_are_an_error() {
    let text = format!("{}a=1{}", "(".repeat(1000), ")".repeat(1000));
    let (column, message) = parse_error(text);
    assert_eq!(column, MAX_DEPTH + 1);
    assert!(
        message
            .starts_with("query nests deeper than 64 levels of parentheses and NOT at column 65"),
        "{message}"
    );
}

#[test]
fn thousand_unclosed_parentheses_are_an_error() {
    let (column, message) = parse_error("(".repeat(1000));
    assert_eq!(column, MAX_DEPTH + 1);
    assert!(message.contains("nests deeper than 64"), "{message}");
}

#[test]
fn thousand_nested_nots_are_an_error() {
    let text = format!("{}a=1", "NOT ".repeat(1000));
    let (column, message) = parse_error(text);
    assert_eq!(column, 4 * MAX_DEPTH + 1);
    assert!(message.contains("nests deeper than 64"), "{message}");
}

#[test]
fn thousand_nested_not_parentheses_are_an_error() {
    let text = format!("{}a=1{}", "NOT (".repeat(1000), ")".repeat(1000));
    let (column, message) = parse_error(text);
    // 32 "NOT (" pairs reach depth 64; the 33rd NOT is one too many.
    assert_eq!(column, 5 * (MAX_DEPTH / 2) + 1);
    assert!(message.contains("nests deeper than 64"), "{message}");
}

#[test]
fn deepest_accepted_nesting_evaluates_on_a_small_stack() {
    let text = format!(
        "{}a=1 AND b=2{}",
        "NOT (".repeat(MAX_DEPTH / 2),
        ")".repeat(MAX_DEPTH / 2)
    );
    let matched = on_small_stack(move || {
        let query = Query::parse(&text).expect("64 levels are accepted");
        let event = serde_json::json!({"a": 1, "b": 2});
        let _ = query.explain(&event).to_string();
        query.matches(&event)
    });
    // An even number of NOTs around a true AND.
    assert!(matched);
}

/// The deepest trees the parser builds: every '(' adds an OR and an AND level
/// (`x OR y AND (...)`), every NOT a level of its own. Evaluating, explaining,
/// printing, comparing, cloning and dropping them recurse once per level.
#[test]
fn deepest_trees_are_walked_on_a_small_stack() {
    let groups = format!(
        "{}z=1{}",
        "x=1 OR y=1 AND (".repeat(MAX_DEPTH),
        ")".repeat(MAX_DEPTH)
    );
    let half = MAX_DEPTH / 2;
    let negated = format!(
        "{}z=1{}",
        "NOT (x=1 OR y=1 AND ".repeat(half),
        ")".repeat(half)
    );
    for (text, expected) in [(groups, true), (negated, true)] {
        let (matched, printed_depth) = on_small_stack(move || {
            let query = Query::parse(&text).expect("the deepest nesting allowed parses");
            let event = serde_json::json!({"x": 0, "y": 1, "z": 1});
            let explained = query.explain(&event);
            let printed = query.to_string();
            let copy = query.clone();
            assert_eq!(copy, query);
            drop(copy);
            assert_eq!(explained.matched, query.matches(&event));
            let depth = printed
                .chars()
                .scan(0i32, |depth, c| {
                    *depth += match c {
                        '(' => 1,
                        ')' => -1,
                        _ => 0,
                    };
                    Some(*depth)
                })
                .max()
                .unwrap_or(0);
            (query.matches(&event), depth)
        });
        assert_eq!(matched, expected);
        // The printed form nests deeper than the text it came from.
        assert!(printed_depth > MAX_DEPTH as i32 / 2, "{printed_depth}");
    }
}

#[test]
fn deeply_nested_regex_is_an_error() {
    let text = format!("a=/{}x{}/", "(".repeat(5000), ")".repeat(5000));
    let (column, message) = parse_error(text);
    assert_eq!(column, 3);
    assert!(
        message.contains("at column 3 nests groups and repetitions deeper than 16 levels"),
        "{message}"
    );
}

#[test]
fn huge_regex_repetition_is_an_error() {
    let (column, message) = parse_error("a=/(a{100}){100}{100}/".to_string());
    assert_eq!(column, 3);
    assert!(
        message.contains("repeats something up to 1000000 times"),
        "{message}"
    );
}

#[test]
fn deeply_nested_json_is_rejected_by_serde() {
    let text = format!("{}{}", "[".repeat(1000), "]".repeat(1000));
    let error =
        serde_json::from_str::<Value>(&text).expect_err("beyond serde_json's recursion limit");
    assert!(
        error.to_string().contains("recursion limit exceeded"),
        "{error}"
    );
    let text = format!("{}1{}", "{\"a\":".repeat(1000), "}".repeat(1000));
    let error =
        serde_json::from_str::<Value>(&text).expect_err("beyond serde_json's recursion limit");
    assert!(
        error.to_string().contains("recursion limit exceeded"),
        "{error}"
    );
}

#[test]
fn deepest_json_serde_accepts_evaluates_on_a_small_stack() {
    // serde_json accepts 127 levels; mix arrays and objects on the way down.
    let depth: usize = 127;
    let mut text = String::new();
    for level in 0..depth {
        text.push_str(if level % 2 == 0 { "{\"a\":" } else { "[" });
    }
    text.push_str("\"bottom\"");
    for level in (0..depth).rev() {
        text.push(if level % 2 == 0 { '}' } else { ']' });
    }
    let event: Value = serde_json::from_str(&text).expect("127 levels parse");
    let path = vec!["a"; depth.div_ceil(2)].join(".");
    let long_path = vec!["a"; 5000].join(".");
    let (hit, miss, null) = on_small_stack(move || {
        let hit = Query::parse(&format!("{path}=\"bottom\"")).expect("parses");
        let miss = Query::parse(&format!("{long_path}=\"bottom\"")).expect("parses");
        let null = Query::parse(&format!("{long_path}=null")).expect("parses");
        let _ = hit.explain(&event).to_string();
        (
            hit.matches(&event),
            miss.matches(&event),
            null.matches(&event),
        )
    });
    assert!(hit);
    assert!(!miss);
    assert!(null);
}

#[test]
fn long_path_parses_on_a_small_stack() {
    let text = format!("{}=1", vec!["a"; 8000].join("."));
    assert!(text.len() <= MAX_QUERY_BYTES);
    let printed = on_small_stack(move || {
        Query::parse(&text)
            .map(|q| q.to_string())
            .expect("a long path parses")
    });
    assert!(printed.ends_with("a = 1"));
}
