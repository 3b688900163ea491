"""The platform's requests are never altered, delayed or failed: bad and huge bodies pass
upstream byte-identical; only requests with events.methods and events.path_prefixes are read."""

from __future__ import annotations

import json
import os
import time

import pytest

from harness import RecordingServer, Upstream, fixture_bytes, plugin_config, sha256, webhook

FORMATS = fixture_bytes("seed-formats-event.json")
MIB = 1024 * 1024


def _nested(depth: int) -> bytes:
    inner = b"1"
    for _ in range(depth):
        inner = b'{"a":' + inner + b"}"
    return b'{"event_type":"assets","realm":"formats","operation":"update","data":' + inner + b"}"


BAD_BODIES = {
    "not-json": b"hello, this is not JSON",
    "truncated-json": FORMATS[: len(FORMATS) // 2],
    "invalid-utf8": b'{"event_type":"assets","realm":"formats","operation":"update","data":{"name":"\xff\xfe\xc3("}}',
    "number": b"42",
    "string": b'"assets"',
    "null": b"null",
    "array-of-numbers": b"[1,2]",
    "nested-200-deep": _nested(200),
    "nested-arrays-200-deep": b"[" * 200 + b"]" * 200,
    "trailing-garbage": FORMATS + b" }",
    "two-objects-not-ndjson": FORMATS + FORMATS,
}


@pytest.fixture(scope="module")
def catch_all(module_launcher):
    """One Envoy whose catch-all webhook would get any event at all."""
    upstream = Upstream().start()
    hooks = RecordingServer("hooks").start()
    plugin = plugin_config([webhook("everything", event_type="assets"),
                            webhook("collections", event_type="collections")])
    envoy = module_launcher(plugin, upstream=upstream, clusters={"hooks": hooks.port})
    yield envoy, upstream, hooks
    hooks.stop()
    upstream.stop()


def _send_and_check_passthrough(envoy, upstream, body: bytes, **kw) -> None:
    n = upstream.count()
    r = envoy.post_event(body, **kw)
    assert (r.status, r.body) == (200, b"platform-ok")
    got = upstream.wait_for(n + 1)[n]
    assert len(got.body) == len(body)
    assert got.sha256 == sha256(body)


@pytest.mark.parametrize("name", list(BAD_BODIES))
def test_bad_body_passes_through_and_counts_invalid(catch_all, name):
    envoy, upstream, hooks = catch_all
    invalid = envoy.wasm_stat("envoy_webhooks.events_invalid")
    _send_and_check_passthrough(envoy, upstream, BAD_BODIES[name])
    envoy.wait_wasm_stat("envoy_webhooks.events_invalid", invalid + 1)
    envoy.settle()
    assert hooks.count() == 0


def test_empty_body_passes_through_and_counts_invalid(catch_all):
    envoy, upstream, hooks = catch_all
    invalid = envoy.wasm_stat("envoy_webhooks.events_invalid")
    _send_and_check_passthrough(envoy, upstream, b"")
    envoy.wait_wasm_stat("envoy_webhooks.events_invalid", invalid + 1)
    envoy.settle()
    assert hooks.count() == 0


def test_bad_ndjson_lines_pass_through(catch_all):
    envoy, upstream, hooks = catch_all
    good = json.dumps({"event_type": "assets", "realm": "formats", "request_id": "good-line"}).encode()
    body = b"not json\n42\n" + good + b"\n{\"broken\": \n"
    invalid = envoy.wasm_stat("envoy_webhooks.events_invalid")
    _send_and_check_passthrough(envoy, upstream, body, content_type="application/x-ndjson")
    (rec,) = hooks.wait_for(1)
    assert rec.body == good
    envoy.wait_wasm_stat("envoy_webhooks.events_invalid", invalid + 3)  # one per bad line
    hooks.clear()


def test_valid_event_after_bad_bodies_still_delivered(catch_all):
    envoy, upstream, hooks = catch_all
    _send_and_check_passthrough(envoy, upstream, FORMATS)
    (rec,) = hooks.wait_for(1)
    assert rec.body == FORMATS.strip()
    hooks.clear()


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
def test_5mib_body_passes_intact(catch_all, chunked):
    """Bigger than Envoy's default 1 MiB per-connection buffer limit: a filter that buffered
    the body would make Envoy answer 413."""
    envoy, upstream, hooks = catch_all
    event = json.loads(FORMATS)
    event["data"]["blob"] = os.urandom(5 * MIB // 2).hex()  # a valid event of ~5 MiB
    body = json.dumps(event).encode()
    assert len(body) > 5 * MIB
    oversized = envoy.wasm_stat("envoy_webhooks.events_oversized")
    n = upstream.count()
    if chunked:
        chunks = [body[i:i + 65536] for i in range(0, len(body), 65536)]
        r = envoy.request("POST", "/api/v1/events", chunks, {"content-type": "application/json"}, chunked=True)
    else:
        r = envoy.request("POST", "/api/v1/events", body, {"content-type": "application/json"})
    assert 200 <= r.status < 300, (r.status, r.body[:200])
    got = upstream.wait_for(n + 1)[n]
    assert (len(got.body), got.sha256) == (len(body), sha256(body))
    # over events.max_event_bytes (1 MiB by default): counted, not delivered
    envoy.wait_wasm_stat("envoy_webhooks.events_oversized", oversized + 1)
    envoy.settle()
    assert hooks.count() == 0


def test_event_up_to_max_event_bytes_is_delivered(start_envoy, upstream, hooks):
    envoy = start_envoy(plugin_config([webhook("big")], events={"max_event_bytes": 300_000}))
    event = json.loads(FORMATS)
    event["data"]["blob"] = "x" * 200_000
    body = json.dumps(event).encode()
    chunks = [body[i:i + 16384] for i in range(0, len(body), 16384)]
    r = envoy.request("POST", "/api/v1/events", chunks, {"content-type": "application/json"}, chunked=True)
    assert r.status == 200
    (rec,) = hooks.wait_for(1)
    assert rec.sha256 == sha256(body)

    too_big = json.dumps(dict(event, data={"blob": "y" * 400_000})).encode()
    assert envoy.post_event(too_big).status == 200
    envoy.wait_wasm_stat("envoy_webhooks.events_oversized", 1)
    assert upstream.wait_for(2)[1].sha256 == sha256(too_big)
    envoy.settle()
    assert hooks.count() == 1


def test_only_configured_methods_and_paths_carry_events(start_envoy, upstream, hooks):
    plugin = plugin_config([webhook("any")],
                           events={"methods": ["POST", "PUT"], "path_prefixes": ["/events", "/api/v2/hooks"]})
    envoy = start_envoy(plugin)
    ignored = [("POST", "/api/v1/events"), ("PATCH", "/events"), ("GET", "/events"), ("POST", "/event"),
               ("DELETE", "/events/1")]
    for method, path in ignored:
        r = envoy.request(method, path, FORMATS, {"content-type": "application/json"})
        assert r.status == 200
    carried = [("POST", "/events"), ("PUT", "/events/sub?x=1"), ("POST", "/api/v2/hooks/in")]
    for method, path in carried:
        assert envoy.request(method, path, FORMATS, {"content-type": "application/json"}).status == 200
    got = upstream.wait_for(len(ignored) + len(carried))
    assert all(g.sha256 == sha256(FORMATS) for g in got)
    hooks.wait_for(len(carried))
    envoy.settle(events_seen=len(carried))
    assert hooks.count() == len(carried)
    assert envoy.wasm_stat("envoy_webhooks.events_seen") == len(carried)


def test_request_is_not_delayed_by_slow_webhook(start_envoy, upstream, hooks):
    """deliver_on request: the platform's answer does not wait for the webhook."""
    hooks.set_reply("/hooks/sluggish", delay=3.0)
    envoy = start_envoy(plugin_config([webhook("sluggish")]))
    started = time.monotonic()
    r = envoy.post_event(FORMATS)
    elapsed = time.monotonic() - started
    assert r.status == 200
    assert elapsed < 1.5, f"the platform's request took {elapsed:.2f}s"
    # The request is over (Envoy counts it complete) long before the receiver answers ...
    assert envoy.stat("http.ingress.downstream_rq_completed") == 1
    assert envoy.hook_stat("sluggish", "delivered") == 0
    hooks.wait_for(1)
    # ... and the answer still reaches the engine: delivered, not failed, nothing left in flight.
    envoy.wait_wasm_stat("envoy_webhooks.webhook_id.sluggish.delivered", 1, timeout=10)
    assert envoy.hook_stat("sluggish", "failed") == 0
    assert envoy.hook_stat("sluggish", "retried") == 0
