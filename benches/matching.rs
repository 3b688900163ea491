//! Criterion benchmarks of the matching core: parsing queries, evaluating one
//! query, and matching one event (JSON parsing included) against 10, 100 and
//! 1,000 definitions.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use envoy_webhooks::config::PluginConfig;
use envoy_webhooks::events::{parse_event, parse_event_with};
use envoy_webhooks::matcher::Matcher;
use envoy_webhooks::query::Query;
use serde_json::{json, Value};

const EVENT: &[u8] = include_bytes!("fixtures/formats-event.json");

const SEED_QUERY: &str = r#"data.status="ACTIVE" AND data.is_online=true AND (data.components.metadata.format="AVC" OR data.components.metadata.format="MPEG-4")"#;

/// Queries in the style of the seed document.
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
/// in ten can fire for the formats event.
fn definitions(count: usize) -> Vec<Value> {
    let types = ["assets", "collections", "users", "jobs", "storages"];
    let realms = [
        "entity", "metadata", "formats", "files", "contents", "segments", "shares", "acls",
    ];
    let operations = ["create", "delete", "update", "all", "restore"];
    (0..count)
        .map(|i| {
            // Every tenth definition listens to what the formats event is.
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

fn matcher(count: usize) -> Matcher {
    let config = json!({ "webhooks": definitions(count) });
    match PluginConfig::from_value(&config) {
        Ok(config) => Matcher::new(config.webhooks),
        Err(e) => panic!("benchmark configuration is invalid: {e}"),
    }
}

fn bench_parse(c: &mut Criterion) {
    c.bench_function("parse seed query", |b| {
        b.iter(|| Query::parse(black_box(SEED_QUERY)))
    });
}

fn bench_evaluate(c: &mut Criterion) {
    let event: Value = serde_json::from_slice(EVENT).expect("fixture is JSON");
    let query = Query::parse(SEED_QUERY).expect("seed query parses");
    c.bench_function("evaluate seed query on formats event", |b| {
        b.iter(|| query.matches(black_box(&event)))
    });
    c.bench_function("parse formats event", |b| {
        b.iter(|| parse_event(black_box(EVENT)))
    });
}

fn bench_match(c: &mut Criterion) {
    let mut group = c.benchmark_group("match event (parse included)");
    group.throughput(Throughput::Elements(1));
    for count in [10, 100, 1000] {
        let matcher = matcher(count);
        let mut out = Vec::new();
        group.bench_with_input(BenchmarkId::from_parameter(count), &count, |b, _| {
            b.iter(|| {
                out.clear();
                if let Ok(event) = parse_event(black_box(EVENT)) {
                    matcher.matching(&event.value, &mut out);
                }
                out.len()
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("match event (pruned parse included)");
    group.throughput(Throughput::Elements(1));
    for count in [10, 100, 1000] {
        let matcher = matcher(count);
        let fields = matcher.field_tree();
        let mut out = Vec::new();
        group.bench_with_input(BenchmarkId::from_parameter(count), &count, |b, _| {
            b.iter(|| {
                out.clear();
                if let Ok(event) = parse_event_with(black_box(EVENT), Some(&fields)) {
                    matcher.matching(&event.value, &mut out);
                }
                out.len()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_parse, bench_evaluate, bench_match);
criterion_main!(benches);
