//! The filter's one-pass scan, built for wasm32 with `+simd128` as the filter
//! is, against the full parse (`testing::view::compare_with_oracle`) on files
//! in the fuzz target `view`'s format (up to three queries separated by tabs,
//! a newline, the event text); or an event scanned N times, for profiling.
//!
//! ```sh
//! node --no-warnings run.mjs target/wasm32-wasip1/release/wasm-oracle.wasm oracle FILE...
//! node --no-liftoff run.mjs target/wasm32-wasip1/release/wasm-oracle.wasm scan seed|pretty|compact N
//! ```
//! Paths must be absolute (the runner opens `/` to the module).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // A checking tool, not filter code.

use envoy_webhooks::config::PluginConfig;
use envoy_webhooks::event::view::{scan, PathSet, Scan, View};
use envoy_webhooks::matcher::Matcher;
use envoy_webhooks::testing::view::compare_with_oracle;
use serde_json::{json, Value};
use std::hint::black_box;

/// As `fuzz/fuzz_targets/view.rs` does: `Ok(None)` when the input is not one
/// (not UTF-8, or no valid configuration), else the text's validity.
fn oracle(data: &[u8]) -> Result<Option<bool>, String> {
    let Ok(text) = std::str::from_utf8(data) else {
        return Ok(None);
    };
    let (queries, event) = text.split_once('\n').unwrap_or(("", text));
    let mut hooks: Vec<Value> = Vec::new();
    for (i, query) in queries.split('\t').take(3).enumerate() {
        if envoy_webhooks::query::Query::parse(query).is_err() {
            continue;
        }
        hooks.push(json!({"id": format!("t{i}"), "event_type": "assets", "url": "http://r/", "query": query}));
        hooks.push(json!({"id": format!("r{i}"), "event_type": "assets", "realm": "formats",
            "operation": "update", "url": "http://r/", "query": query}));
    }
    let Ok(config) = PluginConfig::from_value(&json!({ "webhooks": hooks })) else {
        return Ok(None);
    };
    let matcher = Matcher::new(config.webhooks);
    let event = event.trim_matches(|c: char| c.is_ascii_whitespace());
    compare_with_oracle(&matcher, event)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("oracle") => {
            let (mut valid, mut invalid, mut other, mut differences) = (0, 0, 0, 0);
            for path in &args[2..] {
                // A fuzzer may remove a corpus file meanwhile.
                let Ok(data) = std::fs::read(path) else { continue };
                match oracle(&data) {
                    Ok(Some(true)) => valid += 1,
                    Ok(Some(false)) => invalid += 1,
                    Ok(None) => other += 1,
                    Err(difference) => {
                        differences += 1;
                        println!("DIFFERENCE {path}: {difference}");
                    }
                }
            }
            println!("{valid} valid, {invalid} invalid, {other} not inputs, {differences} differences");
            if differences > 0 {
                std::process::exit(1);
            }
        }
        Some("scan") => scan_many(&args[2], args[3].parse().expect("N")),
        _ => panic!("usage: oracle FILE... | scan seed|pretty|compact N"),
    }
}

/// The seed's formats event, or it with a `history` of 11 copies of its
/// `data` (about 19 KB pretty-printed, 12 KB compact), scanned `n` times.
fn scan_many(kind: &str, n: usize) {
    let seed = include_str!("../../../tests/fixtures/seed-formats-event.json").trim();
    let mut event: Value = serde_json::from_str(seed).unwrap();
    event["history"] = Value::Array(vec![event["data"].clone(); 11]);
    let text = match kind {
        "seed" => seed.to_string(),
        "pretty" => serde_json::to_string_pretty(&event).unwrap(),
        "compact" => serde_json::to_string(&event).unwrap(),
        _ => panic!("seed, pretty or compact"),
    };
    let mut paths = PathSet::new();
    for path in [
        &["data", "status"][..],
        &["data", "is_online"],
        &["data", "components", "metadata", "format"],
        &["data", "components", "metadata", "width"],
        &["data", "metadata_values", "share", "field_values", "value"],
        &["data", "deleted_by_user"],
    ] {
        paths.add(path);
    }
    let mut view = View::default();
    let events = (0..n)
        .filter(|_| scan(black_box(&text), &paths, &mut view) == Scan::Event)
        .count();
    eprintln!("{} bytes, {events} of {n} scans an event", text.len());
}
