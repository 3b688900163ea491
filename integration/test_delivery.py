"""Delivery: what a matching event makes the filter send, byte for byte."""

from __future__ import annotations

import json

from harness import fixture_bytes, plugin_config, sha256, wait_until, webhook

FORMATS = fixture_bytes("seed-formats-event.json")
METADATA = fixture_bytes("seed-metadata-event.json")


def test_exact_delivery(start_envoy, upstream, hooks, make_server):
    transcoder = make_server("transcoder")
    plugin = plugin_config([
        webhook("fmt-hook", name="Proxies to transcoder", description="formats of assets",
                realm="formats", operation="update", object_id=None,
                url="http://transcoder:8080/hooks/formats", cluster="transcoder",
                query='data.status="ACTIVE"',
                headers={"Auth-Token": "tok-123", "X-Extra": "yes"}),
        # default cluster = the URL's host; no port in the URL; a query string in the URL
        webhook("plain-hook", realm="formats", url="http://hooks/incoming?source=envoy&k=v"),
    ])
    envoy = start_envoy(plugin, clusters={"transcoder": transcoder.port})
    # Whitespace around the event is not part of it.
    sent = b"\n  " + FORMATS + b"\n\n"
    r = envoy.post_event(sent)
    assert (r.status, r.body) == (200, b"platform-ok")

    # The platform's request is untouched.
    platform = upstream.wait_for(1)
    assert platform[0].sha256 == sha256(sent)
    assert platform[0].path == "/api/v1/events"

    got = transcoder.wait_for(1)
    (req,) = got
    assert req.method == "POST"
    assert req.path == "/hooks/formats"
    assert req.headers["host"] == "transcoder:8080"
    assert req.body == FORMATS.strip()
    assert req.headers["content-type"] == "application/json"
    assert req.headers["user-agent"].startswith("envoy-webhooks/")
    assert req.headers["auth-token"] == "tok-123"
    assert req.headers["x-extra"] == "yes"

    (plain,) = hooks.wait_for(1)
    assert plain.path == "/incoming?source=envoy&k=v"
    assert plain.headers["host"] == "hooks"
    assert plain.body == FORMATS.strip()
    assert "auth-token" not in plain.headers

    entry = wait_until(lambda: envoy.hook_status("fmt-hook")["delivered"] == 1 and envoy.hook_status("fmt-hook"),
                       message="fmt-hook delivered == 1")
    assert entry["status"] == "ENABLED" and entry["failed"] == 0
    envoy.settle(events_seen=1)
    assert transcoder.count() == 1 and hooks.count() == 1  # exactly one POST each


def test_nothing_for_non_matching_events(start_envoy, upstream, hooks):
    plugin = plugin_config([
        webhook("formats-only", realm="formats", operation="update"),
        webhook("collections", event_type="collections"),
    ])
    envoy = start_envoy(plugin)
    metadata = json.loads(METADATA)
    formats_delete = dict(json.loads(FORMATS), operation="delete")
    for event in (metadata, formats_delete):
        assert envoy.post_event(event).status == 200
    envoy.settle(events_seen=2)
    assert hooks.requests() == []
    assert upstream.count() == 2
    status = envoy.status()
    assert status["formats-only"]["delivered"] == 0 and status["collections"]["delivered"] == 0
    assert envoy.hook_stat("formats-only", "matched") == 0
