//! Measures the costliest regexes the query limits accept on a large string.
//!
//! `cargo run --release --example regex_cost -- [MIB] [PATTERN...]`: each
//! pattern (default: some of the costliest accepted) is parsed as a query
//! `s=/PATTERN/` and evaluated on strings of MIB mebibytes (default 16) with
//! the evaluation's regex budget; `RAW=1` also times the bare regex without
//! the budget (what evaluation did before the budget); `CHUNK=N` splits the
//! text into an array of N-byte strings.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::as_conversions,
    clippy::cast_possible_truncation
)] // A measuring tool, not filter code.

use std::time::Instant;

use envoy_webhooks::query::Query;
use serde_json::{json, Value};

const DEFAULT_PATTERNS: &[&str] = &[
    "abc",
    "[a-z]{1,100}[0-9]{1,100}x",
    "[a-z]{100}[0-9]{100}[a-z]{100}[0-9]{100}x",
];

fn haystacks(len: usize) -> Vec<(&'static str, String)> {
    let block: String = "a".repeat(100) + &"0".repeat(100);
    let mixed: String = block.chars().cycle().take(len).collect();
    vec![("letters", "a".repeat(len)), ("letters+digits", mixed)]
}

/// `{"s": text}`, or with `CHUNK=n` an array of strings of `n` bytes holding
/// the same text (many short strings spend the budget piece by piece).
fn event_of(text: &str, chunk: Option<usize>) -> Value {
    match chunk {
        None => json!({ "s": text }),
        Some(n) => {
            let pieces: Vec<String> = text
                .as_bytes()
                .chunks(n.max(1))
                .map(|piece| String::from_utf8_lossy(piece).into_owned())
                .collect();
            json!({ "s": pieces })
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mib: f64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(16.0);
    let mut patterns: Vec<String> = args.collect();
    if patterns.is_empty() {
        patterns = DEFAULT_PATTERNS.iter().map(|p| p.to_string()).collect();
    }
    let raw = std::env::var_os("RAW").is_some();
    let chunk: Option<usize> = std::env::var("CHUNK").ok().and_then(|c| c.parse().ok());
    // Whole bytes of a non-negative size: the cast cannot lose anything that matters here.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let len = (mib * 1024.0 * 1024.0) as usize;
    let haystacks = haystacks(len);
    for pattern in &patterns {
        let text = format!("s=/{pattern}/");
        let query = match Query::parse(&text) {
            Ok(query) => query,
            Err(e) => {
                println!("{pattern}: refused: {}", e.message());
                continue;
            }
        };
        println!("{pattern}: cost {}", query.max_regex_cost());
        for (name, haystack) in &haystacks {
            let event = event_of(haystack, chunk);
            let start = Instant::now();
            let evaluation = query.evaluate(&event);
            println!(
                "  {mib} MiB of {name}: {:.3} ms with the budget ({evaluation:?})",
                start.elapsed().as_secs_f64() * 1000.0
            );
            if raw {
                let regex = regex_lite::Regex::new(pattern).expect("accepted above");
                let start = Instant::now();
                let matched = regex.is_match(haystack);
                println!(
                    "  {mib} MiB of {name}: {:.3} ms without (matched: {matched})",
                    start.elapsed().as_secs_f64() * 1000.0
                );
            }
        }
    }
}
