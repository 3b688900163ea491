//! Any text as a query: parsing never panics, and what parses prints to a
//! query that parses to the same thing and evaluates without panicking.
#![no_main]

use envoy_webhooks::query::Query;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(query) = Query::parse(text) else {
        return;
    };
    let event = serde_json::json!({
        "event_type": "assets", "realm": "formats", "operation": "update",
        "data": {"status": "ACTIVE", "n": 3, "s": "abc", "list": [1, "2", {"k": null}], "t": true},
    });
    let first = query.evaluate(&event);
    let printed = query.to_string();
    if let Ok(again) = Query::parse(&printed) {
        let second = again.evaluate(&event);
        assert_eq!(first.matched, second.matched, "{text:?} printed as {printed:?}");
    }
});
