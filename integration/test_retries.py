"""Delivery guarantees: retries with backoff and jitter, Retry-After, 410 Gone, the status
machine counting only exhausted deliveries, Standard Webhooks signatures, dead letters,
the bounds on pending deliveries, the pending view of the admin API, and the accounting
identity of the metrics.

Every test passes a short explicit ``delivery.retry_schedule_s`` (whole seconds)."""

from __future__ import annotations

import base64
import email.utils
import json
import os
import time

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from harness import GRACE, Reply, closed_port, http_request, plugin_config, wait_until, webhook

# The scheduled delays are jittered by +-20%. A retry cannot come before it is due, but it
# comes up to a tick (and a scheduling hiccup) late; arrival times are measured at the
# receiver, so the first attempt may carry a connect the later ones do not.
JITTER = 0.2
EARLY = 0.1
LATE = 0.35

METRICS = ("matched", "delivered", "failed", "dropped", "retried", "dead_lettered", "lost")

DLQ_PATH = "/dead"


def _event(i: int | str, **extra) -> bytes:
    event = {"event_type": "assets", "realm": "formats", "operation": "update",
             "object_id": f"obj-{i}", "request_id": f"req-{i}", "data": {"i": str(i)}}
    event.update(extra)
    return json.dumps(event).encode()


def _secret(seed: bytes | None = None) -> str:
    return "whsec_" + base64.b64encode(seed or os.urandom(24)).decode()


def _dead_letter(port_cluster: str = "dlq", **extra) -> dict:
    section = {"url": f"http://{port_cluster}:8080{DLQ_PATH}"}
    section.update(extra)
    return section


def metrics(envoy, hook_id: str) -> dict[str, int]:
    return {name: envoy.hook_stat(hook_id, name) for name in METRICS}


def wait_metrics(envoy, hook_id: str, timeout: float = 15.0, settled: bool = True,
                 **expected: int) -> dict[str, int]:
    """Waits until the webhook's metrics named in ``expected`` have exactly those values,
    then (``settled``: nothing is pending any more) checks the accounting identity:
    matched == delivered + failed + dropped + withheld and failed + dropped == dead_lettered + lost."""
    seen: dict[str, dict] = {}

    def check() -> bool:
        seen["m"] = metrics(envoy, hook_id)
        return all(seen["m"][k] == v for k, v in expected.items())

    wait_until(check, timeout, 0.05, message=lambda: f"{hook_id} metrics {expected}, last seen {seen.get('m')}")
    m = seen["m"]
    if not settled:
        return m
    withheld = envoy.hook_stat(hook_id, "withheld")
    assert m["matched"] == m["delivered"] + m["failed"] + m["dropped"] + withheld, (m, withheld)
    assert m["failed"] + m["dropped"] == m["dead_lettered"] + m["lost"], m
    return m


def gaps(records) -> list[float]:
    return [b.received_at - a.received_at for a, b in zip(records, records[1:])]


def assert_gap(gap: float, scheduled_s: float, jitter: float = JITTER) -> None:
    low, high = scheduled_s * (1 - jitter) - EARLY, scheduled_s * (1 + jitter) + LATE
    assert low <= gap <= high, f"gap {gap:.3f}s outside [{low:.2f}, {high:.2f}] for a {scheduled_s}s delay"


def connect_failures(envoy, cluster: str) -> int:
    return envoy.stat(f"cluster.{cluster}.upstream_cx_connect_fail")


def pending(envoy) -> dict:
    r = envoy.webhooks_admin("GET", "/pending")
    assert r.status == 200, (r.status, r.body)
    return r.json()


def pending_of(envoy, hook_id: str) -> dict:
    return {w["id"]: w for w in pending(envoy)["webhooks"]}[hook_id]


# --------------------------------------------------------------------------- the harness


def test_harness_scripted_replies_and_headers(make_server):
    server = make_server("scripted")
    server.set_script("/s", [500, Reply(status=503, headers={"Retry-After": "7"}), 200])
    server.set_reply("/h", status=429, headers={"Retry-After": "3", "X-Other": "y"})
    answers = [http_request(server.port, "POST", "/s", b"x") for _ in range(4)]
    assert [a.status for a in answers] == [500, 503, 200, 200]  # the last one repeats
    assert answers[1].headers["retry-after"] == "7"
    assert "retry-after" not in answers[0].headers
    r = http_request(server.port, "POST", "/h", b"x")
    assert (r.status, r.headers["retry-after"], r.headers["x-other"]) == (429, "3", "y")
    assert http_request(server.port, "POST", "/other", b"x").status == 200  # the default
    got = server.wait_for(6)
    assert all(abs(g.received_wall - time.time()) < 5 for g in got)


# --------------------------------------------------------------------------- retries


def test_two_failures_then_success_is_three_attempts(start_envoy, hooks):
    hooks.set_script("/hooks/flaky", [500, 500, 200])
    plugin = plugin_config([webhook("flaky")], delivery={"retry_schedule_s": [1, 2], "failure_threshold": 1})
    envoy = start_envoy(plugin)
    assert envoy.post_event(_event(1)).status == 200

    # A failed attempt whose delivery still has retries is not a failure of the webhook
    # (failure_threshold 1 would make it FAILED at once).
    hooks.wait_for(1)
    wait_until(lambda: pending_of(envoy, "flaky")["pending"] == 1, message="the retry to be pending")
    e = envoy.hook_status("flaky")
    assert (e["status"], e["consecutive_failures"], e["failed"]) == ("ENABLED", 0, 0), e

    got = hooks.wait_for(3, timeout=10)
    m = wait_metrics(envoy, "flaky", matched=1, delivered=1)
    assert m == dict(matched=1, delivered=1, failed=0, dropped=0, retried=2, dead_lettered=0, lost=0)
    envoy.settle(grace=GRACE)
    got = hooks.requests()
    assert len(got) == 3
    first, second = gaps(got)
    assert_gap(first, 1)
    assert_gap(second, 2)
    assert len({r.headers.get("webhook-id") for r in got}) == 1
    assert all(r.body == _event(1) for r in got)
    e = envoy.hook_status("flaky")
    assert (e["status"], e["consecutive_failures"], e["delivered"], e["failed"]) == ("ENABLED", 0, 1, 0)
    assert envoy.hook_stat("flaky", "status") == 0


@pytest.mark.parametrize("status", [429, 502, 404, 302])
def test_other_non_2xx_answers_are_retried(start_envoy, hooks, status):
    hooks.set_script("/hooks/retry-me", [Reply(status=status, headers={"Location": "/x"}), 204])
    envoy = start_envoy(plugin_config([webhook("retry-me")], delivery={"retry_schedule_s": [1]}))
    assert envoy.post_event(_event(1)).status == 200
    got = hooks.wait_for(2)
    assert_gap(gaps(got)[0], 1)
    wait_metrics(envoy, "retry-me", matched=1, delivered=1, failed=0, retried=1)


def test_timeout_is_retried(start_envoy, hooks):
    hooks.set_script("/hooks/slow", [Reply(delay=1.5), 200])
    plugin = plugin_config([webhook("slow")], delivery={"retry_schedule_s": [1], "timeout_ms": 300})
    envoy = start_envoy(plugin)
    assert envoy.post_event(_event(1)).status == 200
    got = hooks.wait_for(2, timeout=10)
    # The retry is scheduled from the timeout, not from the first request.
    assert_gap(gaps(got)[0], 0.3 + 1)
    wait_metrics(envoy, "slow", matched=1, delivered=1, retried=1, failed=0)
    assert envoy.hook_status("slow")["status"] == "ENABLED"


def test_each_delivery_gets_its_own_jitter(start_envoy, hooks):
    """10 deliveries failing together are not retried together: their delays spread over
    the +-20% window around the scheduled 1 s."""
    n = 10
    hooks.set_script("/hooks/herd", [500] * n + [200])
    plugin = plugin_config([webhook("herd")], delivery={"retry_schedule_s": [1], "failure_threshold": 1000})
    envoy = start_envoy(plugin)
    assert envoy.post_event([json.loads(_event(i)) for i in range(n)]).status == 200
    got = hooks.wait_for(2 * n, timeout=10)
    attempts: dict[bytes, list] = {}
    for r in got:
        attempts.setdefault(r.body, []).append(r)
    assert sorted(len(a) for a in attempts.values()) == [2] * n
    delays = sorted(b.received_at - a.received_at for a, b in attempts.values())
    for delay in delays:
        assert_gap(delay, 1)
    assert delays[-1] - delays[0] > 0.05, f"no jitter: {delays}"
    wait_metrics(envoy, "herd", matched=n, delivered=n, retried=n)


def test_success_on_a_retry_resets_the_failure_count(start_envoy, hooks):
    """A delivery that exhausts its retries makes the webhook FAILING; the next delivery
    succeeding on its last attempt makes it ENABLED again, with no failure counted."""
    hooks.set_script("/hooks/recovers", [500, 500, 500, 200])
    plugin = plugin_config([webhook("recovers")], delivery={"retry_schedule_s": [1], "failure_threshold": 3})
    envoy = start_envoy(plugin)
    assert envoy.post_event(_event(1)).status == 200
    e = envoy.wait_status("recovers", "FAILING")
    assert (e["consecutive_failures"], e["failed"], e["last_error"]) == (1, 1, "HTTP 500")
    assert hooks.count() == 2
    assert envoy.post_event(_event(2)).status == 200  # 500, then 200 on the retry
    hooks.wait_for(3)
    assert envoy.hook_status("recovers")["status"] == "FAILING"
    assert hooks.count() == 3, "the status was read before the retry"
    e = envoy.wait_status("recovers", "ENABLED")
    assert (e["consecutive_failures"], e["delivered"], e["failed"]) == (0, 1, 1)
    assert hooks.count() == 4
    wait_metrics(envoy, "recovers", matched=2, delivered=1, failed=1, retried=2, dropped=0, lost=1)


def test_a_success_answered_after_a_failure_resets_the_status(start_envoy, hooks):
    """Event 1's call is slow and succeeds; event 2's fails at once (no retries) and makes the
    webhook FAILING while event 1's call is still waiting. Event 1's success comes after the
    failure, so it resets the webhook to ENABLED, as any success does."""
    hooks.set_script("/hooks/race", [Reply(status=200, delay=1.5), 500])
    plugin = plugin_config([webhook("race")], delivery={"retry_schedule_s": [], "failure_threshold": 5})
    envoy = start_envoy(plugin)
    assert envoy.post_event(_event(1)).status == 200
    hooks.wait_for(1)
    assert envoy.post_event(_event(2)).status == 200
    e = envoy.wait_status("race", "FAILING")
    assert (e["consecutive_failures"], e["delivered"]) == (1, 0), "the failure came before the success"
    wait_metrics(envoy, "race", matched=2, delivered=1, failed=1, lost=1)
    e = envoy.wait_status("race", "ENABLED", timeout=2)
    assert (e["consecutive_failures"], e["delivered"], e["failed"]) == (0, 1, 1), e


@pytest.mark.parametrize(
    "retry_after, expected_gap",
    [
        ("2", 2.0),    # honoured
        ("10", 2.0),   # clamped to twice the scheduled 1 s
        ("0", 1.0),    # never sooner than the schedule (and then not jittered)
        ("date+3600", 2.0),  # an HTTP date an hour ahead: clamped too
    ],
)
def test_retry_after_is_honoured_within_bounds(start_envoy, hooks, retry_after, expected_gap):
    if retry_after.startswith("date"):
        retry_after = email.utils.formatdate(time.time() + int(retry_after[5:]), usegmt=True)
    hooks.set_script("/hooks/busy", [Reply(status=503, headers={"Retry-After": retry_after}), 200])
    envoy = start_envoy(plugin_config([webhook("busy")], delivery={"retry_schedule_s": [1]}))
    assert envoy.post_event(_event(1)).status == 200
    got = hooks.wait_for(2, timeout=10)
    gap = gaps(got)[0]
    assert expected_gap - EARLY <= gap <= expected_gap + LATE, f"Retry-After {retry_after!r}: gap {gap:.3f}s"
    wait_metrics(envoy, "busy", matched=1, delivered=1, retried=1, failed=0)


def test_retry_after_date_in_the_past_means_the_schedule(start_envoy, hooks):
    past = email.utils.formatdate(time.time() - 3600, usegmt=True)
    hooks.set_script("/hooks/busy", [Reply(status=429, headers={"Retry-After": past}), 200])
    envoy = start_envoy(plugin_config([webhook("busy")], delivery={"retry_schedule_s": [1]}))
    assert envoy.post_event(_event(1)).status == 200
    gap = gaps(hooks.wait_for(2, timeout=10))[0]
    assert 1 - EARLY <= gap <= 1 + LATE, gap
    wait_metrics(envoy, "busy", matched=1, delivered=1, retried=1)


# --------------------------------------------------------------------------- 410 Gone


def test_410_fails_the_webhook_at_once_and_dead_letters_gone(start_envoy, hooks, make_server):
    dlq = make_server("dead-letters")
    hooks.set_reply("/hooks/gone", status=410)
    plugin = plugin_config([webhook("gone")],
                           delivery={"retry_schedule_s": [1, 1], "failure_threshold": 10},
                           dead_letter=_dead_letter(headers={"X-Dlq-Token": "dlq-secret"}))
    envoy = start_envoy(plugin, clusters={"dlq": dlq.port})
    before = int(time.time())
    assert envoy.post_event(_event(1)).status == 200

    (letter,) = dlq.wait_for(1)
    e = envoy.wait_status("gone", "FAILED")
    assert (e["last_error"], e["failed"], e["delivered"]) == ("HTTP 410", 1, 0), e
    assert envoy.hook_stat("gone", "status") == 2
    assert letter.method == "POST" and letter.path == DLQ_PATH
    assert letter.headers["content-type"] == "application/json"
    assert letter.headers["x-dlq-token"] == "dlq-secret"
    record = letter.json()
    assert set(record) == {"webhook_id", "event", "attempts", "last_error", "first_attempt_at", "reason",
                           "message_id", "request_id"}
    assert record["webhook_id"] == "gone"
    assert record["event"] == json.loads(_event(1))
    assert (record["attempts"], record["last_error"], record["reason"]) == (1, "HTTP 410", "gone")
    assert before - 1 <= record["first_attempt_at"] <= time.time() + 1
    assert record["request_id"] == "req-1"
    assert record["message_id"].startswith("msg_")

    # The schedule would have retried after ~1 s and ~2 s: nothing comes.
    time.sleep(2 * (1 + JITTER) + GRACE)
    assert hooks.count() == 1
    assert dlq.count() == 1

    # A later event is not attempted: it goes straight to the dead letters.
    assert envoy.post_event(_event(2)).status == 200
    (_, later) = dlq.wait_for(2)
    assert later.json()["reason"] == "webhook_failed"
    assert later.json()["request_id"] == "req-2"
    assert later.json()["attempts"] == 0
    envoy.settle(grace=GRACE)
    assert hooks.count() == 1
    wait_metrics(envoy, "gone", matched=2, delivered=0, failed=1, dropped=1, retried=0, dead_lettered=2, lost=0)


# --------------------------------------------------------------------------- receiver down


def test_receiver_down_exhausts_then_failing_then_failed(start_envoy, make_server):
    dlq = make_server("dead-letters")
    plugin = plugin_config([webhook("down", cluster="down")],
                           delivery={"retry_schedule_s": [1, 1], "failure_threshold": 2, "failing_window_s": 3600},
                           dead_letter=_dead_letter())
    envoy = start_envoy(plugin, clusters={"down": closed_port(), "dlq": dlq.port})

    started, started_wall = time.monotonic(), time.time()
    assert envoy.post_event(_event(1)).status == 200
    wait_until(lambda: connect_failures(envoy, "down") >= 1, message="the first attempt")
    # Retries pending: not a failure yet.
    assert envoy.hook_status("down")["status"] == "ENABLED"
    assert dlq.count() == 0
    (first,) = dlq.wait_for(1, timeout=10)
    elapsed = time.monotonic() - started
    assert 2 * (1 - JITTER) - EARLY <= elapsed <= 2 * (1 + JITTER) + 2 * LATE + 1, elapsed
    record = first.json()
    assert (record["webhook_id"], record["attempts"], record["reason"], record["request_id"]) == (
        "down", 3, "retries_exhausted", "req-1")
    # The first attempt's time, not the last one's (>= 1.6 s later).
    assert int(started_wall) <= record["first_attempt_at"] <= started_wall + 0.5, (record, started_wall)
    assert record["last_error"], record
    assert record["event"] == json.loads(_event(1))
    assert connect_failures(envoy, "down") == 3
    e = envoy.wait_status("down", "FAILING")
    assert (e["consecutive_failures"], e["failed"]) == (1, 1)
    assert e["last_error"] == record["last_error"]
    wait_metrics(envoy, "down", matched=1, failed=1, retried=2, dead_lettered=1)

    assert envoy.post_event(_event(2)).status == 200
    (_, second) = dlq.wait_for(2, timeout=10)
    record = second.json()
    assert (record["attempts"], record["reason"], record["request_id"]) == (3, "retries_exhausted", "req-2")
    e = envoy.wait_status("down", "FAILED")
    assert (e["consecutive_failures"], e["failed"]) == (2, 2)
    assert connect_failures(envoy, "down") == 6
    assert envoy.hook_stat("down", "status") == 2

    for i in (3, 4):
        assert envoy.post_event(_event(i)).status == 200
    letters = dlq.wait_for(4)
    assert sorted((l.json()["request_id"], l.json()["reason"], l.json()["attempts"]) for l in letters[2:]) == [
        ("req-3", "webhook_failed", 0), ("req-4", "webhook_failed", 0)]
    envoy.settle(grace=1 + JITTER + GRACE)
    assert connect_failures(envoy, "down") == 6
    assert dlq.count() == 4
    wait_metrics(envoy, "down", matched=4, delivered=0, failed=2, dropped=2, retried=4, dead_lettered=4, lost=0)


def test_becoming_failed_stops_waiting_retries(start_envoy, hooks, make_server):
    """Event 1 fails and waits for its retry; event 2 gets 410, which makes the webhook
    FAILED: event 1's retry is not made, it goes to the dead letters."""
    dlq = make_server("dead-letters")
    hooks.set_script("/hooks/stops", [500, 410])
    plugin = plugin_config([webhook("stops")], delivery={"retry_schedule_s": [2]}, dead_letter=_dead_letter())
    envoy = start_envoy(plugin, clusters={"dlq": dlq.port})
    assert envoy.post_event(_event(1)).status == 200
    hooks.wait_for(1)
    wait_until(lambda: pending_of(envoy, "stops")["pending"] == 1, message="event 1's retry to be pending")
    assert envoy.post_event(_event(2)).status == 200
    letters = dlq.wait_for(2)
    by_request = {l.json()["request_id"]: l.json() for l in letters}
    assert (by_request["req-2"]["reason"], by_request["req-2"]["attempts"]) == ("gone", 1)
    assert (by_request["req-1"]["reason"], by_request["req-1"]["attempts"]) == ("webhook_failed", 1)
    assert by_request["req-1"]["last_error"] == "HTTP 500"
    assert envoy.hook_status("stops")["status"] == "FAILED"
    wait_until(lambda: pending_of(envoy, "stops")["pending"] == 0, message="nothing pending")
    # Event 1's retry was due within 2.4 s of its first attempt.
    time.sleep(max(0.0, hooks.requests()[0].received_at + 2 * (1 + JITTER) + GRACE - time.monotonic()))
    assert hooks.count() == 2
    assert dlq.count() == 2
    wait_metrics(envoy, "stops", matched=2, delivered=0, failed=1, dropped=1, retried=0, dead_lettered=2, lost=0)


# --------------------------------------------------------------------------- signatures


def test_signature_single_secret_verifies(start_envoy, hooks):
    secret = _secret()
    plugin = plugin_config([webhook("signed", secret=secret)])
    envoy = start_envoy(plugin)
    before = time.time()
    assert envoy.post_event(_event(1)).status == 200
    (req,) = hooks.wait_for(1)
    assert req.body == _event(1)
    assert req.headers["webhook-id"].startswith("msg_")
    assert int(before) <= int(req.headers["webhook-timestamp"]) <= req.received_wall
    assert req.headers["webhook-signature"].startswith("v1,")
    assert " " not in req.headers["webhook-signature"]
    assert Webhook(secret).verify(req.body, req.headers) == json.loads(_event(1))
    # The check can fail: another secret, a changed body, another id or timestamp.
    with pytest.raises(WebhookVerificationError):
        Webhook(_secret()).verify(req.body, req.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(req.body.replace(b"req-1", b"req-2"), req.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(req.body, dict(req.headers, **{"webhook-id": "msg_other"}))
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(req.body, dict(req.headers, **{
            "webhook-timestamp": str(int(req.headers["webhook-timestamp"]) + 1)}))

    # Another event gets another id; an unsigned webhook gets no signature headers.
    assert envoy.post_event(_event(2)).status == 200
    (_, other) = hooks.wait_for(2)
    assert other.headers["webhook-id"] != req.headers["webhook-id"]
    Webhook(secret).verify(other.body, other.headers)


def test_unsigned_webhook_has_no_signature_but_a_webhook_id(start_envoy, hooks):
    envoy = start_envoy(plugin_config([webhook("plain")]))
    assert envoy.post_event(_event(1)).status == 200
    (req,) = hooks.wait_for(1)
    assert not {"webhook-timestamp", "webhook-signature"} & set(req.headers)
    # Receivers de-duplicate on it, signed or not.
    assert req.headers["webhook-id"].startswith("msg_")


def test_signature_rotation_via_secret_env(start_envoy, hooks):
    old, new = _secret(), _secret()
    plugin = plugin_config([webhook("rotating", secret_env="WEBHOOK_SECRETS")])
    envoy = start_envoy(plugin, env={"WEBHOOK_SECRETS": f"{old} {new}"}, host_env_keys=["WEBHOOK_SECRETS"])
    assert envoy.post_event(_event(1)).status == 200
    (req,) = hooks.wait_for(1)
    signatures = req.headers["webhook-signature"].split(" ")
    assert len(signatures) == 2 and all(s.startswith("v1,") for s in signatures), signatures
    Webhook(old).verify(req.body, req.headers)
    Webhook(new).verify(req.body, req.headers)
    # Each signature is its own secret's, in the order the secrets are listed.
    for secret, mine, theirs in ((old, signatures[0], signatures[1]), (new, signatures[1], signatures[0])):
        Webhook(secret).verify(req.body, dict(req.headers, **{"webhook-signature": mine}))
        with pytest.raises(WebhookVerificationError):
            Webhook(secret).verify(req.body, dict(req.headers, **{"webhook-signature": theirs}))
    with pytest.raises(WebhookVerificationError):
        Webhook(_secret()).verify(req.body, req.headers)


def test_signature_rotation_via_literal_secrets(start_envoy, hooks):
    old, new = _secret(), _secret()
    envoy = start_envoy(plugin_config([webhook("rotating", secret=f"{old} {new}")]))
    assert envoy.post_event(_event(1)).status == 200
    (req,) = hooks.wait_for(1)
    signatures = req.headers["webhook-signature"].split(" ")
    assert len(signatures) == 2
    for secret, mine in ((old, signatures[0]), (new, signatures[1])):
        Webhook(secret).verify(req.body, dict(req.headers, **{"webhook-signature": mine}))


def test_signature_id_stable_and_timestamp_per_attempt(start_envoy, hooks):
    secret = _secret()
    hooks.set_script("/hooks/signed", [500, 503, 200])
    plugin = plugin_config([webhook("signed", secret=secret)], delivery={"retry_schedule_s": [2, 2]})
    envoy = start_envoy(plugin)
    assert envoy.post_event(_event(1)).status == 200
    got = hooks.wait_for(3, timeout=12)
    assert len({r.headers["webhook-id"] for r in got}) == 1
    stamps = [int(r.headers["webhook-timestamp"]) for r in got]
    for r, stamp in zip(got, stamps):
        # The attempt's own time (whole seconds, taken just before the call).
        assert r.received_wall - 1.5 <= stamp <= r.received_wall, (stamp, r.received_wall)
        Webhook(secret).verify(r.body, r.headers)
    # 1.6 s to 2.4 s apart: never the same second.
    assert stamps[0] < stamps[1] < stamps[2], stamps
    assert len({r.headers["webhook-signature"] for r in got}) == 3
    wait_metrics(envoy, "signed", matched=1, delivered=1, retried=2)


def test_dead_letter_message_id_is_the_webhook_id_header(start_envoy, hooks, make_server):
    dlq = make_server("dead-letters")
    secret = _secret()
    hooks.set_reply("/hooks/signed", status=500)
    plugin = plugin_config([webhook("signed", secret=secret)], delivery={"retry_schedule_s": [1]},
                           dead_letter=_dead_letter())
    envoy = start_envoy(plugin, clusters={"dlq": dlq.port})
    assert envoy.post_event(_event(1)).status == 200
    (letter,) = dlq.wait_for(1)
    attempts = hooks.requests()
    assert len(attempts) == 2
    assert letter.json()["message_id"] == attempts[0].headers["webhook-id"] == attempts[1].headers["webhook-id"]
    assert letter.json()["attempts"] == 2
    # The dead-letter call is not signed with the webhook's secret.
    assert "webhook-signature" not in letter.headers
    wait_metrics(envoy, "signed", matched=1, failed=1, retried=1, dead_lettered=1, lost=0)


def test_secret_env_not_set_refuses_the_configuration(start_envoy):
    plugin = plugin_config([webhook("signed", secret_env="NO_SUCH_SECRET_VAR")])
    envoy = start_envoy(plugin, wait=False, host_env_keys=["NO_SUCH_SECRET_VAR"])
    assert envoy.wait_exit(60) not in (0, None)
    lines = envoy.plugin_log_lines()
    assert any("signed" in l and "secret_env" in l and "NO_SUCH_SECRET_VAR" in l for l in lines), lines


def test_a_bad_secret_is_refused_without_echoing_it(start_envoy):
    plugin = plugin_config([webhook("signed", secret="whsec_!!not-base64-SECRETVALUE")])
    envoy = start_envoy(plugin, wait=False)
    assert envoy.wait_exit(60) not in (0, None)
    lines = envoy.plugin_log_lines()
    assert any("signed" in l and "secret" in l for l in lines), lines
    assert "SECRETVALUE" not in envoy.log_text()


# --------------------------------------------------------------------------- bounds


def test_burst_over_max_pending_is_fully_accounted_for(start_envoy, make_server):
    """30 events in one request against a dead receiver, max_pending 5: the 25 oldest
    pending deliveries are evicted to the dead letters, the other 5 exhaust their retries."""
    dlq = make_server("dead-letters")
    n, bound = 30, 5
    plugin = plugin_config([webhook("burst", cluster="down")],
                           delivery={"retry_schedule_s": [2, 2], "max_pending": bound,
                                     "failure_threshold": 1000, "failing_window_s": 3600},
                           dead_letter=_dead_letter())
    envoy = start_envoy(plugin, clusters={"down": closed_port(), "dlq": dlq.port})
    events = [json.loads(_event(i)) for i in range(n)]
    assert envoy.post_event(events).status == 200

    wait_metrics(envoy, "burst", settled=False, matched=n, dropped=n - bound)
    p = pending_of(envoy, "burst")
    assert p["pending"] <= bound
    m = wait_metrics(envoy, "burst", timeout=15, matched=n, delivered=0, failed=bound, dropped=n - bound,
                     retried=2 * bound, dead_lettered=n, lost=0)
    assert m["failed"] + m["dropped"] == m["dead_lettered"] + m["lost"] == n
    letters = [l.json() for l in dlq.wait_for(n)]
    envoy.settle(grace=GRACE)
    assert dlq.count() == m["dead_lettered"] == n
    assert sorted(l["request_id"] for l in letters) == sorted(f"req-{i}" for i in range(n))  # each once
    reasons = sorted((l["reason"], l["attempts"]) for l in letters)
    assert reasons == [("pending_limit", 1)] * (n - bound) + [("retries_exhausted", 3)] * bound
    assert all(l["event"] == events[int(l["request_id"][4:])] for l in letters)
    assert connect_failures(envoy, "down") == (n - bound) + 3 * bound
    assert pending_of(envoy, "burst")["pending"] == 0


def test_the_oldest_pending_delivery_is_evicted(start_envoy, hooks, make_server):
    """max_pending 2: events failing one after the other push out the oldest waiting one."""
    dlq = make_server("dead-letters")
    hooks.set_reply("/hooks/fifo", status=500)
    plugin = plugin_config([webhook("fifo")],
                           delivery={"retry_schedule_s": [5], "max_pending": 2, "failure_threshold": 1000},
                           dead_letter=_dead_letter())
    envoy = start_envoy(plugin, clusters={"dlq": dlq.port})
    for i in range(4):
        assert envoy.post_event(_event(i)).status == 200
        hooks.wait_for(i + 1)
        wait_until(lambda: pending_of(envoy, "fifo")["pending"] == min(i + 1, 2), 3,
                   message=f"{min(i + 1, 2)} pending after event {i}")
        # Each eviction's dead letter is awaited before the next event: two letters in
        # flight at once may reach the receiver in either order (order is not promised).
        dlq.wait_for(max(i - 1, 0))
    letters = dlq.wait_for(2)
    assert [(l.json()["request_id"], l.json()["reason"], l.json()["attempts"]) for l in letters] == [
        ("req-0", "pending_limit", 1), ("req-1", "pending_limit", 1)]
    assert [l.json()["last_error"] for l in letters] == ["HTTP 500"] * 2
    wait_metrics(envoy, "fifo", settled=False, matched=4, dropped=2, dead_lettered=2, failed=0)


def test_max_pending_bytes_evicts_the_oldest(start_envoy, hooks, make_server):
    """Events of ~1.5 KB against a receiver answering 500, max_pending_bytes 4096: two
    pending deliveries fit, a third pushes the oldest out."""
    dlq = make_server("dead-letters")
    hooks.set_reply("/hooks/big", status=500)
    n = 5
    plugin = plugin_config([webhook("big")],
                           delivery={"retry_schedule_s": [2], "max_pending_bytes": 4096, "failure_threshold": 1000},
                           dead_letter=_dead_letter())
    envoy = start_envoy(plugin, clusters={"dlq": dlq.port})
    events = [json.loads(_event(i, padding="x" * 1400)) for i in range(n)]
    assert envoy.post_event(events).status == 200
    m = wait_metrics(envoy, "big", timeout=10, matched=n, dropped=n - 2, failed=2, retried=2, dead_lettered=n)
    assert m["lost"] == 0 and m["delivered"] == 0
    letters = [l.json() for l in dlq.wait_for(n)]
    assert sorted(l["reason"] for l in letters) == ["pending_limit"] * (n - 2) + ["retries_exhausted"] * 2
    assert hooks.count() == n + 2


def test_max_in_flight_makes_deliveries_wait_not_drop(start_envoy, hooks):
    """max_in_flight 1 and a receiver taking 0.3 s: 4 deliveries are made one after the
    other, none dropped, none counted as a retry."""
    hooks.set_reply("/hooks/slow", delay=0.3)
    plugin = plugin_config([webhook("slow")], delivery={"retry_schedule_s": [1], "max_in_flight": 1})
    envoy = start_envoy(plugin)
    events = [json.loads(_event(i)) for i in range(4)]
    assert envoy.post_event(events).status == 200
    got = hooks.wait_for(4, timeout=10)
    assert all(g >= 0.3 - 0.05 for g in gaps(got)), gaps(got)  # never two at once
    assert sorted(r.body for r in got) == sorted(json.dumps(e).encode() for e in events)
    wait_metrics(envoy, "slow", matched=4, delivered=4, dropped=0, retried=0, failed=0)


# --------------------------------------------------------------------------- admin: pending


def test_pending_view_shows_the_backlog_across_workers(start_envoy, hooks):
    n = 8
    hooks.set_script("/hooks/backlog", [500] * n + [200])
    plugin = plugin_config([webhook("backlog"), webhook("idle", realm="metadata")],
                           delivery={"retry_schedule_s": [3], "failure_threshold": 1000})
    envoy = start_envoy(plugin, concurrency=2)
    body = pending(envoy)
    assert body["webhooks"] == [
        {"id": "backlog", "pending": 0, "dead_letters_pending": 0, "next_due_at": None},
        {"id": "idle", "pending": 0, "dead_letters_pending": 0, "next_due_at": None}]

    for i in range(n):  # a new connection each: spread over both workers
        assert envoy.post_event(_event(i)).status == 200
    first = hooks.wait_for(n)[0]
    seen: dict = {}

    def backlog() -> bool:
        seen["body"] = pending(envoy)
        return seen["body"]["webhooks"][0]["pending"] == n

    wait_until(backlog, 5, 0.05, message=lambda: f"{n} pending, last seen {seen.get('body')}")
    now = time.time()
    body = seen["body"]
    entry, idle = body["webhooks"]
    assert (entry["id"], entry["dead_letters_pending"]) == ("backlog", 0)
    # In the future (whole seconds, rounded down), and within the schedule.
    assert entry["next_due_at"] + 1 > now, (entry, now)
    assert entry["next_due_at"] >= int(first.received_wall + 3 * (1 - JITTER)) - 1, entry
    assert entry["next_due_at"] <= first.received_wall + 3 * (1 + JITTER) + 1, entry
    assert idle == {"id": "idle", "pending": 0, "dead_letters_pending": 0, "next_due_at": None}
    assert sum(envoy.connections_per_worker()) >= n

    hooks.wait_for(2 * n, timeout=10)
    wait_until(lambda: pending(envoy)["webhooks"][0]["pending"] == 0, 5, message="the backlog to clear")
    entry = pending(envoy)["webhooks"][0]
    assert entry == {"id": "backlog", "pending": 0, "dead_letters_pending": 0, "next_due_at": None}
    wait_metrics(envoy, "backlog", matched=n, delivered=n, retried=n, failed=0)


@pytest.mark.parametrize("concurrency", [1, 2])
def test_pending_view_counts_the_workers_with_a_backlog(start_envoy, hooks, concurrency):
    """`workers_with_backlog` is the number of Envoy workers with deliveries waiting."""
    hooks.set_script("/hooks/x", [500, 200])
    envoy = start_envoy(plugin_config([webhook("x")], delivery={"retry_schedule_s": [2]}), concurrency=concurrency)
    assert pending(envoy)["workers_with_backlog"] == 0
    assert envoy.post_event(_event(1)).status == 200
    wait_until(lambda: pending(envoy)["workers_with_backlog"] == 1, 3, 0.05, message="one worker with a backlog")
    hooks.wait_for(2, timeout=10)
    wait_until(lambda: pending(envoy)["workers_with_backlog"] == 0, 3, 0.05, message="no backlog left")


def test_pending_view_needs_the_token_and_get(start_envoy):
    envoy = start_envoy(plugin_config([webhook("x")], delivery={"retry_schedule_s": [1]}))
    assert envoy.webhooks_admin("GET", "/pending", token=None).status == 401
    assert envoy.webhooks_admin("GET", "/pending", token="wrong").status == 401
    assert envoy.webhooks_admin("POST", "/pending").status == 405


# --------------------------------------------------------------------------- accounting


def test_configured_failed_webhook_dead_letters_without_calling(start_envoy, hooks, make_server):
    dlq = make_server("dead-letters")
    plugin = plugin_config([webhook("off", status="FAILED")], delivery={"retry_schedule_s": [1]},
                           dead_letter=_dead_letter())
    envoy = start_envoy(plugin, clusters={"dlq": dlq.port})
    assert envoy.post_event(_event(1)).status == 200
    (letter,) = dlq.wait_for(1)
    assert (letter.json()["reason"], letter.json()["attempts"], letter.json()["last_error"]) == (
        "webhook_failed", 0, None)
    wait_metrics(envoy, "off", matched=1, dropped=1, dead_lettered=1, delivered=0, failed=0, lost=0)
    envoy.settle(grace=GRACE)
    assert hooks.count() == 0


def test_accounting_holds_when_response_2xx_withholds_deliveries(start_envoy, upstream, hooks):
    """deliver_on response_2xx and an upstream answering 500: the matched delivery is not
    made. Once settled, every matched delivery is still delivered, failed or dropped."""
    upstream.set_default(status=500)
    plugin = plugin_config([webhook("after-ok")], events={"deliver_on": "response_2xx"},
                           delivery={"retry_schedule_s": [1]})
    envoy = start_envoy(plugin)
    assert envoy.post_event(_event(1)).status == 500
    envoy.settle(events_seen=1)
    assert hooks.count() == 0
    m = wait_metrics(envoy, "after-ok", timeout=2, matched=1, delivered=0, failed=0)
    assert envoy.hook_stat("after-ok", "withheld") == 1, m


# --------------------------------------------------------------------------- no / failing dead-letter destination


def test_without_dead_letter_destination_exhausted_is_lost_and_logged(start_envoy, hooks):
    hooks.set_reply("/hooks/lossy", status=500)
    plugin = plugin_config([webhook("lossy")], delivery={"retry_schedule_s": [1], "failure_threshold": 5})
    envoy = start_envoy(plugin)
    assert envoy.post_event(_event("lost-7")).status == 200
    wait_metrics(envoy, "lossy", matched=1, failed=1, lost=1, dead_lettered=0, dropped=0, retried=1, delivered=0)
    assert hooks.count() == 2
    line = wait_until(lambda: [l for l in envoy.plugin_log_lines() if "req-lost-7" in l],
                      message="a log line with the request_id")[0]
    assert "lossy" in line and "HTTP 500" in line, line
    assert envoy.hook_status("lossy")["status"] == "FAILING"


def test_dead_letter_call_is_retried_on_the_schedule(start_envoy, hooks, make_server):
    dlq = make_server("dead-letters")
    dlq.set_script(DLQ_PATH, [503, 200])
    hooks.set_reply("/hooks/h", status=500)
    plugin = plugin_config([webhook("h")], delivery={"retry_schedule_s": [1]}, dead_letter=_dead_letter())
    envoy = start_envoy(plugin, clusters={"dlq": dlq.port})
    assert envoy.post_event(_event(1)).status == 200
    got = dlq.wait_for(2, timeout=10)
    assert_gap(gaps(got)[0], 1)
    assert got[0].body == got[1].body
    assert got[1].json()["reason"] == "retries_exhausted"
    m = wait_metrics(envoy, "h", matched=1, failed=1, dead_lettered=1, lost=0)
    assert m["retried"] == 1  # the dead-letter retry is not the webhook's


def test_dead_letter_destination_down_is_lost_and_logged(start_envoy, hooks):
    hooks.set_reply("/hooks/h", status=500)
    # 2 s: the pending view is published on the ticks, at least every second, while the
    # dead letter waits.
    plugin = plugin_config([webhook("h")], delivery={"retry_schedule_s": [2]}, dead_letter=_dead_letter())
    envoy = start_envoy(plugin, clusters={"dlq": closed_port()})
    assert envoy.post_event(_event("dl-down")).status == 200
    hooks.wait_for(2, timeout=5)
    wait_until(lambda: connect_failures(envoy, "dlq") >= 1, message="the first dead-letter attempt")
    entry = wait_until(lambda: (e := pending_of(envoy, "h"))["dead_letters_pending"] == 1 and e, 2,
                       message="the dead letter waiting for its retry")
    assert entry["pending"] == 0 and entry["next_due_at"] + 1 > time.time(), entry
    wait_metrics(envoy, "h", matched=1, failed=1, dead_lettered=0, lost=1)
    assert connect_failures(envoy, "dlq") == 2
    line = wait_until(lambda: [l for l in envoy.plugin_log_lines() if "req-dl-down" in l],
                      message="a log line with the request_id")[0]
    assert "not delivered" in line, line
    wait_until(lambda: pending_of(envoy, "h")["dead_letters_pending"] == 0, 3, message="nothing pending")


# --------------------------------------------------------------------------- trace context


def test_the_platform_requests_trace_context_goes_with_every_attempt_and_the_dead_letter(
        start_envoy, hooks, make_server):
    """delivery.propagate_headers (default traceparent and tracestate): copied into every
    attempt, including the retry made after the platform's request ended, and into the dead
    letter; the platform's credentials never are; a request without them sends none."""
    dlq = make_server("dead-letters")
    hooks.set_reply("/hooks/traced", status=503)
    plugin = plugin_config([webhook("traced")], delivery={"retry_schedule_s": [1]},
                           dead_letter=_dead_letter())
    envoy = start_envoy(plugin, clusters={"dlq": dlq.port})
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    response = envoy.post_event(_event(1), headers={
        "traceparent": traceparent, "tracestate": "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
        "authorization": "Bearer platform-secret", "cookie": "session=platform"})
    assert response.status == 200
    first, retry = hooks.wait_for(2, "/hooks/traced")
    (letter,) = dlq.wait_for(1)
    for call in (first, retry, letter):
        assert call.headers["traceparent"] == traceparent, call.headers
        assert call.headers["tracestate"] == "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
        assert "authorization" not in call.headers and "cookie" not in call.headers
    assert letter.json()["reason"] == "retries_exhausted"

    hooks.clear()
    assert envoy.post_event(_event(2)).status == 200
    untraced = hooks.wait_for(1, "/hooks/traced")[0]
    assert "traceparent" not in untraced.headers and "tracestate" not in untraced.headers
