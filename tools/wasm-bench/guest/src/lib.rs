//! The workload of `benches/matching.rs` ("match event (parse included)"): a
//! `Matcher` of N definitions, and one match of the formats event (JSON parsing
//! included) per iteration.
//!
//! Compiled to `wasm32-wasip1` it exports `bench_setup` and `bench_run` for the
//! wasmtime runner; compiled natively the same functions are called directly,
//! so both sides run exactly the same code.
//!
//! `definitions` is a copy of the generator in `benches/matching.rs`; keep the
//! two in step so that these numbers compare with criterion's.

use std::cell::RefCell;
use std::hint::black_box;

use envoy_webhooks::config::PluginConfig;
use envoy_webhooks::events::parse_event;
use envoy_webhooks::matcher::Matcher;
use serde_json::{json, Value};

/// The seed's formats event (about 1.5 KB), the fixture of the criterion benchmark.
pub const EVENT: &[u8] = include_bytes!("../../../../benches/fixtures/formats-event.json");

const SEED_QUERY: &str = r#"data.status="ACTIVE" AND data.is_online=true AND (data.components.metadata.format="AVC" OR data.components.metadata.format="MPEG-4")"#;

/// Queries in the style of the seed document (as in benches/matching.rs).
const QUERIES: [&str; 8] = [
    SEED_QUERY,
    r#"(data.components.metadata.width>=1920 OR data.components.metadata.height>=1920) AND data.components.metadata.duration>60000"#,
    r#"data.deleted_by_user=null"#,
    r#"data.components.metadata.format=/MPEG-[2,4]/"#,
    r#"user_id="9b219676-7567-11e9-806b-62fe166f0ad7""#,
    r#"data.metadata_values.share.field_values.value="true""#,
    r#"data.archive_status!="ARCHIVED" AND data.storage_methods="GCS""#,
    "",
];

/// `count` definitions over a mix of types, realms and operations; about one
/// in ten can fire for the formats event (as in benches/matching.rs).
pub fn definitions(count: usize) -> Vec<Value> {
    let types = ["assets", "collections", "users", "jobs", "storages"];
    let realms = [
        "entity", "metadata", "formats", "files", "contents", "segments", "shares", "acls",
    ];
    let operations = ["create", "delete", "update", "all", "restore"];
    (0..count)
        .map(|i| {
            let (event_type, realm, operation) = if i % 10 == 0 {
                ("assets", "formats", "update")
            } else {
                (
                    types[i % types.len()],
                    realms[(i / 3) % realms.len()],
                    operations[(i / 7) % operations.len()],
                )
            };
            json!({
                "id": format!("hook-{i}"),
                "event_type": event_type,
                "realm": realm,
                "operation": operation,
                "url": format!("http://receiver-{}/hooks/{i}", i % 5),
                "query": QUERIES[i % QUERIES.len()],
            })
        })
        .collect()
}

/// The plugin configuration JSON of `count` definitions.
pub fn config_json(count: usize) -> String {
    json!({ "webhooks": definitions(count) }).to_string()
}

/// Parses a configuration (as the filter does in `on_configure`) and indexes it.
pub fn load(config: &[u8]) -> Option<Matcher> {
    let config = PluginConfig::from_json(config).ok()?;
    Some(Matcher::new(config.webhooks))
}

/// `iterations` matches of the formats event, parse included; returns the
/// number of matches found (so that nothing is optimised away).
pub fn run(matcher: &Matcher, iterations: u32) -> u64 {
    let mut out = Vec::new();
    let mut total = 0u64;
    for _ in 0..iterations {
        out.clear();
        if let Ok(event) = parse_event(black_box(EVENT)) {
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
