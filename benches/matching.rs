//! Criterion benchmarks of the matching core: parsing queries, evaluating one
//! query, and matching one event (JSON parsing included) against 10, 100 and
//! 1,000 definitions (parsed, pruned, or scanned in one pass), and against
//! tenants' definitions: 10 in the event's domain, alone or among 1,000
//! domains' (which should cost the same).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::as_conversions,
    clippy::cast_possible_truncation
)] // Tests may fail loudly.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use envoy_webhooks::config::PluginConfig;
use envoy_webhooks::event::view::{scan, Scan, View, Viewed};
use envoy_webhooks::event::{parse_event, parse_event_with};
use envoy_webhooks::matcher::Matcher;
use envoy_webhooks::query::Query;
use serde_json::{json, Value};

const EVENT: &[u8] = include_bytes!("../tests/fixtures/seed-formats-event.json");

#[path = "support/workload.rs"]
mod workload;

use workload::{definitions, SEED_QUERY};

fn matcher(count: usize) -> Matcher {
    let config = json!({ "webhooks": definitions(count) });
    match PluginConfig::from_value(&config) {
        Ok(config) => Matcher::new(config.webhooks),
        Err(e) => panic!("benchmark configuration is invalid: {e}"),
    }
}

/// The seed events' domain.
const SEED_DOMAIN: &str = "1297c8b6-3563-11e7-adf1-6c4008b85488";

/// `domains` tenants with `per_domain` definitions each (the workload's
/// generator, so each domain's mix is that of `matcher(per_domain)`); the
/// seed event's domain is the middle one.
fn tenants(domains: usize, per_domain: usize) -> Matcher {
    let mut webhooks = Vec::with_capacity(domains * per_domain);
    for domain in 0..domains {
        for mut webhook in definitions(per_domain) {
            // Ids are unique across all definitions.
            webhook["id"] = json!(format!("d{domain}-{}", webhook["id"].as_str().unwrap()));
            webhooks.push(webhook);
        }
    }
    let mut config = match PluginConfig::from_value(&json!({ "webhooks": webhooks })) {
        Ok(config) => config,
        Err(e) => panic!("benchmark configuration is invalid: {e}"),
    };
    for (index, definition) in config.webhooks.iter_mut().enumerate() {
        let domain = index / per_domain;
        definition.system_domain_id = Some(if domain == domains / 2 {
            SEED_DOMAIN.to_string()
        } else {
            format!("{domain:08x}-0000-4000-8000-{domain:012x}")
        });
    }
    Matcher::new(config.webhooks)
}

/// The cases of each "match event" group: configured definitions by count,
/// then tenants' (`domains` in the name).
fn cases() -> Vec<(String, Matcher)> {
    let mut cases: Vec<(String, Matcher)> = [10, 100, 1000]
        .into_iter()
        .map(|count| (count.to_string(), matcher(count)))
        .collect();
    cases.push(("1 domain × 10 webhooks".to_string(), tenants(1, 10)));
    cases.push(("1,000 domains × 10 webhooks".to_string(), tenants(1000, 10)));
    cases
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
    for (name, matcher) in cases() {
        let mut out = Vec::new();
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
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
    for (name, matcher) in cases() {
        let fields = matcher.field_tree();
        let mut out = Vec::new();
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
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

    let mut group = c.benchmark_group("match event (one-pass scan included)");
    group.throughput(Throughput::Elements(1));
    let text = std::str::from_utf8(EVENT).expect("fixture is UTF-8").trim();
    for (name, matcher) in cases() {
        let mut view = View::default();
        let (mut out, mut over_budget) = (Vec::new(), Vec::new());
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                out.clear();
                if scan(black_box(text), matcher.paths(), &mut view) == Scan::Event {
                    let event = Viewed { text, view: &view };
                    matcher.matching_view(&event, &mut out, &mut over_budget);
                }
                out.len()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_parse, bench_evaluate, bench_match);
criterion_main!(benches);
