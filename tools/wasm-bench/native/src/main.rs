//! The native half of the wasm/native comparison, and an event classifier.
//!
//! ```text
//! wasm-bench-native bench [--counts 10,100,1000] [--samples 7] [--sample-ms 200]
//! wasm-bench-native classify CONFIG.json EVENTS.ndjson
//! wasm-bench-native counts CONFIG.json EVENTS.ndjson
//! ```
//!
//! `bench` runs the guest crate's workload (the very code the wasm guest runs)
//! and prints one line per definition count:
//! `count=N loaded=N setup_ns=.. ns_per_match=.. matches_per_event=..`.
//!
//! `classify` matches every line of EVENTS against CONFIG with the filter's
//! own matcher and prints `{"events":..,"matching_events":..,"deliveries":..}`:
//! how many events match at least one webhook, and how many calls they make.
//! `counts` prints instead how many webhooks each event matches, a line each.

use std::process::ExitCode;
use std::time::Instant;

use envoy_webhooks::config::PluginConfig;
use envoy_webhooks::event::parse_event;
use envoy_webhooks::matcher::Matcher;
use wasm_bench_guest::{bench_run, bench_setup};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("bench") => bench(&args[1..]),
        Some("classify") if args.len() == 3 => classify(&args[1], &args[2], false),
        Some("counts") if args.len() == 3 => classify(&args[1], &args[2], true),
        _ => Err("usage: wasm-bench-native bench [--counts 10,100,1000] [--samples N] [--sample-ms MS]\n       wasm-bench-native classify CONFIG.json EVENTS.ndjson\n       wasm-bench-native counts CONFIG.json EVENTS.ndjson".to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wasm-bench-native: {e}");
            ExitCode::from(2)
        }
    }
}

struct Options {
    counts: Vec<u32>,
    samples: usize,
    sample_ms: u64,
}

fn options(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        counts: vec![10, 100, 1000],
        samples: 7,
        sample_ms: 200,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let bad = |_| format!("bad value for {flag}: {value}");
        match flag.as_str() {
            "--counts" => {
                options.counts = value
                    .split(',')
                    .map(|c| c.trim().parse().map_err(bad))
                    .collect::<Result<_, _>>()?
            }
            "--samples" => options.samples = value.parse().map_err(bad)?,
            "--sample-ms" => options.sample_ms = value.parse().map_err(bad)?,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(options)
}

fn bench(args: &[String]) -> Result<(), String> {
    let options = options(args)?;
    for &count in &options.counts {
        let start = Instant::now();
        let loaded = bench_setup(count);
        let setup_ns = start.elapsed().as_nanos();
        let matches_per_event = bench_run(1);
        // Calibrate: iterations for one sample of about sample_ms.
        let probe = 200;
        let start = Instant::now();
        bench_run(probe);
        let per_iter = start.elapsed().as_nanos().max(1) as f64 / probe as f64;
        let iterations = ((options.sample_ms as f64 * 1e6 / per_iter) as u32).max(100);
        bench_run(iterations); // warm-up
        let mut samples: Vec<f64> = (0..options.samples.max(1))
            .map(|_| {
                let start = Instant::now();
                std::hint::black_box(bench_run(iterations));
                start.elapsed().as_nanos() as f64 / iterations as f64
            })
            .collect();
        samples.sort_by(f64::total_cmp);
        let median = samples[samples.len() / 2];
        println!(
            "count={count} loaded={loaded} setup_ns={setup_ns} ns_per_match={median:.1} min_ns={:.1} max_ns={:.1} matches_per_event={matches_per_event} iterations={iterations}",
            samples[0],
            samples[samples.len() - 1]
        );
    }
    Ok(())
}

/// `counts`: prints, instead of the totals, how many webhooks each event matches (a line each).
fn classify(config_path: &str, events_path: &str, per_event: bool) -> Result<(), String> {
    let config_bytes = std::fs::read(config_path).map_err(|e| format!("{config_path}: {e}"))?;
    let config =
        PluginConfig::from_json(&config_bytes).map_err(|e| format!("{config_path}: {e}"))?;
    let matcher = Matcher::new(config.webhooks);
    let events = std::fs::read(events_path).map_err(|e| format!("{events_path}: {e}"))?;
    let (mut total, mut matching, mut deliveries) = (0u64, 0u64, 0u64);
    let mut out = Vec::new();
    for line in events.split(|&b| b == b'\n') {
        if line.trim_ascii().is_empty() {
            continue;
        }
        let event =
            parse_event(line).map_err(|e| format!("{events_path}: line {}: {e}", total + 1))?;
        total += 1;
        out.clear();
        matcher.matching(&event.value, &mut out);
        if per_event {
            println!("{}", out.len());
        }
        if !out.is_empty() {
            matching += 1;
            deliveries += out.len() as u64;
        }
    }
    if per_event {
        return Ok(());
    }
    println!("{{\"events\":{total},\"matching_events\":{matching},\"deliveries\":{deliveries}}}");
    Ok(())
}
