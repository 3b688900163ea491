"""Operating webhooks like a webhook service: the attempt log, test events and redriving
dead letters (the admin API's deliver, and `envoy-webhooks redrive`), pausing a webhook,
and a rate limit per webhook."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time

from harness import ADMIN_TOKEN, closed_port, envoy_config, free_port, plugin_config, wait_until, walk, webhook

SECRET = "whsec_" + base64.b64encode(b"operate-test-secret-0123").decode()
DLQ_PATH = "/dead"


def _event(i: int | str, **extra) -> bytes:
    event = {"event_type": "assets", "realm": "formats", "operation": "update",
             "object_id": f"obj-{i}", "request_id": f"req-{i}", "data": {"i": str(i), "big": 1E2}}
    event.update(extra)
    # The platform's own spelling: the filter must deliver these bytes, not a re-encoding.
    return json.dumps(event, separators=(",", ":")).replace("100.0", "1E2").encode()


def _dead_letter() -> dict:
    return {"url": f"http://dlq:8080{DLQ_PATH}"}


def attempts(envoy, hook_id: str) -> list[dict]:
    r = envoy.webhooks_admin("GET", f"/webhooks/{hook_id}/attempts")
    assert r.status == 200, (r.status, r.body)
    assert r.headers["content-type"].startswith("application/json")
    return r.json()["attempts"]


def test_the_attempt_log_shows_what_was_sent_and_when(start_envoy, hooks):
    hooks.set_script("/hooks/logged", [503, 200])
    plugin = plugin_config([webhook("logged", secret=SECRET),
                            webhook("nowhere", realm="never", url="http://nowhere:8080/x")],
                           delivery={"retry_schedule_s": [1]})
    envoy = start_envoy(plugin, concurrency=2, clusters={"nowhere": closed_port()})
    before_ms = time.time() * 1000
    assert envoy.post_event(_event(1)).status == 200
    received = hooks.wait_for(2, "/hooks/logged")
    # Published by the worker's tick (at most 250 ms later).
    wait_until(lambda: len(attempts(envoy, "logged")) == 2, timeout=5, message="two attempts logged")
    newest, oldest = attempts(envoy, "logged")
    assert set(newest) == {"at_ms", "attempt", "status", "latency_ms", "error", "message_id", "request_id"}
    assert (newest["attempt"], newest["status"], newest["error"]) == (2, 200, None)
    assert (oldest["attempt"], oldest["status"], oldest["error"]) == (1, 503, "HTTP 503")
    for entry, seen in zip((oldest, newest), received):
        assert entry["message_id"] == seen.headers["webhook-id"], (entry, seen.headers)
        assert entry["request_id"] == "req-1"
        assert 0 <= entry["latency_ms"] < 2000
        assert before_ms - 1 <= entry["at_ms"] <= time.time() * 1000
    assert newest["at_ms"] - oldest["at_ms"] >= 790, "the retry came a second (±20%) later"

    # Events arriving on both workers: one log, newest first.
    for i in range(2, 12):
        assert envoy.post_event(_event(i)).status == 200
    hooks.wait_for(12, "/hooks/logged")
    wait_until(lambda: len(attempts(envoy, "logged")) == 12, timeout=5, message="twelve attempts logged")
    log = attempts(envoy, "logged")
    assert [e["at_ms"] for e in log] == sorted((e["at_ms"] for e in log), reverse=True)
    assert {e["request_id"] for e in log} == {f"req-{i}" for i in range(1, 12)}

    # A receiver that is not there (a test event to it): no status, the error says why.
    assert envoy.webhooks_admin("POST", "/webhooks/nowhere/deliver", body=_event(99)).status == 202
    wait_until(lambda: len(attempts(envoy, "nowhere")) == 2, timeout=10, message="the failed attempts logged")
    for failed in attempts(envoy, "nowhere"):
        assert failed["status"] is None and "not reached" in failed["error"], failed
        assert failed["request_id"] == "req-99"
    assert len(attempts(envoy, "logged")) == 12, "each webhook its own log"

    assert envoy.webhooks_admin("GET", "/webhooks/nope/attempts").status == 404
    assert envoy.webhooks_admin("POST", "/webhooks/logged/attempts").status == 405
    assert envoy.webhooks_admin("GET", "/webhooks/logged/attempts", token="wrong").status == 401


def test_a_test_event_is_delivered_whatever_the_webhook_listens_to(start_envoy, hooks, upstream):
    hooks.set_reply("/hooks/narrow", status=204)
    plugin = plugin_config([webhook("narrow", realm="formats", query='data.never="matches"', secret=SECRET)],
                           events={"max_event_bytes": 10_000})
    envoy = start_envoy(plugin)
    test_event = _event("test", event_type="collections", realm="metadata")
    r = envoy.webhooks_admin("POST", "/webhooks/narrow/deliver", body=test_event)
    assert r.status == 202, (r.status, r.body)
    message_id = r.json()["message_id"]
    got, = hooks.wait_for(1, "/hooks/narrow")
    assert got.body == test_event, "the event as posted, byte for byte"
    assert got.headers["webhook-id"] == message_id
    assert got.headers["webhook-signature"].startswith("v1,")
    wait_until(lambda: envoy.hook_stat("narrow", "delivered") == 1, message="delivered counted")
    assert envoy.hook_stat("narrow", "injected") == 1
    assert envoy.hook_stat("narrow", "matched") == 0
    # Again: a new message_id (a test, not a repeat).
    again = envoy.webhooks_admin("POST", "/webhooks/narrow/deliver", body=test_event)
    assert again.status == 202 and again.json()["message_id"] != message_id
    # Nothing of it reached the platform.
    assert upstream.count() == 0

    for body, status, says in [(b"not json", 400, "not JSON"), (b"[1]", 400, "an array"),
                               (b"", 400, "not JSON"),
                               (json.dumps({"webhook_id": "other", "event": {}}).encode(), 400, "is for webhook")]:
        r = envoy.webhooks_admin("POST", "/webhooks/narrow/deliver", body=body)
        assert r.status == status and says in r.json()["error"], (body, r.status, r.body)
    assert envoy.webhooks_admin("POST", "/webhooks/nope/deliver", body=test_event).status == 404
    assert envoy.webhooks_admin("GET", "/webhooks/narrow/deliver").status == 405
    for size, says in [(20_000, "larger than events.max_event_bytes (10000 bytes)"), (200_000, "larger than")]:
        r = envoy.webhooks_admin("POST", "/webhooks/narrow/deliver", body=b"{" + b" " * size + b"}")
        assert r.status == 413 and says in r.json()["error"], (r.status, r.body[:200])
    assert upstream.count() == 0


def test_dead_letters_redriven_with_the_cli_keep_their_message_ids(start_envoy, hooks, make_server, cli, tmp_path):
    dlq = make_server("dlq")
    hooks.set_reply("/hooks/flaky", status=500)
    plugin = plugin_config(
        [webhook("flaky", secret=SECRET), webhook("stuck", status="FAILED", realm="never", secret=SECRET)],
        delivery={"retry_schedule_s": [], "failure_threshold": 100},
        dead_letter=_dead_letter())
    envoy = start_envoy(plugin, clusters={"dlq": dlq.port}, concurrency=2)
    sent = [_event(i) for i in range(3)]
    for body in sent:
        assert envoy.post_event(body).status == 200
    letters = dlq.wait_for(3, DLQ_PATH)
    records = [letter.json() for letter in letters]
    assert {r["webhook_id"] for r in records} == {"flaky"}
    first_ids = {json.loads(rec.body)["request_id"]: rec.headers.get("webhook-id")
                 for rec in hooks.requests("/hooks/flaky")}

    # The receiver is fixed. What the dead-letter receiver stored, one JSON per line,
    # plus one record of a webhook that is FAILED.
    hooks.set_reply("/hooks/flaky", status=200)
    stuck = dict(records[0], webhook_id="stuck")
    file = tmp_path / "dead-letters.jsonl"
    file.write_bytes(b"\n".join([letter.body for letter in letters] + [json.dumps(stuck).encode()]) + b"\n")
    admin = f"http://127.0.0.1:{envoy.port}/webhooks-admin"
    env = dict(os.environ, OPERATE_TOKEN=ADMIN_TOKEN)

    dry = subprocess.run([str(cli), "redrive", "--admin", admin, "--token-env", "OPERATE_TOKEN", "--dry-run",
                          str(file)], capture_output=True, text=True, env=env, timeout=30)
    assert dry.returncode == 0, dry.stderr
    assert "would send 4" in dry.stdout, dry.stdout
    time.sleep(0.5)
    assert hooks.count("/hooks/flaky") == 3, "a dry run sends nothing"

    run = subprocess.run([str(cli), "redrive", "--admin", admin, "--token-env", "OPERATE_TOKEN", str(file)],
                         capture_output=True, text=True, env=env, timeout=30)
    print(run.stdout)
    assert run.returncode == 1, (run.stdout, run.stderr)  # the FAILED webhook's record
    lines = run.stdout.splitlines()
    assert sum("-> 202" in line for line in lines) == 3, lines
    assert any("-> 409" in line and "stuck is FAILED" in line for line in lines), lines
    assert "4 record(s): 3 sent, 1 failed" in lines[-1], lines
    assert ADMIN_TOKEN not in run.stdout + run.stderr

    redriven = hooks.wait_for(6, "/hooks/flaky")[3:]
    by_request = {json.loads(r.body)["request_id"]: r for r in redriven}
    for record in records:
        again = by_request[record["event"]["request_id"]]
        assert again.headers["webhook-id"] == record["message_id"], "the receiver can de-duplicate"
        assert again.headers["webhook-id"] == first_ids[record["event"]["request_id"]]
        assert again.body in sent, "the event byte for byte (1E2 stays 1E2)"
    wait_until(lambda: envoy.hook_stat("flaky", "delivered") == 3, message="redriven deliveries counted")
    m = {k: envoy.hook_stat("flaky", k) for k in ("matched", "injected", "delivered", "failed", "dropped",
                                                   "dead_lettered", "lost", "paused")}
    assert m == dict(matched=3, injected=3, delivered=3, failed=3, dropped=0, dead_lettered=3, lost=0, paused=0), m
    assert m["matched"] + m["injected"] == m["delivered"] + m["failed"] + m["dropped"] + m["paused"]
    assert envoy.hook_stat("stuck", "injected") == 0


def test_a_paused_webhook_is_not_called_until_enabled(start_envoy, hooks, make_server):
    dlq = make_server("dlq")
    plugin = plugin_config([webhook("maint"), webhook("other")], dead_letter=_dead_letter())
    envoy = start_envoy(plugin, clusters={"dlq": dlq.port}, concurrency=2)
    r = envoy.webhooks_admin("POST", "/webhooks/maint/disable")
    assert r.status == 200, r.body
    entry = r.json()
    assert (entry["status"], entry["configured_status"]) == ("DISABLED", "ENABLED")
    paused_at = entry["paused_at_ms"]
    assert abs(paused_at - time.time() * 1000) < 5000
    assert envoy.hook_status("maint")["paused_at_ms"] == paused_at
    assert envoy.hook_stat("maint", "status") == 3

    for i in range(6):
        assert envoy.post_event(_event(i)).status == 200
    hooks.wait_for(6, "/hooks/other")
    wait_until(lambda: envoy.hook_stat("maint", "paused") == 6, message="matches while paused counted")
    time.sleep(0.5)
    assert hooks.count("/hooks/maint") == 0, "no call while paused"
    assert dlq.count() == 0, "no dead letters either"
    assert envoy.hook_stat("maint", "dropped") == 0
    r = envoy.webhooks_admin("POST", "/webhooks/maint/deliver", body=_event("t"))
    assert r.status == 409 and "paused" in r.json()["error"], r.body
    assert envoy.webhooks_admin("GET", "/webhooks/maint/disable").status == 405
    assert envoy.webhooks_admin("POST", "/webhooks/nope/disable").status == 404

    r = envoy.webhooks_admin("POST", "/webhooks/maint/enable")
    assert r.status == 200 and r.json()["status"] == "ENABLED" and r.json()["paused_at_ms"] is None, r.body
    assert envoy.post_event(_event(7)).status == 200
    got, = hooks.wait_for(1, "/hooks/maint")
    assert json.loads(got.body)["object_id"] == "obj-7"
    assert envoy.hook_stat("maint", "status") == 0


def test_a_rate_limit_spreads_a_burst_and_loses_nothing(start_envoy, hooks):
    rate, burst_size = 20, 500
    plugin = plugin_config([webhook("slow", rate_limit_per_s=rate), webhook("fast")],
                           delivery={"retry_schedule_s": []})
    envoy = start_envoy(plugin, concurrency=2)
    started = time.monotonic()
    # 50 requests of 10 events each, on separate connections (both workers).
    for r in range(burst_size // 10):
        body = b"[" + b",".join(_event(r * 10 + i) for i in range(10)) + b"]"
        assert envoy.post_event(body).status == 200
    posted = time.monotonic() - started
    fast = hooks.wait_for(burst_size, "/hooks/fast", timeout=30)
    fast_done = max(r.received_at for r in fast) - started
    slow = hooks.wait_for(burst_size, "/hooks/slow", timeout=60)
    times = sorted(r.received_at for r in slow)
    # After the burst (rate_limit_burst defaults to the rate) the calls come at the rate.
    steady = times[rate:]
    measured = (len(steady) - 1) / (steady[-1] - steady[0])
    print(f"posted {burst_size} matches in {posted:.2f} s; fast: all {len(fast)} within {fast_done:.2f} s; "
          f"slow: {len(slow)} calls, {measured:.2f}/s after the burst of {rate} "
          f"(first {times[0] - started:.2f} s, last {times[-1] - started:.2f} s)")
    assert abs(measured - rate) <= rate * 0.10, measured
    # At no time more than the burst plus the rate in any one second.
    for i, t in enumerate(times):
        within = sum(1 for u in times[i:] if u - t < 1.0)
        assert within <= 2 * rate + 1, (i, within)
    assert fast_done < 10, "the unthrottled webhook is not held up"
    time.sleep(0.5)
    assert hooks.count("/hooks/slow") == burst_size, "each delivery made once"
    wait_until(lambda: envoy.hook_stat("slow", "delivered") == burst_size, message="all delivered")
    throttled = envoy.hook_stat("slow", "throttled")
    assert burst_size - 2 * rate <= throttled <= burst_size - rate, throttled
    assert envoy.hook_stat("fast", "throttled") == 0
    assert envoy.hook_stat("slow", "failed") == envoy.hook_stat("slow", "dropped") == 0
    assert envoy.hook_status("slow")["status"] == "ENABLED", "waiting is not failing"


def test_without_allow_on_headers_stop_iteration_deliver_says_why_and_nothing_hangs(
        launch_envoy, upstream, hooks):
    plugin = plugin_config([webhook("hook")])
    config = envoy_config(listener_port=free_port(), admin_port=free_port(), upstream_port=upstream.port,
                          plugin=plugin, clusters={"hooks": hooks.port})

    def knob_off(d: dict) -> None:
        if "allow_on_headers_stop_iteration" in d:
            d["allow_on_headers_stop_iteration"] = False

    walk(config, knob_off)
    envoy = launch_envoy(plugin, upstream=upstream, config=config)
    started = time.monotonic()
    r = envoy.webhooks_admin("POST", "/webhooks/hook/deliver", body=_event(1))
    waited = time.monotonic() - started
    print(f"answered {r.status} after {waited:.2f} s: {r.body!r}")
    assert r.status == 501, (r.status, r.body)
    assert "allow_on_headers_stop_iteration: true" in r.json()["error"]
    assert waited < 6
    # The rest of the admin API and the platform's traffic are as ever.
    assert envoy.webhooks_admin("GET", "/status").status == 200
    assert envoy.post_event(_event(2)).status == 200
    got, = hooks.wait_for(1, "/hooks/hook")
    assert json.loads(got.body)["object_id"] == "obj-2"
    time.sleep(0.5)
    assert hooks.count("/hooks/hook") == 1, "the stalled request delivered nothing"
    assert upstream.count() == 1, "nor reached the platform"
