//! The workload of `benches/matching.rs` ("match event (one-pass scan
//! included)"): a `Matcher` of N definitions, and one match of the formats
//! event per iteration, read as the filter reads it (scanned in one pass).
//!
//! Compiled to `wasm32-wasip1` it exports `bench_setup` and `bench_run` for the
//! wasmtime runner; compiled natively the same functions are called directly,
//! so both sides run exactly the same code.
//!
//! `definitions` is the generator of `benches/support/workload.rs`, shared
//! with criterion's benchmark so that the numbers compare.

use std::cell::RefCell;
use std::hint::black_box;

use envoy_webhooks::config::PluginConfig;
use envoy_webhooks::event::parse_event;
use envoy_webhooks::event::view::{scan, Scan, View, Viewed};
use envoy_webhooks::matcher::Matcher;
use serde_json::json;

/// The seed's formats event (about 1.5 KB), the fixture of the criterion benchmark.
pub const EVENT: &[u8] = include_bytes!("../../../../tests/fixtures/seed-formats-event.json");

#[path = "../../../../benches/support/workload.rs"]
mod workload;

pub use workload::definitions;

/// The plugin configuration JSON of `count` definitions.
pub fn config_json(count: usize) -> String {
    json!({ "webhooks": definitions(count) }).to_string()
}

/// Parses a configuration (as the filter does in `on_configure`) and indexes it.
pub fn load(config: &[u8]) -> Option<Matcher> {
    let config = PluginConfig::from_json(config).ok()?;
    Some(Matcher::new(config.webhooks))
}

/// `iterations` matches of the formats event, reading included (the scan,
/// or the full parse where it is unsure, as in the filter); returns the
/// number of matches found (so that nothing is optimised away).
pub fn run(matcher: &Matcher, iterations: u32) -> u64 {
    let (mut out, mut over_budget) = (Vec::new(), Vec::new());
    let mut view = View::default();
    let mut total = 0u64;
    let text = std::str::from_utf8(EVENT).unwrap_or_default().trim();
    for _ in 0..iterations {
        out.clear();
        let text = black_box(text);
        if scan(text, matcher.paths(), &mut view) == Scan::Event {
            matcher.matching_view(&Viewed { text, view: &view }, &mut out, &mut over_budget);
        } else if let Ok(event) = parse_event(text.as_bytes()) {
            matcher.matching(&event.value, &mut out);
        }
        total += black_box(out.len()) as u64;
    }
    total
}

thread_local! {
    static MATCHER: RefCell<Option<Matcher>> = const { RefCell::new(None) };
}

/// Builds the configuration of `count` definitions, parses it and indexes it;
/// returns the number of definitions loaded (0 on failure).
#[no_mangle]
pub extern "C" fn bench_setup(count: u32) -> u32 {
    let config = config_json(count as usize);
    let matcher = load(config.as_bytes());
    let loaded = matcher.as_ref().map_or(0, |m| m.definitions().len() as u32);
    MATCHER.with(|slot| *slot.borrow_mut() = matcher);
    loaded
}

/// Runs `iterations` matches against the matcher of the last `bench_setup`.
#[no_mangle]
pub extern "C" fn bench_run(iterations: u32) -> u64 {
    MATCHER.with(|slot| match slot.borrow().as_ref() {
        Some(matcher) => run(matcher, iterations),
        None => u64::MAX,
    })
}
