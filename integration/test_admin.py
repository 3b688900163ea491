"""The filter's admin API under admin.path_prefix: bearer token, status, enable."""

from __future__ import annotations

import json

from harness import ADMIN_PREFIX, ADMIN_TOKEN, plugin_config, wait_until, webhook


def _event(i: int) -> bytes:
    return json.dumps({"event_type": "assets", "realm": "formats", "operation": "update",
                       "object_id": f"obj-{i}", "request_id": f"req-{i}", "data": {}}).encode()


HOOKS = [
    webhook("first", realm="formats"),
    webhook("second", event_type="collections", status="DISABLED"),
    webhook("third", realm="formats", status="FAILED"),
    webhook("fourth", realm="formats", status="FAILING"),
]


def test_status_lists_webhooks_in_config_order(start_envoy, upstream):
    envoy = start_envoy(plugin_config(HOOKS))
    r = envoy.webhooks_admin("GET", "/status")
    assert r.status == 200
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert [w["id"] for w in body["webhooks"]] == ["first", "second", "third", "fourth"]
    by_id = {w["id"]: w for w in body["webhooks"]}
    for w in body["webhooks"]:
        assert set(w) >= {"id", "name", "status", "configured_status", "consecutive_failures", "first_failed_at",
                          "last_error", "delivered", "failed"}
        assert w["name"] == f"webhook {w['id']}"
        assert (w["consecutive_failures"], w["delivered"], w["failed"]) == (0, 0, 0)
        assert not w["last_error"]
    assert [(by_id[i]["status"], by_id[i]["configured_status"]) for i in ("first", "second", "third", "fourth")] == [
        ("ENABLED", "ENABLED"), ("DISABLED", "DISABLED"), ("FAILED", "FAILED"), ("FAILING", "FAILING")]
    assert not by_id["first"]["first_failed_at"]
    assert upstream.count() == 0


BAD_AUTH = [None, "Bearer wrong-token", f"Basic {ADMIN_TOKEN}", f"Bearer {ADMIN_TOKEN}x", "Bearer",
            f"bearer{ADMIN_TOKEN}", f"Bearer  {ADMIN_TOKEN[:-1]}"]


def test_unauthorized(start_envoy, upstream, hooks):
    envoy = start_envoy(plugin_config(HOOKS))
    for auth in BAD_AUTH:
        for method, path in [("GET", "/status"), ("POST", "/webhooks/third/enable"),
                             ("POST", "/webhooks/nope/enable"), ("GET", "/anything"), ("GET", "")]:
            r = envoy.webhooks_admin(method, path, token=None, auth_header=auth)
            assert r.status == 401, (auth, method, path, r.status, r.body)
            assert b"first" not in r.body and b"third" not in r.body  # and nothing else
    # nothing changed, nothing reached the platform
    assert envoy.hook_status("third")["status"] == "FAILED"
    envoy.settle()
    assert upstream.count() == 0
    assert hooks.count() == 0


def test_admin_requests_never_reach_upstream(start_envoy, upstream):
    envoy = start_envoy(plugin_config(HOOKS))
    paths = ["/status", "/status?verbose=1", "/webhooks/first/enable", "/no-such-endpoint", "/", ""]
    for method in ("GET", "POST", "PUT"):
        for path in paths:
            r = envoy.webhooks_admin(method, path, body=_event(1) if method != "GET" else None)
            assert r.status < 500, (method, path, r.status)
            assert r.body != b"platform-ok"
    # other paths still go to the platform
    assert envoy.request("GET", "/webhooks-administration").status == 200
    got = upstream.wait_for(1)
    envoy.settle()
    assert [g.path for g in upstream.requests()] == ["/webhooks-administration"], got


def test_enable_unknown_id_is_404(start_envoy):
    envoy = start_envoy(plugin_config(HOOKS))
    assert envoy.enable("no-such-hook").status == 404
    assert envoy.webhooks_admin("GET", "/webhooks/first/nonsense").status == 404


def test_enable_failed_webhook(start_envoy, hooks):
    hooks.set_reply("/hooks/first", status=500)
    plugin = plugin_config(HOOKS, delivery={"failure_threshold": 2, "failing_window_s": 3600})
    envoy = start_envoy(plugin)
    for i in (1, 2):
        assert envoy.post_event(_event(i)).status == 200
        wait_until(lambda: envoy.hook_status("first")["failed"] == i, message=f"first.failed == {i}")
    assert envoy.hook_status("first")["status"] == "FAILED"

    hooks.set_reply("/hooks/first", status=200)
    r = envoy.enable("first")
    assert r.status == 200
    e = envoy.hook_status("first")
    assert e["status"] == "ENABLED" and e["consecutive_failures"] == 0
    assert envoy.hook_stat("first", "status") == 0

    before = hooks.count("/hooks/first")
    assert envoy.post_event(_event(3)).status == 200
    hooks.wait_for(before + 1, "/hooks/first")
    e = wait_until(lambda: (x := envoy.hook_status("first"))["delivered"] == 1 and x, message="first delivered")
    assert e["status"] == "ENABLED"


def test_enable_configured_failed_and_failing(start_envoy, hooks):
    envoy = start_envoy(plugin_config(HOOKS))
    assert envoy.post_event(_event(1)).status == 200
    # FAILED from the configuration: not called; FAILING from the configuration: called.
    hooks.wait_for(1, "/hooks/fourth")
    hooks.wait_for(1, "/hooks/first")
    envoy.settle()
    assert hooks.count("/hooks/third") == 0

    assert envoy.enable("third").status == 200
    e = envoy.hook_status("third")
    assert (e["status"], e["configured_status"]) == ("ENABLED", "FAILED")
    assert envoy.post_event(_event(2)).status == 200
    (rec,) = hooks.wait_for(1, "/hooks/third")
    assert rec.json()["request_id"] == "req-2"


def test_enable_is_seen_by_every_worker(start_envoy, hooks):
    plugin = plugin_config([webhook("solo", realm="formats", status="FAILED")])
    envoy = start_envoy(plugin, concurrency=2)
    assert envoy.enable("solo").status == 200
    for i in range(8):  # new connection each: both workers
        assert envoy.post_event(_event(i)).status == 200
    hooks.wait_for(8, "/hooks/solo")
    per_worker = envoy.connections_per_worker()
    assert all(c > 0 for c in per_worker), f"connections per worker: {per_worker}"


def test_token_from_environment(start_envoy, upstream):
    plugin = plugin_config([webhook("first")], admin={"path_prefix": "/hooks-admin", "token_env": "WEBHOOKS_TOKEN"})
    envoy = start_envoy(plugin, env={"WEBHOOKS_TOKEN": "from-env-123"}, host_env_keys=["WEBHOOKS_TOKEN"])
    r = envoy.webhooks_admin("GET", "/status", token="from-env-123", prefix="/hooks-admin")
    assert r.status == 200
    assert [w["id"] for w in r.json()["webhooks"]] == ["first"]
    assert envoy.webhooks_admin("GET", "/status", token="WEBHOOKS_TOKEN", prefix="/hooks-admin").status == 401
    assert envoy.webhooks_admin("GET", "/status", token=None, prefix="/hooks-admin").status == 401
    # the default prefix is not special here
    assert envoy.webhooks_admin("GET", "/status", token="from-env-123").status == 200
    assert [r.path for r in upstream.requests()] == [f"{ADMIN_PREFIX}/status"]


def test_no_admin_section_means_no_admin_api(start_envoy, upstream):
    envoy = start_envoy(plugin_config([webhook("first")], admin=False))
    r = envoy.webhooks_admin("GET", "/status")
    assert (r.status, r.body) == (200, b"platform-ok")
    assert upstream.wait_for(1)[0].path == f"{ADMIN_PREFIX}/status"
