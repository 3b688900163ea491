"""Hostile peers for the hostile-input suite (test_hostile.py): a raw HTTP client that sends
bytes http.client refuses, a raw TCP webhook receiver whose answers can be broken on purpose,
Envoy's resident memory, and the after-attack health check every hostile test ends with.

Nothing here waits without a bound: every socket has a timeout and every loop a limit."""

from __future__ import annotations

import json
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from harness import Envoy, RecordingServer, free_port, plugin_of, wait_until

# --------------------------------------------------------------------------- measurements

MEASUREMENTS = Path("/tmp/envoy-webhooks-hostile.json")
_measured: dict[str, Any] = {}


def record_measurement(test: str, **numbers: Any) -> None:
    """Prints ``numbers`` (visible with pytest -s) and merges them into MEASUREMENTS under
    ``test``, for the report: the suite asserts generous bounds only, the numbers tell more."""
    _measured.setdefault(test, {}).update(numbers)
    print(f"\n[measure] {test}: {json.dumps(numbers, sort_keys=True)}")
    try:
        existing = json.loads(MEASUREMENTS.read_text()) if MEASUREMENTS.exists() else {}
    except (OSError, ValueError):
        existing = {}
    existing.setdefault(test, {}).update(numbers)
    try:
        MEASUREMENTS.write_text(json.dumps(existing, indent=2, sort_keys=True))
    except OSError:
        pass


# --------------------------------------------------------------------------- raw client


@dataclass
class RawResponse:
    status: int | None  # None: no answer (connection closed or reset first)
    head: bytes
    body: bytes
    elapsed: float


def _read_response(sock: socket.socket, deadline: float) -> tuple[int | None, bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except (socket.timeout, ConnectionResetError):
            chunk = b""
        if not chunk:
            return None, data, b""
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    m = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    status = int(m.group(1)) if m else None
    length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    want = int(length.group(1)) if length else 0
    body = rest
    while len(body) < want and time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except (socket.timeout, ConnectionResetError):
            break
        if not chunk:
            break
        body += chunk
    return status, head, body


def raw_request(port: int, head: bytes, body: bytes = b"", timeout: float = 10.0) -> RawResponse:
    """Sends ``head`` (request line and headers, without the final empty line: it is added,
    as is Content-Length when ``body`` is not empty) and ``body`` as they are, on a new
    connection; reads one answer."""
    started = time.monotonic()
    deadline = started + timeout
    if not head.endswith(b"\r\n"):
        head += b"\r\n"
    if body and b"content-length" not in head.lower():
        head += b"Content-Length: %d\r\n" % len(body)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head + b"\r\n" + body)
        status, rhead, rbody = _read_response(sock, deadline)
    return RawResponse(status, rhead, rbody, time.monotonic() - started)


def reset_socket(sock: socket.socket) -> None:
    """Closes with a TCP RST (SO_LINGER 0) instead of a FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


# --------------------------------------------------------------------------- raw receiver


@dataclass
class RawRequest:
    head: bytes
    body: bytes
    received_at: float = field(default_factory=time.monotonic)

    @property
    def path(self) -> str:
        return self.head.split(b" ", 2)[1].decode("latin-1")

    def header(self, name: str) -> str | None:
        for line in self.head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == name.lower().encode():
                return v.strip().decode("latin-1")
        return None


# A behaviour answers one request on ``conn``; it returns True to keep the connection for
# the next request. ``stop`` is set when the server stops (hanging behaviours end then).
Behaviour = Callable[[socket.socket, RawRequest, threading.Event], bool]


def answer(status: int = 200, body: bytes = b"ok", headers: Iterable[bytes] = ()) -> Behaviour:
    """A well-formed answer; ``headers`` are raw header lines (any bytes)."""

    def run(conn: socket.socket, req: RawRequest, stop: threading.Event) -> bool:
        lines = [b"HTTP/1.1 %d X" % status, b"Content-Length: %d" % len(body), *headers]
        conn.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        return True

    return run


def cut_body(declared: int = 1000, sent: int = 10, status: int = 200, rst: bool = False) -> Behaviour:
    """Headers announcing ``declared`` body bytes, ``sent`` of them, then a close (or an RST)."""

    def run(conn: socket.socket, req: RawRequest, stop: threading.Event) -> bool:
        conn.sendall(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n" % (status, declared) + b"x" * sent)
        time.sleep(0.05)
        if rst:
            reset_socket(conn)
        else:
            conn.shutdown(socket.SHUT_RDWR)
        return False

    return run


def stall_after_headers(status: int = 200, seconds: float = 30.0) -> Behaviour:
    """Headers (Content-Length 100), then nothing until ``seconds`` pass or the server stops."""

    def run(conn: socket.socket, req: RawRequest, stop: threading.Event) -> bool:
        conn.sendall(b"HTTP/1.1 %d X\r\nContent-Length: 100\r\n\r\n" % status)
        stop.wait(seconds)
        return False

    return run


def huge_body(size: int, status: int = 200) -> Behaviour:
    """An answer with a ``size``-byte body, streamed in 1 MiB pieces."""

    def run(conn: socket.socket, req: RawRequest, stop: threading.Event) -> bool:
        conn.sendall(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\nContent-Type: text/plain\r\n\r\n" % (status, size))
        piece = b"z" * (1 << 20)
        left = size
        try:
            while left > 0 and not stop.is_set():
                n = min(left, len(piece))
                conn.sendall(piece[:n])
                left -= n
        except OSError:
            return False
        return True

    return run


def hang(seconds: float = 300.0) -> Behaviour:
    """Reads the request and never answers (until ``seconds`` or the server stops)."""

    def run(conn: socket.socket, req: RawRequest, stop: threading.Event) -> bool:
        stop.wait(seconds)
        return False

    return run


class RawReceiver:
    """A threaded raw TCP HTTP/1.1 receiver on 127.0.0.1: reads each request (Content-Length
    or chunked body), records it, and answers it with the next behaviour of ``script`` (the
    last one repeating), so a receiver can answer garbage, cut a body, stall or hang.
    ``release()`` ends hanging behaviours (their connections close); ``stop()`` also closes
    the listener."""

    def __init__(self, script: list[Behaviour] | Behaviour, name: str = "raw-receiver", port: int | None = None):
        self.name = name
        self.port = port or free_port()
        self.script = list(script) if isinstance(script, list) else [script]
        self.requests: list[RawRequest] = []
        self.connections = 0
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self._release = threading.Event()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []

    def set_script(self, script: list[Behaviour] | Behaviour) -> None:
        with self._lock:
            self.script = list(script) if isinstance(script, list) else [script]

    def _next(self) -> Behaviour:
        with self._lock:
            return self.script.pop(0) if len(self.script) > 1 else self.script[0]

    def start(self) -> "RawReceiver":
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", self.port))
        self._listener.listen(1024)
        self._listener.settimeout(0.2)
        t = threading.Thread(target=self._accept_loop, name=self.name, daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()  # type: ignore[union-attr]
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()

    def _read_request(self, conn: socket.socket, buf: bytes) -> tuple[RawRequest | None, bytes]:
        while b"\r\n\r\n" not in buf:
            chunk = conn.recv(65536)
            if not chunk:
                return None, b""
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        lower = head.lower()
        m = re.search(rb"(?m)^content-length:\s*(\d+)", lower)
        if m:
            want = int(m.group(1))
            while len(rest) < want:
                chunk = conn.recv(1 << 20)
                if not chunk:
                    return None, b""
                rest += chunk
            return RawRequest(head, rest[:want]), rest[want:]
        if b"transfer-encoding: chunked" in lower:
            body = b""
            while True:
                while b"\r\n" not in rest:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return None, b""
                    rest += chunk
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line.split(b";")[0] or b"0", 16)
                while len(rest) < size + 2:
                    chunk = conn.recv(1 << 20)
                    if not chunk:
                        return None, b""
                    rest += chunk
                if size == 0:
                    # no trailers expected: skip to the empty line
                    return RawRequest(head, body), rest[2:]
                body += rest[:size]
                rest = rest[size + 2:]
        return RawRequest(head, b""), rest

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(None)
        buf = b""
        try:
            while not self._stop.is_set():
                req, buf = self._read_request(conn, buf)
                if req is None:
                    return
                with self._lock:
                    self.requests.append(req)
                    self._lock.notify_all()
                behaviour = self._next()
                if not behaviour(conn, req, self._release):
                    return
        except OSError:
            return
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    def wait_for(self, n: int, timeout: float = 10.0) -> list[RawRequest]:
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self.requests) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.name}: expected >= {n} request(s) within {timeout}s, "
                                         f"got {len(self.requests)}")
                self._lock.wait(left)
            return list(self.requests)

    def release(self) -> None:
        """Ends every hanging or stalled answer (their connections close)."""
        self._release.set()

    def stop(self) -> None:
        self._release.set()
        self._stop.set()
        if self._listener is not None:
            try:
                self._listener.close()
            except OSError:
                pass
            self._listener = None


# --------------------------------------------------------------------------- Envoy's memory


def rss_kib(envoy: Envoy) -> int:
    """Envoy's resident memory (VmRSS, KiB) from /proc/<pid>/status."""
    assert envoy.proc is not None
    for line in Path(f"/proc/{envoy.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS line")


class RssSampler:
    """Samples Envoy's VmRSS every ``interval`` seconds in a thread; ``peak`` in KiB."""

    def __init__(self, envoy: Envoy, interval: float = 0.05):
        self.envoy = envoy
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, rss_kib(self.envoy))
                self.samples += 1
            except (OSError, AssertionError):
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(5)


# --------------------------------------------------------------------------- latency probe


class LatencyProbe:
    """Sends ordinary GET requests through Envoy one after another (new connection each, so
    with --concurrency 1 they land on the worker under attack) while an attack runs;
    ``latencies`` in seconds, ``errors`` the failures (status, exception)."""

    def __init__(self, envoy: Envoy, path: str = "/probe/unrelated", interval: float = 0.05, timeout: float = 30.0):
        self.envoy = envoy
        self.path = path
        self.interval = interval
        self.timeout = timeout
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                r = self.envoy.request("GET", self.path, timeout=self.timeout)
                if r.status != 200:
                    self.errors.append(f"status {r.status}")
            except OSError as exc:
                self.errors.append(repr(exc))
            self.latencies.append(time.monotonic() - started)
            self._stop.wait(self.interval)

    @property
    def worst(self) -> float:
        return max(self.latencies, default=0.0)

    def __enter__(self) -> "LatencyProbe":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(self.timeout + 5)


# --------------------------------------------------------------------------- after the attack

# What Envoy prints when the filter's VM breaks: a Rust panic (the SDK logs "panicked at"),
# a Wasm trap ("Uncaught RuntimeError: unreachable", "trap"), a failed callback
# ("Function: proxy_on_... failed"), a VM that could not be created or was lost.
BROKEN_VM = re.compile(
    r"panicked|\btrap\b|RuntimeError|Function: \S+ failed|Wasm VM failed|failed to (create|load|initialize) Wasm"
    r"|wasm.*crash",
    re.IGNORECASE,
)
# Envoy's own lines about a wasm failure (the filter's own lines, "wasm log ...", may say
# FAILED about a webhook's status).
ENVOY_WASM_FAILED = re.compile(r"\bwasm\b.*\bfailed\b", re.IGNORECASE)


def broken_vm_lines(envoy: Envoy) -> list[str]:
    return [line for line in envoy.log_text().splitlines()
            if BROKEN_VM.search(line) or ("wasm log" not in line and ENVOY_WASM_FAILED.search(line))]


def assert_no_broken_vm(envoy: Envoy) -> None:
    lines = broken_vm_lines(envoy)
    assert not lines, "the filter's VM broke:\n" + "\n".join(lines[:20])


def webhook_ids(envoy: Envoy) -> list[str]:
    try:
        return [w["id"] for w in plugin_of(envoy.config)["webhooks"]]
    except (ValueError, KeyError):
        return []


ACCOUNTING = ("matched", "delivered", "failed", "dropped", "withheld", "dead_lettered", "lost")


def accounting(envoy: Envoy, hook_id: str, stats: dict[str, int] | None = None) -> dict[str, int]:
    stats = stats if stats is not None else envoy.stats()
    prefix = f"wasmcustom.envoy_webhooks.webhook_id.{hook_id}."
    return {name: stats.get(prefix + name, 0) for name in ACCOUNTING}


def identities_hold(m: dict[str, int]) -> bool:
    return (m["matched"] == m["delivered"] + m["failed"] + m["dropped"] + m["withheld"]
            and m["failed"] + m["dropped"] == m["dead_lettered"] + m["lost"])


def assert_settled_accounting(envoy: Envoy, ids: list[str] | None = None, timeout: float = 15.0) -> dict[str, dict]:
    """Waits until, for every webhook, matched = delivered + failed + dropped + withheld and
    failed + dropped = dead_lettered + lost hold, twice in a row 0.2 s apart (settled)."""
    ids = ids if ids is not None else webhook_ids(envoy)
    seen: dict[str, Any] = {}

    def check() -> bool:
        first = envoy.stats()
        time.sleep(0.2)
        second = envoy.stats()
        a = {i: accounting(envoy, i, first) for i in ids}
        b = {i: accounting(envoy, i, second) for i in ids}
        seen["m"] = b
        return a == b and all(identities_hold(m) for m in b.values())

    wait_until(check, timeout, 0.1, message=lambda: "the accounting identities to hold for every webhook: "
               + json.dumps({i: m for i, m in (seen.get("m") or {}).items() if not identities_hold(m)}))
    return seen["m"]


def assert_platform_served(envoy: Envoy, upstream: RecordingServer, requests: int = 6, max_requests: int = 40) -> None:
    """Ordinary requests (new connection each) get the upstream's answer, until every worker
    has served at least one of them (at most ``max_requests``) and at least ``requests`` are
    made. A GET and a POST that is not an event (PUT) and an event POST with no webhook."""
    before = envoy.connections_per_worker()
    sent = 0
    kinds = [
        ("GET", "/platform/health", None, {}),
        ("PUT", "/platform/assets/1", b'{"title": "ordinary"}', {"content-type": "application/json"}),
        ("POST", "/platform/ordinary", b'{"event_type": "no-webhook-wants-this"}', {"content-type": "application/json"}),
    ]
    while True:
        method, path, body, headers = kinds[sent % len(kinds)]
        r = envoy.request(method, path, body, headers, timeout=10)
        assert (r.status, r.body) == (200, b"platform-ok"), (
            f"after the attack, {method} {path} got {r.status} {r.body[:200]!r} instead of the upstream's answer")
        sent += 1
        after = envoy.connections_per_worker()
        every_worker = all(a > b for a, b in zip(after, before))
        if sent >= requests and every_worker:
            return
        assert sent < max_requests, f"some worker served none of {sent} requests: {before} -> {after}"


def assert_survived(envoy: Envoy, upstream: RecordingServer, *, ids: list[str] | None = None,
                    settle_timeout: float = 15.0, requests: int = 6) -> dict[str, dict]:
    """The check every hostile test ends with: Envoy runs, the platform's traffic gets the
    upstream's answers on every worker, Envoy's log shows no broken VM, and the accounting
    identities hold for every webhook once settled. Returns the settled metrics."""
    assert envoy.running, f"Envoy exited: {envoy.log_tail()}"
    assert_platform_served(envoy, upstream, requests=requests)
    assert_no_broken_vm(envoy)
    metrics = assert_settled_accounting(envoy, ids, settle_timeout)
    assert_no_broken_vm(envoy)
    return metrics
