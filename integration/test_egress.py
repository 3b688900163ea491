"""The egress check of envoy/dynamic-forward-proxy.yaml (issue 32): calls through the clusters
webhooks_egress_http(s) go into Envoy internal listeners that resolve the URL's host, check the
address Envoy will connect to (RBAC on the upstream address; on Envoy 1.39+ also the DNS cache's
resolved_address_filter), and refuse internal ones. Names are served by a dnsmasq of the test's
own (Envoy's c-ares pointed at it); receivers listen on loopback addresses other than 127.0.0.1
and on 10.203.0.1 (added to `lo` for the module, removed after). A "probe" listener of the test's
own routes plain HTTP requests into the same clusters, to see Envoy's answers (status, body) as
the filter gets them.

Every case: an internal receiver records no request; the allowed receiver (127.0.0.3:PORT, an
operator exception, the only address RBAC lets through in a test) gets its deliveries."""

from __future__ import annotations

import ipaddress
import http.client
import json
import os
import random
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import time
from pathlib import Path

import pytest
import trustme

from harness import (
    Envoy,
    RecordingServer,
    http_request,
    envoy_version,
    free_port,
    load_shipped_config,
    plugin_config,
    retarget,
    served_route,
    static_cluster,
    wait_until,
    walk,
)
from test_cluster_state import etcd_envoy_cluster
from test_envoy_configs import DEMO_PORTS

STRING_VALUE = "type.googleapis.com/google.protobuf.StringValue"
UPSTREAM_IP_PORT = "type.googleapis.com/envoy.extensions.rbac.matchers.upstream_ip_port.v3.UpstreamIpPortMatcher"
REFUSED_INTERNAL = "envoy-webhooks egress refused: the receiver's address is internal"
REFUSED_NO_ADDRESS = "envoy-webhooks egress refused: the receiver's name resolves to no address that may be called"
HIDDEN_ADDRESS = "10.203.0.1"  # added to `lo` for the module

HAS_ADDRESS_FILTER = envoy_version() >= (1, 39)


def egress_policy(cli: Path, allow: list[str], dnsmasq: bool = False) -> dict | str:
    """What `envoy-webhooks egress-policy` prints for exceptions ``allow`` (api.urls.allow): the
    RBAC rules and resolved_address_filter, or with ``dnsmasq`` the dnsmasq configuration."""
    plugin = {"api": {"tokens": {}, "clusters": {"http": "webhooks_egress_http", "https": "webhooks_egress_https"},
                      "urls": {"allow_http": True, "allow": allow}},
              "cluster_state": {"etcd": {"cluster": "etcd", "authority": "etcd:2379"}}}
    run = subprocess.run([str(cli), "egress-policy", *(["--dnsmasq"] if dnsmasq else []), "-"],
                         input=json.dumps(plugin), capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    if dnsmasq:
        return run.stdout
    return json.loads(run.stdout)


# --------------------------------------------------------------------------- DNS

def dns_query(port: int, name: str, qtype: int) -> list[str]:
    """The A (1) or AAAA (28) addresses 127.0.0.1:port answers for ``name``, in its order."""
    qid = random.randrange(65536)
    question = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    packet = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + question + struct.pack(">HH", qtype, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1)
        s.sendto(packet, ("127.0.0.1", port))
        data = s.recv(4096)
    _, _, _, ancount, _, _ = struct.unpack(">HHHHHH", data[:12])
    pos = 12 + len(question) + 4
    out = []
    for _ in range(ancount):
        if data[pos] & 0xC0 == 0xC0:
            pos += 2
        else:
            while data[pos]:
                pos += data[pos] + 1
            pos += 1
        rtype, _, _, length = struct.unpack(">HHIH", data[pos:pos + 10])
        rdata = data[pos + 10:pos + 10 + length]
        pos += 10 + length
        if rtype == qtype:
            out.append(str(ipaddress.ip_address(rdata)))
    return out


def free_udp_and_tcp_port() -> int:
    while True:
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue


class Dnsmasq:
    """Debian's dnsmasq on 127.0.0.1:<free port>, answering for the names of its hosts file
    only (``set`` rewrites the file and reloads it with SIGHUP); TTL 1 s."""

    def __init__(self, workdir: Path, name: str = "dnsmasq", forward_to: int | None = None,
                 conf_file: Path | None = None):
        """With ``forward_to``: a dnsmasq in front of the one on that port, reading ``conf_file``
        too (`envoy-webhooks egress-policy --dnsmasq`: its --bogus-nxdomain options answer
        NXDOMAIN for every name whose answer holds an internal address; forwarded answers only)."""
        self.binary = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
        self.hosts = workdir / f"{name}-hosts"
        self.hosts.write_text("")
        self.port = free_udp_and_tcp_port()
        self.log = workdir / f"{name}.log"
        # The one with the names answers for *.test itself (NXDOMAIN for the others); the one in
        # front forwards every query, and must not (it would answer NXDOMAIN for all of them).
        self.extra = ([f"--server=127.0.0.1#{forward_to}", "--no-negcache"] if forward_to else ["--local=/test/"]) + (
            [f"--conf-file={conf_file}"] if conf_file else [])
        self.records: dict[str, list[str]] = {}
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Dnsmasq":
        if not os.path.exists(self.binary):
            pytest.fail("dnsmasq is missing (Debian: apt-get install dnsmasq-base; integration/setup.sh does it)",
                        pytrace=False)
        self.proc = subprocess.Popen(
            [self.binary, "--keep-in-foreground", "--port", str(self.port), "--listen-address", "127.0.0.1",
             "--bind-interfaces", "--no-resolv", "--no-hosts", "--addn-hosts", str(self.hosts), "--local-ttl", "1",
             "--conf-file=/dev/null", "--pid-file=", "--user=root", "--log-queries",
             "--log-facility", str(self.log), *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_until(lambda: self._answers_match(), timeout=10, message="dnsmasq to answer")
        return self

    def _answers_match(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"dnsmasq exited: {self.log.read_text() if self.log.exists() else ''}")
        for name, addresses in self.records.items():
            got = dns_query(self.port, name, 1) + dns_query(self.port, name, 28)
            if sorted(got) != sorted(str(ipaddress.ip_address(a)) for a in addresses):
                return False
        dns_query(self.port, "nothing.test", 1)  # answers at all
        return True

    def set(self, name: str, *addresses: str) -> None:
        """``name`` resolves to ``addresses`` (in this order in the hosts file); waits until
        dnsmasq answers so."""
        self.records[name] = list(addresses)
        self.hosts.write_text("".join(f"{a} {n}\n" for n, addrs in self.records.items() for a in addrs))
        self.proc.send_signal(signal.SIGHUP)
        wait_until(self._answers_match, timeout=10, message=f"dnsmasq to answer {name} -> {addresses}")

    def queries(self, name: str) -> int:
        """How many A queries for ``name`` it has logged."""
        return self.log.read_text().count(f"query[A] {name} from ")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


# --------------------------------------------------------------------------- the world

def ip_addr(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "addr", *args], capture_output=True, text=True)


def pick_port(hosts: list[str], count: int = 2) -> int:
    """A port P with P .. P+count-1 free on every address of ``hosts`` (the port range's end is
    tested at P+1)."""
    for _ in range(200):
        port = free_port()
        try:
            for host in hosts:
                for p in range(port, port + count):
                    family = socket.AF_INET6 if ":" in host else socket.AF_INET
                    with socket.socket(family, socket.SOCK_STREAM) as s:
                        s.bind((host, p))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair")


class World:
    pass


@pytest.fixture(scope="module")
def world(tmp_path_factory, module_launcher, envoy_bin, wasm, cli):
    w = World()
    tmp = tmp_path_factory.mktemp("egress")
    added = ip_addr("add", f"{HIDDEN_ADDRESS}/32", "dev", "lo")
    if added.returncode != 0 and "File exists" not in added.stderr:
        pytest.fail(f"cannot add {HIDDEN_ADDRESS} to lo (root needed): {added.stderr}", pytrace=False)
    servers: list[RecordingServer] = []
    dns = Dnsmasq(tmp).start()
    try:
        w.dns = dns
        w.port = port = pick_port(["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", HIDDEN_ADDRESS, "::1"])

        def server(name: str, host: str, p: int = port, **kw) -> RecordingServer:
            s = RecordingServer(name, port=p, host=host, **kw).start()
            servers.append(s)
            return s

        # Internal receivers, all on the allowed receiver's port: only the address differs.
        w.internal = {
            "127.0.0.2": server("internal-127.0.0.2", "127.0.0.2"),
            HIDDEN_ADDRESS: server(f"internal-{HIDDEN_ADDRESS}", HIDDEN_ADDRESS),
            "::1": server("internal-::1", "::1"),
            "127.0.0.4": server("internal-127.0.0.4", "127.0.0.4"),  # other address, the exception's port
            "127.0.0.3:P+1": server("internal-127.0.0.3-next-port", "127.0.0.3", port + 1),  # other port
        }
        w.allowed = server("allowed", "127.0.0.3")
        w.allowed.set_reply("/hooks/own403", status=403, body=b"the receiver's own refusal")
        ca = trustme.CA()
        cert = ca.issue_cert("tls-allowed.test", "lo2.test")
        (tmp / "cert.pem").write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
        (tmp / "key.pem").write_bytes(cert.private_key_pem.bytes())
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
        w.tls_port = tls_port = pick_port(["127.0.0.3", "127.0.0.2"], 1)
        w.allowed_tls = server("allowed-tls", "127.0.0.3", tls_port, tls=ctx)
        ctx2 = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx2.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
        w.internal["127.0.0.2-tls"] = server("internal-127.0.0.2-tls", "127.0.0.2", tls_port, tls=ctx2)
        ca_file = tmp / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))

        for name, addresses in {
            "allowed.test": ["127.0.0.3"], "tls-allowed.test": ["127.0.0.3"], "lo2.test": ["127.0.0.2"],
            "hidden.test": [HIDDEN_ADDRESS], "v6.test": ["::1"], "mapped.test": ["::ffff:127.0.0.2"],
            "other.test": ["127.0.0.4"], "rebind.test": ["127.0.0.3"],
            # two addresses: an exception where nothing listens (connect refused), an internal one
            "multi-ab.test": ["127.0.0.5", "127.0.0.2"], "multi-ba.test": ["127.0.0.2", "127.0.0.5"],
        }.items():
            dns.set(name, *addresses)

        # The operator's exceptions: the allowed receiver (http and https), and an address where
        # nothing listens (the multi-address cases' "public" first address).
        exceptions = [f"127.0.0.3:{port}", f"127.0.0.3:{tls_port}", f"127.0.0.5:{port}"]
        policy = egress_policy(cli, exceptions)
        w.hooks = hooks = {
            "lo2": f"http://lo2.test:{port}/hooks/lo2",
            "hidden": f"http://hidden.test:{port}/hooks/hidden",
            "v6": f"http://v6.test:{port}/hooks/v6",
            "mapped": f"http://mapped.test:{port}/hooks/mapped",
            "literal": f"http://127.0.0.2:{port}/hooks/literal",
            "allowed": f"http://allowed.test:{port}/hooks/allowed",
            "next-port": f"http://allowed.test:{port + 1}/hooks/next-port",
            "other-address": f"http://other.test:{port}/hooks/other-address",
            "own403": f"http://allowed.test:{port}/hooks/own403",
            "https-internal": f"https://lo2.test:{tls_port}/hooks/https-internal",
            "https-allowed": f"https://tls-allowed.test:{tls_port}/hooks/https-allowed",
            "rebind": f"http://rebind.test:{port}/hooks/rebind",
            "multi-ab": f"http://multi-ab.test:{port}/hooks/multi-ab",
            "multi-ba": f"http://multi-ba.test:{port}/hooks/multi-ba",
            "headers-egress": f"http://allowed.test:{port}/hooks/headers-egress",
        }
        webhooks = [{"id": hook_id, "event_type": "assets", "realm": hook_id, "url": url,
                     "cluster": "webhooks_egress_https" if url.startswith("https") else "webhooks_egress_http"}
                    for hook_id, url in hooks.items()]
        # The same receiver called directly (a static cluster), for the headers' comparison.
        webhooks.append({"id": "headers-direct", "event_type": "assets", "realm": "headers-direct",
                         "url": f"http://allowed.test:{port}/hooks/headers-direct", "cluster": "direct_allowed"})

        w.upstream = server("platform", "127.0.0.1", free_port())
        w.exceptions = exceptions

        def make_envoy(dns_port: int, api: dict | None = None, extra_clusters: tuple = ()):
            """An Envoy of envoy/dynamic-forward-proxy.yaml, its egress DNS caches asking
            127.0.0.1:dns_port; with ``api``, it serves the tenant API (``api`` holds its
            cluster_state too); returns it and its probe listener's port."""
            config = load_shipped_config("dynamic-forward-proxy.yaml")
            plugin = plugin_config([] if api else webhooks, delivery={
                "clusters": {"http": "dynamic_forward_proxy_cluster", "https": "dynamic_forward_proxy_cluster_https"},
                "failure_threshold": 2 if api else 1000, "failing_window_s": 3600, "timeout_ms": 5000},
                **(api or {}))
            resolver = {"name": "envoy.network.dns_resolver.cares", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig",
                "resolvers": [{"socket_address": {"address": "127.0.0.1", "port_value": dns_port}}],
                "dns_resolver_options": {"no_default_search_domain": True}}}

            def fix(d: dict) -> None:
                if d.get("@type") == STRING_VALUE:
                    d["value"] = json.dumps(plugin)
                if str(d.get("name", "")).startswith("webhooks_egress_dns"):  # the egress DNS caches
                    d.update(typed_dns_resolver_config=resolver, dns_refresh_rate="1s", dns_min_refresh_rate="1s",
                             host_ttl="5s",
                             dns_lookup_family="ALL")
                    if "resolved_address_filter" in d:
                        d["resolved_address_filter"] = policy["resolved_address_filter"]
                if d.get("name") == "envoy.filters.http.rbac":
                    d["typed_config"] = policy["rbac"]
                if api and d.get("name") == "platform" and "routes" in d:  # the API's route, before the rest
                    d["routes"].insert(0, served_route("/API/notifications/"))
                if "trusted_ca" in d:
                    d["trusted_ca"] = {"filename": str(ca_file)}

            walk(config, fix)  # (load_shipped_config has removed resolved_address_filter for Envoy 1.36)
            ports = dict(zip(DEMO_PORTS, (free_port(), w.upstream.port, free_port(), free_port())))
            config = retarget(config, ports)
            resources = config["static_resources"]
            resources["clusters"].append(static_cluster("direct_allowed", port))
            resources["clusters"][-1]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
                "socket_address"]["address"] = "127.0.0.3"
            resources["clusters"].extend(extra_clusters)
            probe_port = free_port()
            resources["listeners"].append(probe_listener(probe_port))
            envoy = module_launcher(None, upstream=w.upstream, config=config)
            return envoy, probe_port

        w.make_envoy = make_envoy
        w.envoy, w.probe_port = make_envoy(dns.port)
        w.realm_events = 0
        yield w
    finally:
        for s in servers:
            s.stop()
        dns.stop()
        ip_addr("del", f"{HIDDEN_ADDRESS}/32", "dev", "lo")


def probe_listener(port: int) -> dict:
    """A listener of the test's own: a request with ``x-egress: https`` goes to cluster
    webhooks_egress_https, any other to webhooks_egress_http, its Host header kept."""
    def route(cluster: str, https: bool) -> dict:
        match: dict = {"prefix": "/"}
        if https:
            match["headers"] = [{"name": "x-egress", "string_match": {"exact": "https"}}]
        return {"match": match, "route": {"cluster": cluster, "timeout": "10s"}}

    return {"name": "egress_probe",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
                         ".HttpConnectionManager",
                "stat_prefix": "egress_probe",
                "route_config": {"virtual_hosts": [{"name": "probe", "domains": ["*"], "routes": [
                    route("webhooks_egress_https", True), route("webhooks_egress_http", False)]}]},
                "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]}


def probe(w: World, authority: str, path: str = "/probe", https: bool = False,
          port: int | None = None) -> tuple[int, bytes]:
    """Envoy's answer to a request for ``authority`` through the egress cluster (of the probe
    listener on ``port``, the module's Envoy's by default)."""
    conn = http.client.HTTPConnection("127.0.0.1", port or w.probe_port, timeout=15)
    try:
        conn.request("GET", path, headers={"Host": authority, **({"x-egress": "https"} if https else {})})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def deliver(w: World, hook_id: str, envoy: Envoy | None = None) -> dict:
    """Posts one event for ``hook_id`` (its realm) to ``envoy`` (the module's by default) and
    waits until its attempt has ended; returns the webhook's status entry."""
    envoy = envoy or w.envoy
    before = envoy.hook_status(hook_id)
    done = before["delivered"] + before["failed"]
    w.realm_events += 1
    event = {"event_type": "assets", "realm": hook_id, "operation": "update", "object_id": f"o{w.realm_events}",
             "request_id": f"r{w.realm_events}", "data": {}}
    assert envoy.post_event(event).status == 200
    return wait_until(lambda: (e := envoy.hook_status(hook_id))["delivered"] + e["failed"] > done and e,
                      timeout=15, message=f"{hook_id}: the attempt to end")


def nothing_internal(w: World) -> None:
    reached = {name: [r.path for r in s.requests()] for name, s in w.internal.items() if s.requests()}
    assert not reached, f"internal receivers reached: {reached}"


def expected_refusal() -> tuple[int, bytes]:
    """What Envoy answers for a name with internal addresses only: on 1.40 the DNS cache drops
    them (no address: 503, DF); on 1.36 RBAC refuses the first (403)."""
    if HAS_ADDRESS_FILTER:
        return 503, REFUSED_NO_ADDRESS.encode()
    return 403, REFUSED_INTERNAL.encode()


def assert_refused(entry: dict, status: int) -> None:
    """The attempt failed with Envoy's egress refusal for ``status`` (403: an internal address;
    503: no address that may be called), as the filter words it in last_error."""
    assert entry["failed"] >= 1 and entry["delivered"] == 0, entry
    body = REFUSED_INTERNAL if status == 403 else REFUSED_NO_ADDRESS
    reason = body.removeprefix("envoy-webhooks egress refused: ")
    assert entry["last_error"] == f"refused by Envoy's egress check, the receiver was not called: {reason}", entry


# --------------------------------------------------------------------------- cases

@pytest.mark.parametrize("hook_id,authority", [
    ("lo2", "lo2.test"), ("hidden", "hidden.test"), ("v6", "v6.test"), ("mapped", "mapped.test"),
])
def test_a_name_of_an_internal_address_is_refused(world, hook_id, authority):
    status, body = probe(world, f"{authority}:{world.port}")
    print(f"{hook_id}: probe -> {status} {body!r}")
    assert (status, body) == expected_refusal()
    assert_refused(deliver(world, hook_id), expected_refusal()[0])
    nothing_internal(world)


def test_an_internal_ip_literal_is_refused(world):
    """No DNS: RBAC refuses (on 1.40 as well, or the DNS cache's filter does: whichever, it is said)."""
    status, body = probe(world, f"127.0.0.2:{world.port}")
    print(f"literal: probe -> {status} {body!r}")
    assert (status, body) in ((403, REFUSED_INTERNAL.encode()), (503, REFUSED_NO_ADDRESS.encode()))
    assert_refused(deliver(world, "literal"), status)
    nothing_internal(world)


def test_the_operator_exception_is_delivered(world):
    e = deliver(world, "allowed")
    assert e["delivered"] >= 1 and e["status"] == "ENABLED", e
    assert world.allowed.requests("/hooks/allowed")
    assert probe(world, f"allowed.test:{world.port}", "/probe-allowed")[0] == 200
    nothing_internal(world)


def test_the_exception_is_its_port_only_the_range_end_is_inclusive(world):
    """upstream_port_range {start: P, end: P} lets P through (so its end is inclusive, although
    Int64Range is documented half-open) and refuses P+1; the exception's port on another address
    is refused."""
    assert probe(world, f"allowed.test:{world.port}", "/probe-port")[0] == 200  # end inclusive
    status, body = probe(world, f"allowed.test:{world.port + 1}")
    print(f"next port: probe -> {status} {body!r}")
    assert (status, body) == (403, REFUSED_INTERNAL.encode())
    assert_refused(deliver(world, "next-port"), 403)
    status, body = probe(world, f"other.test:{world.port}")
    print(f"other address: probe -> {status} {body!r}")
    assert (status, body) == expected_refusal()
    assert_refused(deliver(world, "other-address"), expected_refusal()[0])
    nothing_internal(world)


def test_the_receivers_own_403_passes_unchanged(world):
    status, body = probe(world, f"allowed.test:{world.port}", "/hooks/own403")
    assert (status, body) == (403, b"the receiver's own refusal")
    e = deliver(world, "own403")
    assert e["last_error"] == "HTTP 403", e
    assert world.allowed.requests("/hooks/own403")
    nothing_internal(world)


def test_https_through_the_egress_cluster(world):
    """https:// via webhooks_egress_https: an internal name is refused (before any handshake),
    the exception is delivered over TLS (SNI and certificate from the URL's host)."""
    status, body = probe(world, f"lo2.test:{world.tls_port}", https=True)
    print(f"https internal: probe -> {status} {body!r}")
    assert (status, body) == expected_refusal()
    assert_refused(deliver(world, "https-internal"), expected_refusal()[0])
    e = deliver(world, "https-allowed")
    assert e["delivered"] == 1, e
    assert world.allowed_tls.requests("/hooks/https-allowed")
    assert "tls-allowed.test" in world.allowed_tls.server_names
    assert not world.internal["127.0.0.2-tls"].handshake_errors
    nothing_internal(world)


def test_the_hop_adds_no_headers(world):
    """The receiver gets the same headers through the egress check as called directly, none
    added by the hop (no x-request-id, x-envoy-*, x-forwarded-*)."""
    assert deliver(world, "headers-direct")["delivered"] == 1
    assert deliver(world, "headers-egress")["delivered"] == 1
    (direct,) = world.allowed.requests("/hooks/headers-direct")
    (egress,) = world.allowed.requests("/hooks/headers-egress")
    print("direct:", direct.headers, "\negress:", egress.headers)
    added = [h for h in egress.headers if h == "x-request-id" or h.startswith(("x-envoy-", "x-forwarded-"))]
    assert not added, added
    only_direct = sorted(set(direct.headers) - set(egress.headers))
    print("only in the direct call:", only_direct)
    assert set(egress.headers) <= set(direct.headers)
    # The hop's HCM drops the x-envoy-* headers Envoy's async client adds to a call (it cleans
    # them from every request it takes as external).
    assert all(h.startswith("x-envoy-") for h in only_direct), only_direct
    same = {h for h in egress.headers if direct.headers[h] == egress.headers[h]}
    assert "host" in same and "content-type" in same
    nothing_internal(world)


def first_address(w: World, hostname: str) -> str | None:
    """The address the egress DNS cache put first for ``hostname`` (the one RBAC checks), as
    the dynamic forward proxy cluster shows its host in /clusters."""
    clusters = json.loads(w.envoy.admin("/clusters?format=json").body)
    for cluster in clusters.get("cluster_statuses", []):
        if cluster["name"] != "egress_forward_proxy_http":
            continue
        for host in cluster.get("host_statuses", []):
            if host.get("hostname") == hostname:
                return host["address"]["socket_address"]["address"]
    return None


@pytest.mark.parametrize("hook_id", ["multi-ab", "multi-ba"])
def test_multi_address_hole_without_address_filter(world, hook_id):
    """A name with two addresses: 127.0.0.5 (an exception, RBAC lets it through, nothing
    listens: connect refused) and 127.0.0.2 (internal, a receiver listens), in both orders
    (two names; the resolver may reorder either). Envoy 1.40: the DNS cache drops 127.0.0.2,
    so whatever the order the call goes to 127.0.0.5 only and is not reached. Envoy 1.36
    (no resolved_address_filter): RBAC checks the first address only; when it is 127.0.0.5,
    happy eyeballs, refused there, connects to 127.0.0.2 and the internal receiver IS reached:
    the documented limitation of 1.36. When 127.0.0.2 comes first, RBAC refuses (403)."""
    authority = f"{hook_id}.test:{world.port}"
    e = deliver(world, hook_id)
    first = first_address(world, authority)
    receiver = world.internal["127.0.0.2"]
    reached = receiver.requests(f"/hooks/{hook_id}")
    print(f"{hook_id}: first address {first}; last_error {e['last_error']!r}; internal receiver reached: "
          f"{len(reached)}")
    if HAS_ADDRESS_FILTER:
        assert first == "127.0.0.5", first
        assert e["delivered"] == 0 and "not reached" in e["last_error"], e
        assert not reached
    elif first == "127.0.0.5":
        assert e["delivered"] == 1 and reached, (e, "the hole of 1.36 (no resolved_address_filter)")
    else:
        assert first == "127.0.0.2", first
        assert_refused(e, 403)
        assert not reached
    for name, s in world.internal.items():
        if name != "127.0.0.2":
            assert not s.requests(), name
    assert not [r for r in receiver.requests() if r.path != "/hooks/multi-ab" and r.path != "/hooks/multi-ba"]
    if not HAS_ADDRESS_FILTER:
        receiver.clear()  # what 1.36 let through here is this test's finding, not another's failure


def dns_stat(w: World, name: str) -> int:
    """A counter of the egress http DNS cache (all its hosts together)."""
    return w.envoy.stat(f"dns_cache.webhooks_egress_dns.{name}")


def test_rebinding_to_an_internal_address_is_refused(world):
    """rebind.test resolves to the exception (delivered), then only to 127.0.0.2. Once Envoy's
    DNS cache has asked again (refresh 1 s): on Envoy 1.40 resolved_address_filter drops the new
    answer, and the cache KEEPS the address it had (an answer with no address is a failed
    resolution): deliveries still go to the exception, never to 127.0.0.2. On Envoy 1.36 the
    cache takes 127.0.0.2, and RBAC refuses it (403). Either way the internal receiver gets none."""
    world.dns.set("rebind.test", "127.0.0.3")
    assert deliver(world, "rebind")["delivered"] >= 1
    delivered_before = len(world.allowed.requests("/hooks/rebind"))
    t0 = time.monotonic()
    world.dns.set("rebind.test", "127.0.0.2")
    # Envoy's DNS cache asks again only once it has handled the previous answer: a second query
    # after the change means the first answer with 127.0.0.2 has been taken in (or dropped).
    queries = world.dns.queries("rebind.test")
    wait_until(lambda: world.dns.queries("rebind.test") >= queries + 2, timeout=10,
               message="Envoy's DNS cache to ask for rebind.test twice after the change")
    print(f"rebind: the DNS cache had the new answer {time.monotonic() - t0:.1f}s after dnsmasq")
    e = deliver(world, "rebind")
    print(f"rebind: after the change: delivered {e['delivered']}, failed {e['failed']}, last_error {e['last_error']!r}")
    if HAS_ADDRESS_FILTER:
        assert e["failed"] == 0 and len(world.allowed.requests("/hooks/rebind")) == delivered_before + 1, e
        assert first_address(world, f"rebind.test:{world.port}") == "127.0.0.3"
    else:
        assert_refused(dict(e, delivered=0), 403)
        assert len(world.allowed.requests("/hooks/rebind")) == delivered_before
        status, body = probe(world, f"rebind.test:{world.port}")
        assert (status, body) == (403, REFUSED_INTERNAL.encode())
    nothing_internal(world)


@pytest.mark.parametrize("hook_id", ["multi-ab", "multi-ba"])
def test_a_bogus_nxdomain_resolver_in_front_closes_the_multi_address_hole(world, tmp_path, hook_id, cli):
    """What closes the hole on Envoy 1.36 too: the egress DNS caches ask a dnsmasq that forwards
    to the real resolver with one --bogus-nxdomain per internal range (the exceptions carved out,
    as resolved_address_filter's): an answer holding ANY internal address becomes NXDOMAIN, so a
    name with a public and an internal address is refused whole (503, no address), on either
    version, whatever the order; a name of the exception's address still works."""
    conf = tmp_path / "egress-dnsmasq.conf"
    conf.write_text(egress_policy(cli, world.exceptions, dnsmasq=True))
    front = Dnsmasq(tmp_path, "front", forward_to=world.dns.port, conf_file=conf).start()
    try:
        envoy, probe_port = world.make_envoy(front.port)
        status, body = probe(world, f"{hook_id}.test:{world.port}", port=probe_port)
        print(f"{hook_id} behind --bogus-nxdomain: probe -> {status} {body!r}")
        assert (status, body) == (503, REFUSED_NO_ADDRESS.encode())
        assert_refused(deliver(world, hook_id, envoy), 503)
        assert_refused(deliver(world, "lo2", envoy), 503)
        assert deliver(world, "allowed", envoy)["delivered"] == 1
        log = front.log.read_text()
        assert f"forwarded {hook_id}.test to " in log and "reply allowed.test is 127.0.0.3" in log, log[-2000:]
        nothing_internal(world)
    finally:
        front.stop()


TENANT_TOKEN = "egress-tenant-token-0123456789abcdef"
TENANT_DOMAIN = "6f1c5b2e-0d3a-4c8e-9b7a-2e4f6a8c0d1e"


def test_a_tenants_webhook_is_refused_and_shown_failing_through_the_api(world, etcd_cluster):
    """The path tenants' webhooks take: made through the API (which lets the name lo2.test
    through: it looks public), called through api.clusters, refused by Envoy's check at every
    attempt, FAILING through the API after failure_threshold (2) with the refusal as
    last_error; the internal receiver got nothing. A tenant's webhook to the allowed receiver is
    delivered through the same listener."""
    api = {"api": {"tokens": {TENANT_TOKEN: {"system_domain_id": TENANT_DOMAIN,
                                             "roles": ["can_read_webhooks", "can_write_webhooks"]}},
                   "clusters": {"http": "webhooks_egress_http", "https": "webhooks_egress_https"},
                   "urls": {"allow_http": True, "allow": world.exceptions}},
           "cluster_state": {"etcd": {"cluster": "etcd", "authority": "etcd:2379", "prefix": "/egress-test/",
                                      "sync_interval_ms": 200, "timeout_ms": 500}}}
    envoy, _ = world.make_envoy(world.dns.port, api=api,
                                extra_clusters=(etcd_envoy_cluster(etcd_cluster.client_ports),))
    headers = {"Auth-Token": TENANT_TOKEN, "content-type": "application/json"}
    made = {}
    for name, url in {"internal": f"http://lo2.test:{world.port}/hooks/tenant-internal",
                      "allowed": f"http://allowed.test:{world.port}/hooks/tenant-allowed"}.items():
        r = http_request(envoy.port, "POST", "/API/notifications/v1/webhooks/", headers=headers,
                         body=json.dumps({"event_type": "assets", "status": "ENABLED", "url": url}).encode())
        assert r.status == 201, r
        made[name] = r.json()["id"]

    def shown(name: str) -> dict:
        r = http_request(envoy.port, "GET", f"/API/notifications/v1/webhooks/{made[name]}/", headers=headers)
        assert r.status == 200, r
        return r.json()

    def event_sent() -> None:
        world.realm_events += 1
        envoy.post_event({"system_domain_id": TENANT_DOMAIN, "event_type": "assets", "realm": "tenant",
                          "operation": "update", "object_id": f"t{world.realm_events}", "data": {}})

    wait_until(lambda: (event_sent(), shown("internal")["status"] == "FAILING")[1], timeout=20, interval=0.3,
               message=lambda: shown("internal"))
    failing = shown("internal")
    reason = (REFUSED_NO_ADDRESS if HAS_ADDRESS_FILTER else REFUSED_INTERNAL).removeprefix(
        "envoy-webhooks egress refused: ")
    assert failing["last_error"] == f"refused by Envoy's egress check, the receiver was not called: {reason}"
    assert world.allowed.count("/hooks/tenant-allowed") >= 1
    nothing_internal(world)
