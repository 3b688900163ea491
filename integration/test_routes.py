"""Envoy's routes choose the filter's requests (docs/routes.md): the Wasm filter is
``disabled`` in the connection manager and enabled per route, and ``events.selected_by_routes``
tells it that every request reaching it carries events unless it is the admin API's.

What a user relies on: events on the event route are delivered; the same events on any
other route are not even looked at (the filter is not there: in this mode it would take any
request it sees for events); admin paths are answered, in any spelling Envoy routes there,
and never reach the platform; a request without a body is counted as nothing."""

from __future__ import annotations

import json

from harness import (ADMIN_PREFIX, ADMIN_TOKEN, GRACE, enabled_on_routes, envoy_config, free_port,
                     plugin_config, webhook)

EVENTS_PATH = "/api/v1/events"
POST_TO_EVENTS = {"prefix": EVENTS_PATH, "headers": [{"name": ":method", "string_match": {"exact": "POST"}}]}


def _event(request_id: str) -> bytes:
    return json.dumps({"event_type": "assets", "realm": "entity", "operation": "create",
                       "object_id": "o1", "request_id": request_id, "data": {}}).encode()


def _start(launch_envoy, upstream, hooks, event_routes, admin=False):
    plugin = plugin_config([webhook("all")], admin=admin, events={"selected_by_routes": True})
    config = envoy_config(listener_port=free_port(), admin_port=free_port(), upstream_port=upstream.port,
                          plugin=plugin, clusters={"hooks": hooks.port})
    served = [ADMIN_PREFIX] if admin else []
    return launch_envoy(None, upstream=upstream, config=enabled_on_routes(config, event_routes, served))


def test_only_the_event_route_reaches_the_filter(launch_envoy, wasm, upstream, hooks):
    envoy = _start(launch_envoy, upstream, hooks, [POST_TO_EVENTS])
    assert envoy.post_event(_event("on-route")).status == 200
    assert envoy.post_event(_event("other-path"), path="/api/v1/other").status == 200
    assert envoy.request("PUT", EVENTS_PATH, _event("other-method"),
                         {"content-type": "application/json"}).status == 200
    assert envoy.request("GET", EVENTS_PATH).status == 200
    delivered = hooks.wait_for(1, "/hooks/all")
    envoy.settle(events_seen=1)
    assert [json.loads(r.body)["request_id"] for r in hooks.requests()] == ["on-route"]
    assert json.loads(delivered[0].body)["request_id"] == "on-route"
    assert envoy.wasm_stat("envoy_webhooks.events_seen") == 1
    assert envoy.wasm_stat("envoy_webhooks.events_invalid") == 0
    # The platform got every request, unchanged.
    assert sorted((r.method, r.path) for r in upstream.requests()) == sorted(
        [("POST", EVENTS_PATH), ("POST", "/api/v1/other"), ("PUT", EVENTS_PATH), ("GET", EVENTS_PATH)])
    assert [r.body for r in upstream.requests() if r.method == "POST" and r.path == EVENTS_PATH] == [
        _event("on-route")]


def test_a_route_that_takes_requests_without_a_body_counts_nothing(launch_envoy, wasm, upstream, hooks):
    # Every method on the event path: GETs and empty POSTs reach the filter too.
    envoy = _start(launch_envoy, upstream, hooks, [{"prefix": EVENTS_PATH}])
    assert envoy.request("GET", EVENTS_PATH).status == 200
    assert envoy.request("POST", EVENTS_PATH, b"", {"content-type": "application/json"}).status == 200
    assert envoy.post_event(_event("with-body")).status == 200
    hooks.wait_for(1, "/hooks/all")
    envoy.settle(events_seen=1)
    assert envoy.wasm_stat("envoy_webhooks.events_seen") == 1
    assert envoy.wasm_stat("envoy_webhooks.events_invalid") == 0
    assert len(upstream.requests()) == 3


def test_admin_routes_are_answered_and_never_reach_the_platform(launch_envoy, wasm, upstream, hooks):
    envoy = _start(launch_envoy, upstream, hooks, [POST_TO_EVENTS], admin=True)
    status = envoy.webhooks_admin("GET", "/status")
    assert status.status == 200, status.body
    assert "all" in json.dumps(status.json())
    for path in ["/status", "/../webhooks-admin/status"]:
        assert envoy.webhooks_admin("GET", path, token=None).status == 401
    # Envoy's route matches the prefix in any case, as the filter does.
    unauthorised = envoy.request("GET", "/WEBHOOKS-ADMIN/status")
    assert unauthorised.status == 401, unauthorised.body
    # A path that only begins with the same letters is the platform's.
    assert envoy.request("GET", ADMIN_PREFIX + "x/status").status == 200
    assert envoy.post_event(_event("with-admin")).status == 200
    hooks.wait_for(1, "/hooks/all")
    envoy.settle(events_seen=1, grace=GRACE)
    assert [(r.method, r.path) for r in upstream.requests()] == [("GET", ADMIN_PREFIX + "x/status"),
                                                               ("POST", EVENTS_PATH)]
