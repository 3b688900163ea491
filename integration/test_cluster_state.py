"""cluster_state: three Envoys (each with two workers) and a three-member etcd cluster.

Failures through different Envoys add up and FAILED is written once; every Envoy's /status
follows within two sync intervals and stops calling; an enable through one enables all;
concurrent failures never lose a count; etcd members dying cost nothing but staleness;
deliveries waiting in an Envoy that is killed are made by another; answers that are not
etcd's are counted and change nothing."""

from __future__ import annotations

import json
import signal
import threading
import time

import pytest

from harness import closed_port, plugin_config, wait_until, webhook

INTERVAL_MS = 500
PREFIX = "/envoy-webhooks/test/"


def etcd_envoy_cluster(ports: list[int]) -> dict:
    """How an Envoy reaches every member: health-checked, a dead member ejected at once."""
    return {
        "name": "etcd",
        "type": "STATIC",
        "connect_timeout": "0.25s",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {
            "cluster_name": "etcd",
            "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}
                for port in ports]}],
        },
        "health_checks": [{
            "timeout": "0.5s", "interval": "1s", "no_traffic_interval": "1s",
            "unhealthy_threshold": 2, "healthy_threshold": 1,
            "http_health_check": {"path": "/health"},
        }],
        "outlier_detection": {
            "split_external_local_origin_errors": True,
            "consecutive_local_origin_failure": 1,
            "consecutive_5xx": 3,
            "consecutive_gateway_failure": 2,
            "interval": "1s",
            "base_ejection_time": "10s",
            "max_ejection_percent": 34,
        },
    }


def cluster_plugin(threshold: int = 3, retry_schedule_s: list[int] | None = None, **etcd) -> dict:
    etcd_config = {"cluster": "etcd", "authority": "etcd:2379", "prefix": PREFIX,
                   "sync_interval_ms": INTERVAL_MS, "timeout_ms": 500}
    etcd_config.update(etcd)
    return plugin_config(
        [webhook("shared")],
        delivery={"failure_threshold": threshold, "failing_window_s": 3600,
                  "retry_schedule_s": retry_schedule_s or [], "timeout_ms": 2000},
        cluster_state={"etcd": etcd_config},
    )


def _event(i: int | str) -> bytes:
    return json.dumps({"event_type": "assets", "realm": "formats", "operation": "update",
                       "object_id": f"obj-{i}", "request_id": f"req-{i}"}).encode()


def start_envoys(launch_envoy, upstream, hooks, etcd_ports: list[int], plugin: dict, n: int = 3, **kw):
    return [launch_envoy(plugin, upstream=upstream, clusters={"hooks": hooks.port},
                         extra_clusters=[etcd_envoy_cluster(etcd_ports)], concurrency=2, **kw)
            for _ in range(n)]


def record(etcd) -> tuple[dict, int] | None:
    """The webhook's record in etcd and its mod_revision."""
    records = etcd.get_prefix(PREFIX + "webhooks/shared/")
    if not records:
        return None
    (value, revision), = records.values()
    return json.loads(value), revision


def history(etcd) -> list[str]:
    """Every status the record had, from its creation on (etcd keeps the revisions)."""
    (key, (_, mod_revision)), = etcd.get_prefix(PREFIX + "webhooks/shared/").items()
    from etcd_cluster import b64
    answer = etcd._call("/v3/kv/range", {"key": b64(key)})
    create = int(answer["kvs"][0]["create_revision"])
    statuses = []
    for revision in range(create, mod_revision + 1):
        at = etcd._call("/v3/kv/range", {"key": b64(key), "revision": str(revision)})
        kv = at["kvs"][0]
        if int(kv["mod_revision"]) == revision:
            from etcd_cluster import unb64
            statuses.append(json.loads(unb64(kv["value"]))["status"])
    return statuses


def status_of(envoy) -> dict:
    r = envoy.webhooks_admin("GET", "/status")
    assert r.status == 200, r
    return r.json()


def hook_status(envoy) -> str:
    return status_of(envoy)["webhooks"][0]["status"]


def test_failures_add_up_across_envoys_fail_once_and_an_enable_reaches_all(
        launch_envoy, upstream, hooks, etcd_cluster):
    hooks.set_reply("/hooks/shared", status=500)
    envoys = start_envoys(launch_envoy, upstream, hooks, etcd_cluster.client_ports, cluster_plugin(threshold=3))
    # One failure through each Envoy: none reaches the threshold alone.
    for i, envoy in enumerate(envoys):
        assert envoy.post_event(_event(i)).status == 200
        hooks.wait_for(i + 1, "/hooks/shared")
    reached = time.monotonic()
    wait_until(lambda: (r := record(etcd_cluster)) and r[0]["status"] == "FAILED",
               timeout=10, message="FAILED in etcd")
    for envoy in envoys:
        wait_until(lambda: hook_status(envoy) == "FAILED", timeout=10, message="FAILED everywhere")
    elapsed = time.monotonic() - reached
    print(f"FAILED on every Envoy {elapsed:.2f} s after the third failure (interval {INTERVAL_MS} ms)")
    assert elapsed <= 2 * INTERVAL_MS / 1000 + 1.0
    assert history(etcd_cluster).count("FAILED") == 1, history(etcd_cluster)
    assert record(etcd_cluster)[0]["consecutive_failures"] >= 3
    # No Envoy calls it any more.
    calls = hooks.count("/hooks/shared")
    for i, envoy in enumerate(envoys):
        assert envoy.post_event(_event(10 + i)).status == 200
    time.sleep(1)
    assert hooks.count("/hooks/shared") == calls
    for envoy in envoys:
        cluster_state = status_of(envoy)["cluster_state"]
        assert cluster_state["stale"] is False, cluster_state

    # Enabled through one Envoy: all three deliver again.
    hooks.set_reply("/hooks/shared", status=204)
    assert envoys[1].webhooks_admin("POST", "/webhooks/shared/enable").status == 200
    for envoy in envoys:
        wait_until(lambda: hook_status(envoy) == "ENABLED", timeout=10, message="ENABLED everywhere")
    for i, envoy in enumerate(envoys):
        assert envoy.post_event(_event(20 + i)).status == 200
    wait_until(lambda: {json.loads(r.body)["object_id"] for r in hooks.requests("/hooks/shared")}
               >= {"obj-20", "obj-21", "obj-22"}, message="each Envoy delivers")
    assert record(etcd_cluster)[0]["status"] == "ENABLED"


def test_concurrent_failures_from_every_envoy_never_lose_a_count(launch_envoy, upstream, hooks, etcd_cluster):
    hooks.set_reply("/hooks/shared", status=503)
    envoys = start_envoys(launch_envoy, upstream, hooks, etcd_cluster.client_ports, cluster_plugin(threshold=1000))
    per_envoy = 10

    def send(envoy, base: int) -> None:
        for i in range(per_envoy):
            assert envoy.post_event(_event(base + i)).status == 200

    threads = [threading.Thread(target=send, args=(envoy, 100 * n)) for n, envoy in enumerate(envoys)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    hooks.wait_for(3 * per_envoy, "/hooks/shared")
    wait_until(lambda: (r := record(etcd_cluster)) and r[0]["consecutive_failures"] == 3 * per_envoy,
               timeout=15, message=f"{3 * per_envoy} failures counted in etcd")
    time.sleep(2 * INTERVAL_MS / 1000)
    assert record(etcd_cluster)[0]["consecutive_failures"] == 3 * per_envoy
    assert set(history(etcd_cluster)) <= {"ENABLED", "FAILING"}, "no flip-flop"
    for envoy in envoys:
        wait_until(lambda: status_of(envoy)["webhooks"][0]["consecutive_failures"] == 3 * per_envoy,
                   timeout=10, message="every Envoy shows the cluster's count")


def test_etcd_members_dying_cost_nothing_but_staleness(launch_envoy, upstream, hooks, etcd_cluster):
    hooks.set_reply("/hooks/shared", status=500)
    envoys = start_envoys(launch_envoy, upstream, hooks, etcd_cluster.client_ports,
                          cluster_plugin(threshold=4), n=2)
    # One member killed: failures still reach etcd.
    etcd_cluster.kill(0)
    assert envoys[0].post_event(_event(1)).status == 200
    wait_until(lambda: (r := record(etcd_cluster)) and r[0]["consecutive_failures"] == 1,
               timeout=15, message="written with one member down")
    wait_until(lambda: hook_status(envoys[1]) == "FAILING", timeout=10, message="seen by the other Envoy")

    # All members killed: deliveries go on, errors are counted, /status says stale.
    errors_before = envoys[0].wasm_stat("envoy_webhooks.cluster_state_errors")
    print(f"errors while one member was down: {errors_before}")
    log_before = len(envoys[0].log_text())
    etcd_cluster.kill_all()
    for i in range(2, 5):
        assert envoys[0].post_event(_event(i)).status == 200
        hooks.wait_for(i, "/hooks/shared")
    assert upstream.count() >= 4, "the platform's traffic went through"
    wait_until(lambda: envoys[0].wasm_stat("envoy_webhooks.cluster_state_errors") > 0, timeout=10,
               message="errors counted")
    wait_until(lambda: status_of(envoys[0])["cluster_state"]["stale"] is True, timeout=10, message="stale")
    assert status_of(envoys[0])["cluster_state"]["stale_since_ms"] is not None
    # Four failures through this Envoy: FAILED on its own state.
    wait_until(lambda: hook_status(envoys[0]) == "FAILED", timeout=10, message="FAILED locally")
    assert hook_status(envoys[1]) == "FAILING"
    log = envoys[0].log_text()[log_before:]
    assert log.count("cluster state: etcd call failed") == 1, "logged once per outage"

    # Members back: the FAILED is written and reaches the other Envoy.
    etcd_cluster.start_all()
    wait_until(lambda: (r := record(etcd_cluster)) and r[0]["status"] == "FAILED", timeout=30,
               message="FAILED written after the outage")
    wait_until(lambda: hook_status(envoys[1]) == "FAILED", timeout=15, message="converged")
    wait_until(lambda: status_of(envoys[0])["cluster_state"]["stale"] is False, timeout=15, message="fresh")
    assert "etcd answers again" in envoys[0].log_text()


def test_deliveries_waiting_in_a_killed_envoy_are_made_by_another(launch_envoy, upstream, hooks, etcd_cluster):
    hooks.set_reply("/hooks/shared", status=503)
    plugin = cluster_plugin(threshold=1000, retry_schedule_s=[120])
    envoys = start_envoys(launch_envoy, upstream, hooks, etcd_cluster.client_ports, plugin, n=2)
    for i in range(5):
        assert envoys[0].post_event(_event(i)).status == 200
    hooks.wait_for(5, "/hooks/shared")
    wait_until(lambda: len(etcd_cluster.get_prefix(PREFIX + "handoff/")) == 5, timeout=10,
               message="5 waiting deliveries journaled")
    hooks.set_reply("/hooks/shared", status=204)
    hooks.clear()
    assert envoys[0].proc is not None
    envoys[0].proc.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    wait_until(lambda: {json.loads(r.body)["object_id"] for r in hooks.requests("/hooks/shared")}
               >= {f"obj-{i}" for i in range(5)}, timeout=30, message="each delivered by the other Envoy")
    print(f"adopted and delivered {time.monotonic() - killed:.1f} s after the kill (lease TTL 5 s)")
    wait_until(lambda: envoys[1].hook_stat("shared", "adopted") == 5, message="adopted counted")
    wait_until(lambda: envoys[1].hook_stat("shared", "delivered") == 5, message="counted")
    wait_until(lambda: etcd_cluster.get_prefix(PREFIX + "handoff/") == {}, message="journal empty")
    assert hooks.count("/hooks/shared") == 5, "each exactly once"


def test_etcd_down_with_deliveries_waiting_costs_a_few_calls_an_interval(
        launch_envoy, upstream, hooks, etcd_cluster):
    """Every member down while deliveries wait to be journaled: each worker's journal tries
    once an interval, not once per refused answer (which would spin as fast as Envoy fails
    the calls, in the data path's workers)."""
    hooks.set_reply("/hooks/shared", status=503)
    plugin = cluster_plugin(threshold=1000, retry_schedule_s=[120])
    envoy, = start_envoys(launch_envoy, upstream, hooks, etcd_cluster.client_ports, plugin, n=1)
    etcd_cluster.kill_all()
    for i in range(5):
        assert envoy.post_event(_event(i)).status == 200
    hooks.wait_for(5, "/hooks/shared")
    time.sleep(1)
    before = envoy.wasm_stat("envoy_webhooks.cluster_state_errors")
    time.sleep(4)
    rate = (envoy.wasm_stat("envoy_webhooks.cluster_state_errors") - before) / 4
    print(f"cluster_state_errors per second with etcd down and deliveries waiting: {rate:.1f}")
    # By design at sync_interval_ms 500: per worker one journal call a interval, and the
    # poller's read: 2 workers x 2/s + 2/s.
    assert 0 < rate <= 10, rate
    etcd_cluster.start_all()
    wait_until(lambda: len(etcd_cluster.get_prefix(PREFIX + "handoff/")) == 5, timeout=20,
               message="journaled once etcd is back")


@pytest.mark.parametrize("etcd_is", ["not etcd", "nobody"])
def test_answers_that_are_not_etcd_are_counted_and_traffic_is_untouched(
        launch_envoy, upstream, hooks, make_server, etcd_is):
    from harness import static_cluster
    if etcd_is == "not etcd":
        fake = make_server("not-etcd")
        fake.set_default(status=200, body=b"<html>hello</html>")
        port = fake.port
    else:
        port = closed_port()
    hooks.set_reply("/hooks/shared", status=204)
    envoy = launch_envoy(cluster_plugin(), upstream=upstream, clusters={"hooks": hooks.port},
                         extra_clusters=[static_cluster("etcd", port)])
    for i in range(3):
        r = envoy.post_event(_event(i))
        assert r.status == 200
    hooks.wait_for(3, "/hooks/shared")
    assert upstream.count() == 3
    wait_until(lambda: envoy.wasm_stat("envoy_webhooks.cluster_state_errors") > 0, message="counted")
    cluster_state = status_of(envoy)["cluster_state"]
    assert cluster_state["stale"] is True and cluster_state["last_error"], cluster_state
    assert hook_status(envoy) == "ENABLED"
    log = envoy.log_text()
    assert "panicked" not in log and "Wasm VM failed" not in log


def test_with_authentication_the_token_is_used_and_renewed(launch_envoy, upstream, hooks, make_etcd_cluster):
    etcd = make_etcd_cluster(auth_token_ttl=2)
    etcd.enable_auth("root", "rootpw")
    etcd.credentials = ("root", "rootpw")
    hooks.set_reply("/hooks/shared", status=500)
    plugin = cluster_plugin(threshold=2, username_env="ETCD_USER", password_env="ETCD_PASSWORD")
    envoy = launch_envoy(plugin, upstream=upstream, clusters={"hooks": hooks.port},
                         extra_clusters=[etcd_envoy_cluster(etcd.client_ports)],
                         env={"ETCD_USER": "root", "ETCD_PASSWORD": "rootpw"},
                         host_env_keys=["ETCD_USER", "ETCD_PASSWORD"])
    assert envoy.post_event(_event(1)).status == 200
    wait_until(lambda: (r := record(etcd)) and r[0]["status"] == "FAILING", timeout=10, message="written")
    time.sleep(3)  # the token's TTL (2 s) passes unused... it is renewed by use, so idle a bit more
    assert envoy.post_event(_event(2)).status == 200
    wait_until(lambda: (r := record(etcd)) and r[0]["status"] == "FAILED", timeout=15, message="written again")
    assert status_of(envoy)["cluster_state"]["stale"] is False


def test_what_an_envoy_asks_of_etcd(launch_envoy, upstream, hooks, etcd_cluster):
    """docs/cluster-state.md's costs, measured from Envoy's own count of requests to the etcd cluster
    (health checks not included): idle, then a failing receiver with deliveries waiting."""
    hooks.set_reply("/hooks/shared", status=503)
    plugin = cluster_plugin(threshold=100_000, retry_schedule_s=[600], sync_interval_ms=1000)
    envoy, = start_envoys(launch_envoy, upstream, hooks, etcd_cluster.client_ports, plugin, n=1)
    time.sleep(2)

    def rate(seconds: float, during=None) -> float:
        before = envoy.stat("cluster.etcd.upstream_rq_total")
        start = time.monotonic()
        n = 0
        while time.monotonic() - start < seconds:
            if during:
                during(n)
                n += 1
            time.sleep(0.05)
        return (envoy.stat("cluster.etcd.upstream_rq_total") - before) / (time.monotonic() - start)

    idle = rate(6)
    failing = rate(6, lambda n: envoy.post_event(_event(f"f{n}")))
    print(f"requests to etcd per second, one Envoy with 2 workers, sync_interval_ms 1000: "
          f"idle {idle:.2f}, failing receiver with ~20 events/s waiting for retries {failing:.2f}")
    assert idle <= 2.5, "2 reads a second by design (the records, and owners with journal in one txn), and a member keep-alive every 4 s"
    assert failing <= 12
    assert len(etcd_cluster.get_prefix(PREFIX + "handoff/")) > 50, "the waiting deliveries are journaled"


def test_a_record_that_does_not_decode_is_counted_and_written_over(launch_envoy, upstream, hooks, etcd_cluster):
    hooks.set_reply("/hooks/shared", status=500)
    envoy, = start_envoys(launch_envoy, upstream, hooks, etcd_cluster.client_ports, cluster_plugin(threshold=3), n=1)
    assert envoy.post_event(_event(1)).status == 200
    wait_until(lambda: record(etcd_cluster) is not None, message="a record")
    (key,) = etcd_cluster.get_prefix(PREFIX + "webhooks/shared/")
    etcd_cluster.put(key, "{not a record")
    wait_until(lambda: envoy.wasm_stat("envoy_webhooks.cluster_state_errors") > 0, message="counted")
    assert hook_status(envoy) == "FAILING", "the local state is kept"
    assert envoy.post_event(_event(2)).status == 200
    wait_until(lambda: (r := record(etcd_cluster)) and r[0]["status"] == "FAILING", timeout=10,
               message="written over with a valid record")
    assert upstream.count() == 2


def test_records_of_a_webhook_removed_from_every_envoy_leave_etcd(launch_envoy, upstream, hooks, etcd_cluster):
    """A webhook no Envoy has any more: after orphan_retention_s, its status record is deleted
    and the deliveries an Envoy that went away journaled for it go to the dead letters with
    reason `orphaned`; what etcd holds then is what the live Envoys have configured."""
    hooks.set_reply("/hooks/old", status=503)

    def plugin(webhooks: list[str], retry_schedule_s: list[int]) -> dict:
        etcd = {"cluster": "etcd", "authority": "etcd:2379", "prefix": PREFIX,
                "sync_interval_ms": INTERVAL_MS, "timeout_ms": 500, "orphan_retention_s": 2}
        return plugin_config([webhook(id) for id in webhooks],
                             delivery={"failure_threshold": 1000, "retry_schedule_s": retry_schedule_s},
                             dead_letter={"url": "http://hooks:8080/dead", "cluster": "hooks"},
                             cluster_state={"etcd": etcd})

    def launch(config: dict):
        envoy, = start_envoys(launch_envoy, upstream, hooks, etcd_cluster.client_ports, config, n=1)
        return envoy

    # Two Envoys have "old": one fails a delivery (its status record), one leaves three
    # waiting for a retry (journaled); the third Envoy has only "shared".
    failing = launch(plugin(["shared", "old"], []))
    waiting = launch(plugin(["shared", "old"], [120]))
    remaining = launch(plugin(["shared"], []))
    assert failing.post_event(_event("f")).status == 200
    for i in range(3):
        assert waiting.post_event(_event(i)).status == 200
    wait_until(lambda: len(etcd_cluster.get_prefix(PREFIX + "handoff/")) == 3, timeout=10,
               message="3 waiting deliveries journaled")
    wait_until(lambda: etcd_cluster.get_prefix(PREFIX + "webhooks/old/"), timeout=10,
               message="the old webhook's status record")
    # One entry per Envoy, its poller's (at start-up each root context polls in turn: the
    # older ones revoke theirs).
    wait_until(lambda: len(etcd_cluster.get_prefix(PREFIX + "members/")) == 3, timeout=10,
               message="one member entry per Envoy")
    hooks.clear()
    for envoy in (failing, waiting):
        assert envoy.proc is not None
        envoy.proc.send_signal(signal.SIGKILL)
    killed = time.monotonic()

    def dead_letters() -> list[dict]:
        return [json.loads(r.body) for r in hooks.requests("/dead")]

    wait_until(lambda: len(dead_letters()) == 3, timeout=30, message="3 orphaned deliveries dead-lettered")
    wait_until(lambda: not etcd_cluster.get_prefix(PREFIX + "webhooks/old/"), timeout=10,
               message="the old webhook's status record removed")
    print(f"removed {time.monotonic() - killed:.1f} s after the kill "
          f"(owner lease 5 s, member lease 12 s, orphan_retention_s 2)")
    letters = dead_letters()
    assert {letter["reason"] for letter in letters} == {"orphaned"}
    assert {letter["webhook_id"] for letter in letters} == {"old"}
    assert sorted(letter["event"]["object_id"] for letter in letters) == ["obj-0", "obj-1", "obj-2"]
    wait_until(lambda: remaining.hook_stat("old", "orphaned") == 3, message="orphaned counted")
    wait_until(lambda: remaining.wasm_stat("envoy_webhooks.cluster_state_records_removed") == 1,
               message="the removal counted")
    # Counted once the destination's answer is back.
    wait_until(lambda: remaining.hook_stat("old", "dead_lettered") == 3, message="dead_lettered counted")
    keys = sorted(etcd_cluster.get_prefix(PREFIX))
    print("etcd keyspace after:", keys)
    members = [k for k in keys if k.startswith(PREFIX + "members/")]
    assert len(members) == 1, keys
    assert all(k.startswith(PREFIX + "webhooks/shared/") for k in keys if k not in members), keys
    listed = json.loads(etcd_cluster.get(members[0])[0])["webhooks"]
    assert len(listed) == 1 and listed[0].startswith("shared/"), listed


def test_a_pause_through_one_envoy_pauses_every_envoy_until_enabled(launch_envoy, upstream, hooks, etcd_cluster):
    envoys = start_envoys(launch_envoy, upstream, hooks, etcd_cluster.client_ports, cluster_plugin(), n=2)
    r = envoys[0].webhooks_admin("POST", "/webhooks/shared/disable")
    assert r.status == 200, r.body
    paused_at = r.json()["paused_at_ms"]
    wait_until(lambda: (rec := record(etcd_cluster)) and rec[0]["status"] == "DISABLED", timeout=10,
               message="DISABLED in etcd")
    assert record(etcd_cluster)[0]["paused_at_ms"] == paused_at
    for envoy in envoys:
        wait_until(lambda: status_of(envoy)["webhooks"][0]["status"] == "DISABLED", timeout=10,
                   message="DISABLED on every Envoy")
        assert status_of(envoy)["webhooks"][0]["paused_at_ms"] == paused_at
    for i, envoy in enumerate(envoys):
        assert envoy.post_event(_event(i)).status == 200
    for envoy in envoys:
        wait_until(lambda: envoy.hook_stat("shared", "paused") == 1, message="the match counted as paused")
    time.sleep(1)
    assert hooks.count("/hooks/shared") == 0, "no Envoy calls a paused webhook"

    assert envoys[1].webhooks_admin("POST", "/webhooks/shared/enable").status == 200
    for envoy in envoys:
        wait_until(lambda: status_of(envoy)["webhooks"][0]["status"] == "ENABLED", timeout=10,
                   message="ENABLED on every Envoy")
        assert status_of(envoy)["webhooks"][0]["paused_at_ms"] is None
    for i, envoy in enumerate(envoys):
        assert envoy.post_event(_event(10 + i)).status == 200
    wait_until(lambda: {json.loads(r.body)["object_id"] for r in hooks.requests("/hooks/shared")}
               == {"obj-10", "obj-11"}, message="each Envoy delivers again")
    assert "paused_at_ms" not in record(etcd_cluster)[0]
