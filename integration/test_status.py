"""Webhook status: failures move ENABLED -> FAILING -> FAILED, a success recovers, and the
status is shared by all of Envoy's workers."""

from __future__ import annotations

import json
import threading
import time

from harness import closed_port, http_request, plugin_config, wait_until, webhook


def _event(i: int | str, realm: str = "formats") -> bytes:
    return json.dumps({"event_type": "assets", "realm": realm, "operation": "update",
                       "object_id": f"obj-{i}", "request_id": f"req-{i}", "data": {"i": str(i)}}).encode()


def _send_and_wait_failure(envoy, hook_id: str, i: int, failed_before: int) -> dict:
    """Sends one event and waits until the webhook's `failed` count went up by one."""
    assert envoy.post_event(_event(i)).status == 200
    return wait_until(lambda: (e := envoy.hook_status(hook_id))["failed"] == failed_before + 1 and e,
                      message=f"{hook_id}.failed == {failed_before + 1}")


def test_500_drives_failing_then_failed_then_stops_calls(start_envoy, hooks):
    hooks.set_reply("/hooks/flaky", status=500)
    plugin = plugin_config([webhook("flaky")],
                           delivery={"failure_threshold": 3, "failing_window_s": 3600, "timeout_ms": 5000})
    envoy = start_envoy(plugin)
    before = int(time.time())

    e = _send_and_wait_failure(envoy, "flaky", 1, 0)
    assert e["status"] == "FAILING"
    assert e["configured_status"] == "ENABLED"
    assert e["consecutive_failures"] == 1
    assert e["last_error"] == "HTTP 500"
    assert before - 1 <= e["first_failed_at"] <= time.time() + 1
    first_failed_at = e["first_failed_at"]
    assert envoy.hook_stat("flaky", "status") == 1

    e = _send_and_wait_failure(envoy, "flaky", 2, 1)
    assert (e["status"], e["consecutive_failures"], e["first_failed_at"]) == ("FAILING", 2, first_failed_at)

    e = _send_and_wait_failure(envoy, "flaky", 3, 2)
    assert (e["status"], e["consecutive_failures"], e["delivered"]) == ("FAILED", 3, 0)
    assert envoy.hook_stat("flaky", "status") == 2
    wait_until(lambda: envoy.hook_stat("flaky", "failed") == 3, message="failed counted")
    assert hooks.count() == 3

    # FAILED: no more calls.
    for i in (4, 5):
        assert envoy.post_event(_event(i)).status == 200
    envoy.settle(events_seen=5)
    assert hooks.count() == 3
    e = envoy.hook_status("flaky")
    assert (e["status"], e["failed"], e["delivered"]) == ("FAILED", 3, 0)


def test_success_while_failing_recovers(start_envoy, hooks):
    hooks.set_reply("/hooks/flaky", status=503)
    plugin = plugin_config([webhook("flaky")], delivery={"failure_threshold": 10})
    envoy = start_envoy(plugin)
    _send_and_wait_failure(envoy, "flaky", 1, 0)
    e = _send_and_wait_failure(envoy, "flaky", 2, 1)
    assert (e["status"], e["consecutive_failures"], e["last_error"]) == ("FAILING", 2, "HTTP 503")

    hooks.set_reply("/hooks/flaky", status=204)  # any 2xx is a success
    assert envoy.post_event(_event(3)).status == 200
    e = envoy.wait_status("flaky", "ENABLED")
    assert e["consecutive_failures"] == 0
    assert e["delivered"] == 1 and e["failed"] == 2
    assert envoy.hook_stat("flaky", "status") == 0

    # and it is ENABLED for real: the next failure starts a new FAILING spell
    hooks.set_reply("/hooks/flaky", status=500)
    e = _send_and_wait_failure(envoy, "flaky", 4, 2)
    assert (e["status"], e["consecutive_failures"]) == ("FAILING", 1)


def test_failing_window_moves_to_failed(start_envoy, hooks):
    hooks.set_reply("/hooks/slowfail", status=500)
    plugin = plugin_config([webhook("slowfail")], delivery={"failure_threshold": 1000, "failing_window_s": 1})
    envoy = start_envoy(plugin)
    e = _send_and_wait_failure(envoy, "slowfail", 1, 0)
    assert e["status"] == "FAILING"
    time.sleep(2.2)  # the window is wall-clock time: it has to pass
    assert envoy.post_event(_event(2)).status == 200
    e = envoy.wait_status("slowfail", "FAILED")
    assert hooks.count() <= 2


def test_receiver_down_is_a_failure(start_envoy):
    plugin = plugin_config([webhook("gone", cluster="gone")], delivery={"failure_threshold": 5})
    envoy = start_envoy(plugin, clusters={"gone": closed_port()})
    e = _send_and_wait_failure(envoy, "gone", 1, 0)
    assert e["status"] == "FAILING"
    assert e["last_error"]


def test_unknown_cluster_is_a_failure(start_envoy, hooks):
    plugin = plugin_config([webhook("nowhere", url="http://nowhere:8080/x", cluster="no_such_cluster")],
                           delivery={"failure_threshold": 5})
    envoy = start_envoy(plugin)
    e = _send_and_wait_failure(envoy, "nowhere", 1, 0)
    assert e["status"] == "FAILING" and e["consecutive_failures"] == 1
    assert "no_such_cluster" in e["last_error"] or "cluster" in e["last_error"].lower(), e["last_error"]
    wait_until(lambda: envoy.hook_stat("nowhere", "failed") == 1, message="failed counted")
    assert hooks.count() == 0


def test_default_cluster_missing_is_a_failure(start_envoy, hooks):
    """No `cluster` field: the URL's host is the cluster; no such cluster -> failure."""
    plugin = plugin_config([webhook("hostless", url="http://unconfigured-host:8080/x")],
                           delivery={"failure_threshold": 5})
    envoy = start_envoy(plugin)
    e = _send_and_wait_failure(envoy, "hostless", 1, 0)
    assert e["status"] == "FAILING"
    assert "unconfigured-host" in e["last_error"] or "cluster" in e["last_error"].lower(), e["last_error"]


def test_timeout_is_a_failure(start_envoy, hooks):
    hooks.set_reply("/hooks/slow", delay=3.0)
    plugin = plugin_config([webhook("slow")], delivery={"timeout_ms": 200, "failure_threshold": 5})
    envoy = start_envoy(plugin)
    started = time.monotonic()
    e = _send_and_wait_failure(envoy, "slow", 1, 0)
    assert time.monotonic() - started < 2.5, "the failure came from the receiver's answer, not the timeout"
    assert e["status"] == "FAILING"
    assert e["last_error"] == "timeout after 200 ms"


def test_two_workers_share_status(start_envoy, hooks):
    """--concurrency 2: many connections spread over both workers; the status and counts are
    the totals of both."""
    hooks.set_reply("/hooks/shared-fail", status=500)
    plugin = plugin_config([webhook("shared-fail", realm="formats"), webhook("shared-ok", realm="metadata")],
                           delivery={"failure_threshold": 1000, "failing_window_s": 3600})
    envoy = start_envoy(plugin, concurrency=2)
    n = 24
    errors: list[BaseException] = []

    def send(i: int) -> None:
        try:
            # a new connection per request: the kernel spreads them over the workers' sockets
            r = http_request(envoy.port, "POST", "/api/v1/events", _event(i, "formats" if i % 2 else "metadata"),
                             {"content-type": "application/json"})
            assert r.status == 200
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    per_worker = envoy.connections_per_worker()
    assert all(c > 0 for c in per_worker), f"connections per worker: {per_worker}"

    fail = wait_until(lambda: (e := envoy.hook_status("shared-fail"))["failed"] == n // 2 and e,
                      message="shared-fail.failed == 12")
    assert fail["status"] == "FAILING"
    assert fail["consecutive_failures"] == n // 2
    ok = wait_until(lambda: (e := envoy.hook_status("shared-ok"))["delivered"] == n // 2 and e,
                    message="shared-ok.delivered == 12")
    assert ok["status"] == "ENABLED" and ok["failed"] == 0
    wait_until(lambda: envoy.hook_stat("shared-fail", "failed") == n // 2, message="failed counted")
    wait_until(lambda: envoy.hook_stat("shared-ok", "delivered") == n // 2, message="delivered counted")
    # every worker answers the same status
    for _ in range(6):
        assert envoy.hook_status("shared-fail")["failed"] == n // 2


def test_two_workers_reach_failed_once(start_envoy, hooks):
    """Failures from both workers add up to the threshold; afterwards no worker calls."""
    hooks.set_reply("/hooks/both", status=500)
    plugin = plugin_config([webhook("both")], delivery={"failure_threshold": 4, "failing_window_s": 3600})
    envoy = start_envoy(plugin, concurrency=2)
    for i in range(4):
        assert envoy.post_event(_event(i)).status == 200  # new connection each time
        wait_until(lambda: hooks.count() == i + 1 and envoy.hook_status("both")["failed"] == i + 1,
                   message=f"failure {i + 1}")
    envoy.wait_status("both", "FAILED")
    for i in range(4, 10):
        assert envoy.post_event(_event(i)).status == 200
    envoy.settle(events_seen=10)
    assert hooks.count() == 4
