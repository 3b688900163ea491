//! Conformance cases for the query language, read from `tests/conformance/cases.txt`.
//!
//! The file is a sequence of blocks; see the comment at its top for the format.
//! Every case is run and every failure is reported, not only the first.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use envoy_webhooks::query::{Query, MAX_QUERY_BYTES};
use serde_json::Value;

const CASES: &str = "tests/conformance/cases.txt";
const FIXTURES: &str = "tests/fixtures";
/// A guard against cases silently disappearing from the file.
const MIN_CASES: usize = 170;

#[derive(Debug)]
enum Expect {
    Match(bool),
    Error { column: usize, message: String },
}

#[derive(Debug)]
struct Case {
    name: String,
    line: usize,
    query: Option<String>,
    event: Option<String>,
    expect: Option<Expect>,
    check: Option<String>,
}

impl Case {
    fn new(name: &str, line: usize) -> Case {
        Case {
            name: name.to_string(),
            line,
            query: None,
            event: None,
            expect: None,
            check: None,
        }
    }
}

fn manifest_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Parses the case file; format errors are collected in `problems`.
fn read_cases(
    text: &str,
    defines: &mut HashMap<String, Value>,
    problems: &mut Vec<String>,
) -> Vec<Case> {
    let mut cases: Vec<Case> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        if raw.trim().is_empty() || raw.starts_with('#') {
            continue;
        }
        if let Some(name) = raw.strip_prefix("== ") {
            cases.push(Case::new(name.trim(), line));
            continue;
        }
        if let Some(rest) = raw.strip_prefix("define ") {
            let Some((name, json)) = rest.split_once('=') else {
                problems.push(format!("line {line}: expected `define NAME = JSON`"));
                continue;
            };
            match serde_json::from_str::<Value>(json.trim()) {
                Ok(value) => {
                    defines.insert(name.trim().to_string(), value);
                }
                Err(e) => problems.push(format!("line {line}: bad JSON in define: {e}")),
            }
            continue;
        }
        let Some((key, value)) = raw.split_once(':') else {
            problems.push(format!("line {line}: expected `key: value`, got {raw:?}"));
            continue;
        };
        // Exactly one space after the colon is part of the syntax; the rest is the value.
        let value = value.strip_prefix(' ').unwrap_or(value);
        let Some(case) = cases.last_mut() else {
            problems.push(format!("line {line}: `{key}` before the first `== name`"));
            continue;
        };
        let duplicate = match key {
            "query" => case.query.replace(value.to_string()).is_some(),
            "query-json" => match serde_json::from_str::<String>(value) {
                Ok(text) => case.query.replace(text).is_some(),
                Err(e) => {
                    problems.push(format!("line {line}: query-json is not a JSON string: {e}"));
                    false
                }
            },
            "event" => case.event.replace(value.trim().to_string()).is_some(),
            "check" => case.check.replace(value.to_string()).is_some(),
            "expect" => match parse_expect(value) {
                Ok(expect) => case.expect.replace(expect).is_some(),
                Err(e) => {
                    problems.push(format!("line {line}: {e}"));
                    false
                }
            },
            other => {
                problems.push(format!("line {line}: unknown key `{other}`"));
                false
            }
        };
        if duplicate {
            problems.push(format!("line {line}: `{key}` given twice in one case"));
        }
    }
    cases
}

/// `match`, `no match`, or `error at column N: substring`.
fn parse_expect(text: &str) -> Result<Expect, String> {
    match text.trim() {
        "match" => return Ok(Expect::Match(true)),
        "no match" => return Ok(Expect::Match(false)),
        _ => {}
    }
    let rest = text
        .strip_prefix("error at column ")
        .ok_or_else(|| format!("bad expect {text:?}"))?;
    let (column, message) = rest
        .split_once(": ")
        .ok_or_else(|| format!("bad expect {text:?}: expected `error at column N: text`"))?;
    let column = column
        .parse()
        .map_err(|_| format!("bad column in expect {text:?}"))?;
    Ok(Expect::Error {
        column,
        message: message.to_string(),
    })
}

fn resolve_event(
    reference: &str,
    defines: &HashMap<String, Value>,
    fixtures: &mut HashMap<String, Value>,
) -> Result<Value, String> {
    let Some(name) = reference.strip_prefix('@') else {
        return serde_json::from_str(reference).map_err(|e| format!("bad inline event JSON: {e}"));
    };
    if let Some(value) = defines.get(name) {
        return Ok(value.clone());
    }
    if let Some(value) = fixtures.get(name) {
        return Ok(value.clone());
    }
    let path = manifest_path(FIXTURES).join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "no define or fixture named {name} ({}: {e})",
            path.display()
        )
    })?;
    let value: Value =
        serde_json::from_str(&text).map_err(|e| format!("fixture {name} is not JSON: {e}"))?;
    fixtures.insert(name.to_string(), value.clone());
    Ok(value)
}

/// The error display: message, the query, then a caret under the column.
fn check_error_display(query: &str, error: &envoy_webhooks::query::QueryError) -> Option<String> {
    let shown = error.to_string();
    let lines: Vec<&str> = shown.lines().collect();
    if lines.first() != Some(&error.message()) {
        return Some(format!(
            "Display does not start with the message: {shown:?}"
        ));
    }
    // The caret is checked only where the whole query is shown unchanged.
    let plain = query.chars().count() < 60 && !query.chars().any(char::is_control);
    if plain {
        let expected_query = format!("  {query}");
        let expected_caret = format!("  {}^", " ".repeat(error.column() - 1));
        if lines.get(1) != Some(&expected_query.as_str())
            || lines.get(2) != Some(&expected_caret.as_str())
        {
            return Some(format!(
                "Display should show the query and a caret at column {}: {shown:?}",
                error.column()
            ));
        }
    }
    None
}

fn run_case(
    case: &Case,
    defines: &HashMap<String, Value>,
    fixtures: &mut HashMap<String, Value>,
) -> Result<(), String> {
    let query_text = case.query.as_deref().ok_or("no query")?;
    if case.expect.is_none() && case.check.is_none() {
        return Err("neither expect nor check".to_string());
    }
    let parsed = Query::parse(query_text);
    if let Some(Expect::Error { column, message }) = &case.expect {
        return match parsed {
            Ok(query) => Err(format!("expected an error, parsed as `{query}`")),
            Err(error) => {
                let mut problems = String::new();
                if !error.message().contains(message.as_str()) {
                    let _ = write!(problems, "message lacks {message:?}; ");
                }
                if error.column() != *column {
                    let _ = write!(problems, "column {} instead of {column}; ", error.column());
                }
                if let Some(problem) = check_error_display(query_text, &error) {
                    problems.push_str(&problem);
                }
                if problems.is_empty() {
                    Ok(())
                } else {
                    Err(format!("{problems}\n    error was: {}", error.message()))
                }
            }
        };
    }
    let query = parsed.map_err(|e| format!("unexpected parse error: {e}"))?;
    let printed = query.to_string();
    if let Some(check) = &case.check {
        if &printed != check {
            return Err(format!("printed as `{printed}`, expected `{check}`"));
        }
    }
    // The normalised text parses back to the same query.
    let reparsed =
        Query::parse(&printed).map_err(|e| format!("printed form `{printed}` fails: {e}"))?;
    if reparsed != query {
        return Err(format!(
            "printed form `{printed}` parses to a different query"
        ));
    }
    if let Some(Expect::Match(expected)) = &case.expect {
        let reference = case
            .event
            .as_deref()
            .ok_or("`expect: match` needs an event")?;
        let event = resolve_event(reference, defines, fixtures)?;
        let got = query.matches(&event);
        if got != *expected {
            let verdict = |m: bool| if m { "match" } else { "no match" };
            let explanation = query.explain(&event).to_string().replace('\n', "\n      ");
            return Err(format!(
                "expected {}, got {}; query `{printed}`\n      {explanation}",
                verdict(*expected),
                verdict(got),
            ));
        }
        if reparsed.matches(&event) != got {
            return Err("the printed form gives a different result".to_string());
        }
        if query.explain(&event).matched != got {
            return Err("explain disagrees with matches".to_string());
        }
    }
    Ok(())
}

#[test]
fn conformance_cases() {
    let path = manifest_path(CASES);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut defines = HashMap::new();
    let mut fixtures = HashMap::new();
    let mut problems = Vec::new();
    let cases = read_cases(&text, &mut defines, &mut problems);
    let mut names = HashMap::new();
    for case in &cases {
        if let Some(first) = names.insert(case.name.as_str(), case.line) {
            problems.push(format!(
                "line {}: case name {:?} already used at line {first}",
                case.line, case.name
            ));
        }
    }
    let mut failures = Vec::new();
    for case in &cases {
        if let Err(why) = run_case(case, &defines, &mut fixtures) {
            failures.push(format!(
                "- {} (line {}): query {:?}\n    {}",
                case.name,
                case.line,
                case.query.as_deref().unwrap_or(""),
                why
            ));
        }
    }
    let mut report = String::new();
    if !problems.is_empty() {
        let _ = writeln!(report, "{CASES} has format problems:");
        for problem in &problems {
            let _ = writeln!(report, "- {problem}");
        }
    }
    if cases.len() < MIN_CASES {
        let _ = writeln!(
            report,
            "only {} cases in {CASES}; expected at least {MIN_CASES}",
            cases.len()
        );
    }
    if !failures.is_empty() {
        let _ = writeln!(
            report,
            "{} of {} cases failed:",
            failures.len(),
            cases.len()
        );
        for failure in &failures {
            let _ = writeln!(report, "{failure}");
        }
    }
    assert!(report.is_empty(), "\n{report}");
    println!("{} conformance cases passed", cases.len());
}

/// The length limit cannot be written in the case file comfortably.
#[test]
fn query_length_limit() {
    let clause = "a=1 OR ";
    let mut text = clause.repeat(MAX_QUERY_BYTES / clause.len());
    text.push_str("a=1");
    while text.len() < MAX_QUERY_BYTES {
        text.insert(0, ' ');
    }
    assert_eq!(text.len(), MAX_QUERY_BYTES);
    let query = Query::parse(&text).expect("a query of exactly the limit parses");
    assert!(query.matches(&serde_json::json!({"a": 1})));

    text.insert(0, ' ');
    let error = Query::parse(&text).expect_err("one byte over the limit");
    assert!(
        error
            .message()
            .contains("16385 bytes long; the limit is 16384 bytes"),
        "{}",
        error.message()
    );
    assert_eq!(error.column(), MAX_QUERY_BYTES + 1);
    // The caret display stays short for a long query.
    let shown = error.to_string();
    assert!(
        shown.lines().all(|line| line.chars().count() < 200),
        "{shown}"
    );
    assert!(shown.ends_with('^'), "{shown}");
}

/// Columns count characters, not bytes, in a long query too.
#[test]
fn length_limit_counts_bytes_and_columns_count_characters() {
    let text = format!("a=\"{}\"", "é".repeat(MAX_QUERY_BYTES / 2));
    let error = Query::parse(&text).expect_err("over the limit in bytes");
    // Byte 16384 falls inside the é run: 3 ASCII bytes, then 2 bytes per é.
    assert_eq!(error.column(), 3 + (MAX_QUERY_BYTES - 3).div_ceil(2) + 1);
}
