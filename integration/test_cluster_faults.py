"""Issue 30: at least once across Envoys, under faults (real etcd 3.4, two Envoys).

- A rolling restart (the filter removed by an LDS update) while deliveries wait for a
  retry: each one is delivered by the other Envoy, dead-lettered, or counted ``lost``,
  whether etcd is reachable at that moment or not.
- etcd full (its NOSPACE alarm): an Envoy whose journal writes are refused keeps its
  lease, so no other Envoy adopts the deliveries of an Envoy that is alive.
- An Envoy cut off from etcd goes FAILED on its own while an operator enables the
  webhook through another Envoy: once it is back, the enable wins everywhere.

Counters used (per webhook, ``wasmcustom.envoy_webhooks.webhook_id.<id>.<name>``, see
docs/operations.md): ``matched``, ``adopted``, ``injected``, ``delivered``, ``failed``,
``dropped``, ``withheld``, ``handed_off``, ``paused``, ``lost``; summed over both Envoys,
``matched + adopted + injected = delivered + failed + dropped + withheld + handed_off + paused``
(plus what still waits for a retry, where something does), checked in every test.
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time

import pytest
import yaml

from etcd_cluster import b64, unb64
from harness import wait_until
from test_cluster_state import (
    INTERVAL_MS,
    PREFIX,
    _event,
    cluster_plugin,
    etcd_envoy_cluster,
    hook_status,
    record,
    start_envoys,
    status_of,
)
from test_reload import ReloadableEnvoy
from test_shutdown import _pending

N = 5
HOOK = "shared"
# The owner's lease: five sync intervals, at least 5 s (src/cluster/journal.rs).
LEASE_TTL_S = max(5 * INTERVAL_MS / 1000, 5)

IN = ("matched", "adopted", "injected")
OUT = ("delivered", "failed", "dropped", "withheld", "handed_off", "paused")


@pytest.fixture
def stable_wasm(wasm, tmp_path):
    """A copy of the filter for this test: a rebuild while it runs cannot mix two builds
    (an LDS update would load the new file into a new VM)."""
    copy = tmp_path / "envoy_webhooks.wasm"
    shutil.copyfile(wasm, copy)
    return copy


def counters(envoy) -> dict[str, int]:
    return {name: envoy.hook_stat(HOOK, name) for name in (*IN, *OUT, "lost", "dead_lettered")}


def waiting(envoy) -> int:
    """Deliveries waiting for a retry in ``envoy`` (``GET .../pending``)."""
    r = envoy.webhooks_admin("GET", "/pending")
    assert r.status == 200, r
    return sum(w["pending"] for w in r.json()["webhooks"])


def counters_add_up(envoys) -> tuple[bool, dict]:
    """Summed over ``envoys``: matched + adopted + injected = delivered + failed + dropped +
    withheld + handed_off + paused + what still waits for a retry."""
    totals = {e.__class__.__name__ + str(i): counters(e) for i, e in enumerate(envoys)}
    into = sum(c[k] for c in totals.values() for k in IN)
    out = sum(c[k] for c in totals.values() for k in OUT)
    still = sum(waiting(e) for e in envoys)
    return into == out + still, {"in": into, "out": out, "waiting": still, **totals}


def assert_reconciled(envoys) -> None:
    wait_until(lambda: counters_add_up(envoys)[0], timeout=10,
               message=lambda: f"counters reconciled: {counters_add_up(envoys)[1]}")


def object_ids(requests) -> set[str]:
    return {json.loads(r.body)["object_id"] for r in requests}


# --------------------------------------------------------------------------- 1. rolling restart


def _lds_envoy(tmp_path, envoy_bin, wasm, upstream, hooks, etcd, launch_envoy) -> ReloadableEnvoy:
    """Envoy A: its event listener (and so the filter) comes from an LDS file; the etcd
    cluster is a static one. Stopped, and its log shown on failure, at teardown."""
    a = ReloadableEnvoy(tmp_path, envoy_bin, wasm, upstream.port, hooks.port,
                        extra_args=["--drain-time-s", "1"], concurrency=2)
    a.envoy.config["static_resources"]["clusters"].append(etcd_envoy_cluster(etcd.client_ports))
    a.envoy.config_path.write_text(yaml.safe_dump(a.envoy.config, sort_keys=False))
    launch_envoy.started.append(a.envoy)
    a.envoy.start()
    return a


@pytest.mark.parametrize("etcd_when_removed", ["reachable", "stopped", "stopped_before_events"])
def test_a_rolling_restart_loses_no_waiting_delivery_whatever_etcd_does(
        tmp_path, envoy_bin, stable_wasm, upstream, hooks, launch_envoy, make_etcd_cluster,
        etcd_when_removed):
    """A user relies on this: an Envoy whose filter is removed (a rolling restart, an LDS
    update) with deliveries waiting for a retry leaves none of them behind: each is made
    by another Envoy, or dead-lettered, or at least counted ``lost``; a ``handed_off``
    delivery is one another Envoy can find in etcd. etcd reachable at that moment; stopped
    at that moment (the deliveries were journaled); stopped before the events came (they
    never were)."""
    etcd = make_etcd_cluster(size=1)
    hooks.set_reply(f"/hooks/{HOOK}", status=503)
    plugin = cluster_plugin(threshold=1000, retry_schedule_s=[30, 30])
    plugin["dead_letter"] = {"url": "http://hooks:8080/dead", "cluster": "hooks"}
    a = _lds_envoy(tmp_path, envoy_bin, stable_wasm, upstream, hooks, etcd, launch_envoy)
    a.reload(plugin)
    b, = start_envoys(launch_envoy, upstream, hooks, etcd.client_ports, plugin, n=1, wasm=stable_wasm)

    if etcd_when_removed == "stopped_before_events":
        etcd.stop(0)
    for i in range(N):
        assert a.post_event(i).status == 200
    hooks.wait_for(N, f"/hooks/{HOOK}")
    wait_until(lambda: sum(w["pending"] for w in _pending(a)) == N, timeout=10,
               message=f"{N} deliveries waiting for a retry in A")
    if etcd_when_removed != "stopped_before_events":
        wait_until(lambda: len(etcd.get_prefix(PREFIX + "handoff/")) == N, timeout=15,
                   message=f"{N} waiting deliveries journaled")
    if etcd_when_removed == "stopped":
        etcd.stop(0)

    # The receiver recovers (A's own retries are 30 s away), and A's filter is removed:
    # the listener holding it is replaced by one whose filter has no webhook.
    recovered = time.monotonic()
    hooks.set_reply(f"/hooks/{HOOK}", status=204)
    a.reload({"webhooks": []})
    # The old filter chain drained and its root contexts got on_done: each either ended at
    # once (every match accounted for) or said it waits for its last calls.
    wait_until(lambda: sum(counters(a.envoy)[k] for k in OUT) >= N
               or "envoy-webhooks: stopping" in a.envoy.log_text(), timeout=15,
               message=lambda: f"A's filter stopped: {counters(a.envoy)}")
    if not etcd.running(0):
        etcd.start(0)

    def report() -> dict:
        a_counts, b_counts = counters(a.envoy), counters(b)
        received = object_ids(r for r in hooks.requests(f"/hooks/{HOOK}") if r.received_at > recovered)
        dead = {json.loads(r.body)["event"]["object_id"] for r in hooks.requests("/dead")}
        records = etcd.get_prefix(PREFIX + "handoff/")
        return {
            "missing": sorted({f"obj-{i}" for i in range(N)} - received - dead),
            "lost": a_counts["lost"] + b_counts["lost"],
            "in": sum(a_counts[k] + b_counts[k] for k in IN),
            "out": sum(a_counts[k] + b_counts[k] for k in OUT),
            "handed_off": a_counts["handed_off"],
            "adopted_or_in_etcd": b_counts["adopted"] + len(records),
            "A": a_counts, "B": b_counts, "received": sorted(received), "dead_lettered": sorted(dead),
            "handoff_records": sorted(records),
        }

    def reconciled() -> bool:
        r = report()
        return (len(r["missing"]) <= r["lost"] and r["in"] == r["out"]
                and r["handed_off"] <= r["adopted_or_in_etcd"])

    wait_until(reconciled, timeout=30, interval=0.25,
               message=lambda: f"every event delivered, dead-lettered or counted lost ({report()})")
    final = report()
    print(f"etcd {etcd_when_removed}: {final}")
    deliveries = [json.loads(r.body)["object_id"] for r in hooks.requests(f"/hooks/{HOOK}")
                  if r.received_at > recovered]
    print(f"deliveries after the recovery: {len(deliveries)} for {len(set(deliveries))} events")


# --------------------------------------------------------------------------- 2. etcd full


def _fill(etcd) -> None:
    """Puts 256 KiB values until etcd refuses with its quota error (NOSPACE alarm)."""
    big = b64(b"x" * 256 * 1024)
    for i in range(400):
        status, body = etcd.request("/v3/kv/put", {"key": b64(f"/filler/{i}"), "value": big})
        if status != 200:
            assert b"database space exceeded" in body, (status, body)
            break
    else:
        raise AssertionError("etcd never said its database space was exceeded")
    status, body = etcd.request("/v3/maintenance/alarm", {"action": "GET"})
    assert status == 200 and b"NOSPACE" in body, (status, body)


def test_a_full_etcd_does_not_let_the_lease_of_a_live_envoy_lapse(
        launch_envoy, upstream, hooks, make_etcd_cluster, stable_wasm):
    """A user relies on this: an Envoy that is alive keeps its deliveries, even when etcd
    refuses every write (its storage quota is exhausted): the journal's failing writes do
    not starve the lease's keep-alives (which etcd still accepts), so the Envoy's liveness
    key stays and no other Envoy adopts (and duplicates) its deliveries."""
    etcd = make_etcd_cluster(size=1, extra_args=["--quota-backend-bytes", str(4 * 1024 * 1024)])
    hooks.set_reply(f"/hooks/{HOOK}", status=503)
    plugin = cluster_plugin(threshold=100_000, retry_schedule_s=[120])
    a, b = start_envoys(launch_envoy, upstream, hooks, etcd.client_ports, plugin, n=2, wasm=stable_wasm)
    for i in range(3):
        assert a.post_event(_event(i)).status == 200
    wait_until(lambda: len(etcd.get_prefix(PREFIX + "handoff/")) == 3, timeout=15,
               message="3 waiting deliveries journaled")
    # Only A has deliveries waiting: every liveness key is one of A's workers'.
    owners = wait_until(lambda: etcd.get_prefix(PREFIX + "owners/"), message="A's liveness keys")

    _fill(etcd)
    errors = a.wasm_stat("envoy_webhooks.cluster_state_errors")
    full = time.monotonic()
    problems: dict[str, float] = {}
    n = 0
    # Observed over three lease TTLs, while A keeps matching events that wait (and whose
    # journal writes etcd refuses).
    while time.monotonic() - full < 3 * LEASE_TTL_S + 1:
        assert a.post_event(_event(f"full-{n}")).status == 200
        n += 1
        now = etcd.get_prefix(PREFIX + "owners/")
        at = round(time.monotonic() - full, 1)
        for key in owners:
            if key not in now:
                problems.setdefault(f"A's liveness key {key} gone", at)
        if b.hook_stat(HOOK, "adopted"):
            problems.setdefault(f"B adopted {b.hook_stat(HOOK, 'adopted')} of A's deliveries", at)
        time.sleep(0.25)
    refused = a.wasm_stat("envoy_webhooks.cluster_state_errors") - errors
    print(f"etcd full for {time.monotonic() - full:.1f} s: {n} more events through A, "
          f"{refused} refused etcd calls, A's liveness keys {sorted(owners)}, B adopted "
          f"{b.hook_stat(HOOK, 'adopted')}")
    assert refused > 0, "etcd refused A's writes"
    assert not problems, f"seconds after etcd was full (lease TTL {LEASE_TTL_S} s): {problems}"
    assert len(etcd.get_prefix(PREFIX + "handoff/")) >= 3, "A's records are still in etcd"
    assert_reconciled([a, b])


# --------------------------------------------------------------------------- 3. partition


def statuses_since(etcd, revision: int) -> list[str]:
    """Every status the webhook's record had from ``revision`` on (etcd keeps the history)."""
    (key, (_, mod_revision)), = etcd.get_prefix(PREFIX + f"webhooks/{HOOK}/").items()
    statuses = []
    for at in range(revision, mod_revision + 1):
        kvs = etcd._call("/v3/kv/range", {"key": b64(key), "revision": str(at)}).get("kvs", [])
        if kvs and int(kvs[0]["mod_revision"]) == at:
            statuses.append(json.loads(unb64(kvs[0]["value"]))["status"])
    return statuses


class Cuttable:
    """A TCP forwarder to ``target_port`` on 127.0.0.1 that the test can ``cut()`` (every
    connection shut, new ones closed as they come) and ``reconnect()``."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.is_cut = False
        self.closed = False
        self.sockets: set[socket.socket] = set()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.is_cut:
                client.close()
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.sockets |= {client, server}
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                self._shut(s)

    def _shut(self, s: socket.socket) -> None:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()
        with self.lock:
            self.sockets.discard(s)

    def cut(self) -> None:
        self.is_cut = True
        with self.lock:
            sockets = list(self.sockets)
        for s in sockets:
            self._shut(s)

    def reconnect(self) -> None:
        self.is_cut = False

    def close(self) -> None:
        self.closed = True
        self.cut()
        self.listener.close()


@pytest.fixture
def cuttable():
    made: list[Cuttable] = []

    def _make(target_port: int) -> Cuttable:
        made.append(Cuttable(target_port))
        return made[-1]

    yield _make
    for proxy in made:
        proxy.close()


@pytest.mark.parametrize("before_the_cut", ["no_record", "failing"])
def test_an_enable_elsewhere_wins_over_failures_made_while_cut_off_from_etcd(
        launch_envoy, upstream, hooks, make_etcd_cluster, cuttable, stable_wasm, before_the_cut):
    """A user relies on this: ``POST .../webhooks/{id}/enable`` through any Envoy enables the
    webhook everywhere, also on an Envoy that was cut off from etcd and went FAILED on its
    own meanwhile: once it is back, every Envoy and etcd say ENABLED, and etcd's record
    never goes back to FAILED after the enable (the failures came before it). Before the
    cut, etcd has no record (B sees nothing to enable), or one failure through A reached it
    (B sees FAILING)."""
    etcd = make_etcd_cluster(size=1)
    proxy = cuttable(etcd.client_ports[0])
    hooks.set_reply(f"/hooks/{HOOK}", status=503)
    plugin = cluster_plugin(threshold=3)  # no retries
    a = launch_envoy(plugin, upstream=upstream, clusters={"hooks": hooks.port}, concurrency=2,
                     extra_clusters=[etcd_envoy_cluster([proxy.port])], wasm=stable_wasm)
    b, = start_envoys(launch_envoy, upstream, hooks, etcd.client_ports, plugin, n=1, wasm=stable_wasm)
    for envoy in (a, b):
        wait_until(lambda: status_of(envoy)["cluster_state"]["synced_at_ms"], timeout=15,
                   message="synced with etcd")
    sent = 0
    if before_the_cut == "failing":
        assert a.post_event(_event(sent)).status == 200
        sent += 1
        wait_until(lambda: (rec := record(etcd)) and rec[0]["consecutive_failures"] == 1, timeout=10,
                   message="the first failure written to etcd")
        wait_until(lambda: hook_status(b) == "FAILING", timeout=10, message="B sees FAILING")

    proxy.cut()
    wait_until(lambda: status_of(a)["cluster_state"]["stale"] is True, timeout=10, message="A cut off")
    before = record(etcd)
    while hook_status(a) != "FAILED":
        assert sent < 10, f"A not FAILED after {sent} failures: {status_of(a)}"
        assert a.post_event(_event(sent)).status == 200
        sent += 1
        hooks.wait_for(sent, f"/hooks/{HOOK}")
        wait_until(lambda: status_of(a)["webhooks"][0]["consecutive_failures"] == sent,
                   message=f"failure {sent} counted")
    assert record(etcd) == before, "A's failures did not reach etcd while it was cut off"
    assert hook_status(b) == ("ENABLED" if before is None else "FAILING")

    # The operator enables it through B (a wall-clock second after A's last failure: an
    # operator reacts later than that).
    failed_at = int(time.time())
    wait_until(lambda: int(time.time()) > failed_at, timeout=2, message="the next second")
    r = b.webhooks_admin("POST", f"/webhooks/{HOOK}/enable")
    assert r.status == 200, r
    wait_until(lambda: (rec := record(etcd)) and rec[0]["status"] == "ENABLED"
               and rec[0].get("epoch", 0) >= 1, timeout=10,
               message=lambda: f"the enable through B written to etcd (B: {status_of(b)['webhooks'][0]}, "
                               f"etcd: {record(etcd)})")
    enabled_revision = record(etcd)[1]

    proxy.reconnect()
    reconnected_ms = time.time() * 1000

    def everywhere() -> dict:
        rec = record(etcd)
        return {"etcd": rec and rec[0]["status"], "A": hook_status(a), "B": hook_status(b),
                "A synced since": (status_of(a)["cluster_state"]["synced_at_ms"] or 0) > reconnected_ms}

    def since_enable() -> list[str]:
        return statuses_since(etcd, enabled_revision)

    wait_until(lambda: everywhere() == {"etcd": "ENABLED", "A": "ENABLED", "B": "ENABLED", "A synced since": True},
               timeout=15, message=lambda: f"ENABLED everywhere after A is back: {everywhere()}; "
                                           f"etcd's record since the enable: {since_enable()}")
    # A's waiting writes go within a quarter interval of its reads: give them several.
    seen = []
    settle_until = time.monotonic() + 8 * INTERVAL_MS / 1000
    while time.monotonic() < settle_until:
        seen.append(everywhere())
        time.sleep(INTERVAL_MS / 4000)
    changed = [s for s in seen if s["etcd"] != "ENABLED" or s["A"] != "ENABLED" or s["B"] != "ENABLED"]
    assert not changed, f"after A was back: {changed[:3]}; etcd's record since the enable {since_enable()}"
    assert "FAILED" not in since_enable(), f"etcd's record since the enable: {since_enable()}"
    assert record(etcd)[0]["consecutive_failures"] == 0, record(etcd)
    assert_reconciled([a, b])
