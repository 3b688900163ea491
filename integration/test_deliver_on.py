"""events.deliver_on: "request" delivers once the request body is complete, whatever the
upstream answers; "response_2xx" only after the upstream answered 2xx."""

from __future__ import annotations

import json

from harness import plugin_config, sha256, webhook


def _event(request_id: str) -> bytes:
    return json.dumps({"event_type": "assets", "realm": "formats", "operation": "update",
                       "object_id": "o", "request_id": request_id, "data": {}}).encode()


def test_response_2xx_delivers_only_after_upstream_2xx(start_envoy, upstream, hooks):
    envoy = start_envoy(plugin_config([webhook("after-ok")], events={"deliver_on": "response_2xx"}))

    upstream.set_default(status=500, body=b"platform-broke")
    r = envoy.post_event(_event("rejected"))
    assert (r.status, r.body) == (500, b"platform-broke")  # the platform's answer, untouched
    assert upstream.wait_for(1)[0].sha256 == sha256(_event("rejected"))

    upstream.set_default(status=201, body=b"created")
    r = envoy.post_event(_event("accepted"))
    assert (r.status, r.body) == (201, b"created")
    (rec,) = hooks.wait_for(1)
    assert rec.json()["request_id"] == "accepted"
    assert rec.body == _event("accepted")

    upstream.set_default(status=404, body=b"nope")
    assert envoy.post_event(_event("not-found")).status == 404
    envoy.settle(events_seen=3)
    assert [h.json()["request_id"] for h in hooks.requests()] == ["accepted"]


def test_response_2xx_with_chunked_request_and_slow_upstream(start_envoy, upstream, hooks):
    envoy = start_envoy(plugin_config([webhook("after-ok")], events={"deliver_on": "response_2xx"}))
    upstream.set_default(status=200, delay=0.5)
    body = _event("slow-ok")
    r = envoy.request("POST", "/api/v1/events", [body[:10], body[10:]], {"content-type": "application/json"},
                      chunked=True)
    assert r.status == 200
    (rec,) = hooks.wait_for(1)
    assert rec.body == body
    # not before the upstream answered
    assert rec.received_at >= upstream.requests()[0].received_at + 0.4


def test_request_mode_delivers_even_if_upstream_fails(start_envoy, upstream, hooks):
    envoy = start_envoy(plugin_config([webhook("on-request")], events={"deliver_on": "request"}))
    upstream.set_default(status=503, body=b"down")
    r = envoy.post_event(_event("fire-and-forget"))
    assert (r.status, r.body) == (503, b"down")
    (rec,) = hooks.wait_for(1)
    assert rec.json()["request_id"] == "fire-and-forget"


def test_request_mode_is_the_default(start_envoy, upstream, hooks):
    envoy = start_envoy(plugin_config([webhook("default-mode")]))
    upstream.set_default(status=500)
    assert envoy.post_event(_event("default")).status == 500
    hooks.wait_for(1)
