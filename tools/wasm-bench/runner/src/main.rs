//! Runs the matching workload compiled to wasm32-wasip1 in wasmtime (Cranelift),
//! runs the same code natively (`wasm-bench-native bench`), and prints ns per
//! match for each definition count with the wasm/native ratio.
//!
//! ```text
//! wasm-bench [--wasm GUEST.wasm] [--native wasm-bench-native] [--counts 10,100,1000]
//!            [--samples 7] [--sample-ms 200] [--json OUT.json]
//! ```
//!
//! Defaults: the guest and the native binary of this workspace's target
//! directory (build them first: see tools/wasm-bench/README.md).
//!
//! The guest also carries the filter's proxy-wasm adapter (the main crate
//! compiles it on wasm32): its host imports are never called here and are
//! defined as traps, as is the rest of WASI but `random_get` (std's hash map
//! seeds), which gets fixed bytes.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use wasmtime::{
    Caller, Config, Engine, Extern, Instance, Linker, Module, OptLevel, Store, TypedFunc,
};

struct Options {
    wasm: PathBuf,
    native: PathBuf,
    counts: Vec<u32>,
    samples: usize,
    sample_ms: u64,
    json: Option<PathBuf>,
}

/// One row: a definition count measured on one side.
#[derive(Debug, Clone, Default)]
struct Measure {
    loaded: u64,
    setup_ns: f64,
    ns_per_match: f64,
    min_ns: f64,
    max_ns: f64,
    matches_per_event: u64,
}

fn main() -> ExitCode {
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wasm-bench: {e}");
            ExitCode::from(2)
        }
    }
}

fn workspace_target() -> PathBuf {
    // runner/ is one level below the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .join("target")
}

fn parse_options() -> Result<Options, String> {
    let target = workspace_target();
    let mut options = Options {
        wasm: target.join("wasm32-wasip1/release/wasm_bench_guest.wasm"),
        native: target.join("release/wasm-bench-native"),
        counts: vec![10, 100, 1000],
        samples: 7,
        sample_ms: 200,
        json: None,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Err("usage: wasm-bench [--wasm GUEST.wasm] [--native wasm-bench-native] [--counts 10,100,1000] [--samples 7] [--sample-ms 200] [--json OUT.json]".into());
        }
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let bad = |_| format!("bad value for {flag}: {value}");
        match flag.as_str() {
            "--wasm" => options.wasm = value.into(),
            "--native" => options.native = value.into(),
            "--counts" => {
                options.counts = value
                    .split(',')
                    .map(|c| c.trim().parse().map_err(bad))
                    .collect::<Result<_, _>>()?
            }
            "--samples" => options.samples = value.parse().map_err(bad)?,
            "--sample-ms" => options.sample_ms = value.parse().map_err(bad)?,
            "--json" => options.json = Some(value.into()),
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(options)
}

fn real_main() -> Result<(), String> {
    let options = parse_options()?;
    let counts: Vec<String> = options.counts.iter().map(u32::to_string).collect();
    let counts = counts.join(",");

    // Native first: the same workload, compiled like the filter but for x86_64.
    let output = Command::new(&options.native)
        .args(["bench", "--counts", &counts])
        .args(["--samples", &options.samples.to_string()])
        .args(["--sample-ms", &options.sample_ms.to_string()])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", options.native.display()))?;
    if !output.status.success() {
        return Err(format!(
            "{} failed: {}",
            options.native.display(),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let native: Vec<Measure> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(parse_measure)
        .collect::<Result<_, _>>()?;

    let (wasm, compile_ms) = run_wasm(&options).map_err(|e| format!("wasm: {e}"))?;

    let wasm_bytes = std::fs::metadata(&options.wasm)
        .map(|m| m.len())
        .unwrap_or(0);
    println!(
        "matching core, wasm32-wasip1 in wasmtime {} (Cranelift, opt speed) vs native x86_64; guest {} bytes, compiled in {compile_ms:.0} ms",
        wasmtime_version(),
        wasm_bytes
    );
    println!("workload: benches/matching.rs \"match event (one-pass scan included)\" (seed formats event, {} bytes)", fixture_len());
    println!();
    println!("| definitions | native ns/match | wasm ns/match | wasm/native | native config load | wasm config load | matches/event |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    for (n, w) in native.iter().zip(&wasm) {
        let ratio = w.ns_per_match / n.ns_per_match;
        println!(
            "| {} | {:.0} | {:.0} | {:.2} | {:.2} ms | {:.2} ms | {} |",
            n.loaded,
            n.ns_per_match,
            w.ns_per_match,
            ratio,
            n.setup_ns / 1e6,
            w.setup_ns / 1e6,
            w.matches_per_event
        );
        if n.matches_per_event != w.matches_per_event {
            return Err(format!(
                "native and wasm disagree: {} vs {} matches per event at {} definitions",
                n.matches_per_event, w.matches_per_event, n.loaded
            ));
        }
        rows.push(format!(
            "{{\"definitions\":{},\"native_ns\":{:.1},\"native_min_ns\":{:.1},\"native_max_ns\":{:.1},\"wasm_ns\":{:.1},\"wasm_min_ns\":{:.1},\"wasm_max_ns\":{:.1},\"ratio\":{:.3},\"native_setup_ms\":{:.3},\"wasm_setup_ms\":{:.3},\"matches_per_event\":{}}}",
            n.loaded, n.ns_per_match, n.min_ns, n.max_ns, w.ns_per_match, w.min_ns, w.max_ns, ratio,
            n.setup_ns / 1e6, w.setup_ns / 1e6, w.matches_per_event
        ));
    }
    if let Some(path) = &options.json {
        let json = format!(
            "{{\"wasmtime\":\"{}\",\"guest_bytes\":{},\"compile_ms\":{:.1},\"fixture_bytes\":{},\"samples\":{},\"sample_ms\":{},\"rows\":[{}]}}\n",
            wasmtime_version(),
            wasm_bytes,
            compile_ms,
            fixture_len(),
            options.samples,
            options.sample_ms,
            rows.join(",")
        );
        std::fs::write(path, json).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

fn fixture_len() -> usize {
    include_bytes!("../../../../tests/fixtures/seed-formats-event.json").len()
}

fn wasmtime_version() -> &'static str {
    // The version this runner was built against (build.rs reads Cargo.lock).
    env!("WASMTIME_VERSION")
}

fn parse_measure(line: &str) -> Result<Measure, String> {
    let mut m = Measure::default();
    for field in line.split_whitespace() {
        let Some((key, value)) = field.split_once('=') else {
            continue;
        };
        let number = || {
            value
                .parse::<f64>()
                .map_err(|_| format!("bad native output: {line}"))
        };
        match key {
            "loaded" => m.loaded = number()? as u64,
            "setup_ns" => m.setup_ns = number()?,
            "ns_per_match" => m.ns_per_match = number()?,
            "min_ns" => m.min_ns = number()?,
            "max_ns" => m.max_ns = number()?,
            "matches_per_event" => m.matches_per_event = number()? as u64,
            _ => {}
        }
    }
    Ok(m)
}

fn run_wasm(options: &Options) -> wasmtime::Result<(Vec<Measure>, f64)> {
    let mut config = Config::new();
    config.cranelift_opt_level(OptLevel::Speed);
    let engine = Engine::new(&config)?;
    let start = Instant::now();
    let module = Module::from_file(&engine, &options.wasm)?;
    let compile_ms = start.elapsed().as_secs_f64() * 1e3;

    let mut linker: Linker<()> = Linker::new(&engine);
    // Rust's std seeds hash maps with WASI's random_get: give it fixed bytes.
    linker.func_wrap(
        "wasi_snapshot_preview1",
        "random_get",
        |mut caller: Caller<'_, ()>, ptr: i32, len: i32| -> i32 {
            let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
                return 8; // EBADF
            };
            let mut state = 0x9E37_79B9_7F4A_7C15u64;
            let bytes: Vec<u8> = (0..len.max(0))
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            match memory.write(&mut caller, ptr as u32 as usize, &bytes) {
                Ok(()) => 0,
                Err(_) => 21, // EFAULT
            }
        },
    )?;
    // The proxy-wasm host functions and the rest of WASI are never called.
    linker.define_unknown_imports_as_traps(&module)?;
    let mut store = Store::new(&engine, ());
    let instance: Instance = linker.instantiate(&mut store, &module)?;
    if let Ok(init) = instance.get_typed_func::<(), ()>(&mut store, "_initialize") {
        init.call(&mut store, ())?;
    }
    let setup: TypedFunc<u32, u32> = instance.get_typed_func(&mut store, "bench_setup")?;
    let run: TypedFunc<u32, u64> = instance.get_typed_func(&mut store, "bench_run")?;

    let mut measures = Vec::new();
    for &count in &options.counts {
        let start = Instant::now();
        let loaded = setup.call(&mut store, count)?;
        let setup_ns = start.elapsed().as_nanos() as f64;
        let matches_per_event = run.call(&mut store, 1)?;
        let probe = 200;
        let start = Instant::now();
        run.call(&mut store, probe)?;
        let per_iter = start.elapsed().as_nanos().max(1) as f64 / probe as f64;
        let iterations = ((options.sample_ms as f64 * 1e6 / per_iter) as u32).max(100);
        run.call(&mut store, iterations)?; // warm-up
        let mut samples = Vec::new();
        for _ in 0..options.samples.max(1) {
            let start = Instant::now();
            std::hint::black_box(run.call(&mut store, iterations)?);
            samples.push(start.elapsed().as_nanos() as f64 / iterations as f64);
        }
        samples.sort_by(f64::total_cmp);
        measures.push(Measure {
            loaded: loaded as u64,
            setup_ns,
            ns_per_match: samples[samples.len() / 2],
            min_ns: samples[0],
            max_ns: samples[samples.len() - 1],
            matches_per_event,
        });
    }
    Ok((measures, compile_ms))
}
