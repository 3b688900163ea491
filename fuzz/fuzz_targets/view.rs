//! Any event text and any queries: the filter's one-pass scan and its bound
//! queries say exactly what the full parse and `Query::evaluate` (the
//! oracle) say: the same verdict on the text, the same matches, the same
//! regex-budget outcome, the same routing fields.
//!
//! Input: up to three queries separated by tabs, a newline, the event text.
#![no_main]

use envoy_webhooks::config::PluginConfig;
use envoy_webhooks::matcher::Matcher;
use envoy_webhooks::testing::view::compare_with_oracle;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (queries, event) = text.split_once('\n').unwrap_or(("", text));
    let mut hooks: Vec<Value> = Vec::new();
    for (i, query) in queries.split('\t').take(3).enumerate() {
        if envoy_webhooks::query::Query::parse(query).is_err() {
            continue;
        }
        // One routed on type only, one on type, realm and operation.
        hooks.push(json!({"id": format!("t{i}"), "event_type": "assets", "url": "http://r/", "query": query}));
        hooks.push(
            json!({"id": format!("r{i}"), "event_type": "assets", "realm": "formats",
            "operation": "update", "url": "http://r/", "query": query}),
        );
    }
    let Ok(config) = PluginConfig::from_value(&json!({ "webhooks": hooks })) else {
        return;
    };
    let matcher = Matcher::new(config.webhooks);
    let event = event.trim_matches(|c: char| c.is_ascii_whitespace());
    if let Err(difference) = compare_with_oracle(&matcher, event) {
        panic!("{difference}");
    }
});
