"""Several events in one request: a JSON array, or NDJSON. Each event is matched on its own and
delivered as the exact text it had in the platform's request."""

from __future__ import annotations

import json

from harness import plugin_config, sha256, webhook


def _event(request_id: str, realm: str, operation: str = "update") -> dict:
    return {"event_type": "assets", "realm": realm, "operation": operation,
            "object_id": f"obj-{request_id}", "request_id": request_id, "data": {"status": "ACTIVE", "n": 1.50}}


PLUGIN = plugin_config([
    webhook("formats", realm="formats"),
    webhook("metadata", realm="metadata"),
])


def _bodies_by_request_id(records) -> dict[str, bytes]:
    return {json.loads(r.body)["request_id"]: r.body for r in records}


def test_json_array(start_envoy, upstream, hooks):
    envoy = start_envoy(PLUGIN)
    # Odd but valid formatting: the delivered text must be the element's own text, verbatim.
    e1 = json.dumps(_event("a1", "formats"), indent=2).encode()
    e2 = b'{"event_type":"assets","realm":"metadata","operation":"update","request_id":"a2","data":{"x":[1, 2 ,3]}}'
    e3 = json.dumps(_event("a3", "collections")).encode()  # matches nothing
    e4 = b'{ "request_id" : "a4", "event_type" : "assets", "realm" : "formats", "data" : {"s": "\\u00e9 \xc3\xa9 ]},"} }'
    body = b"[\n  " + e1 + b" ,\n" + e2 + b",\t" + e3 + b",\r\n" + e4 + b"\n]\n"
    json.loads(body)  # the test's own input is valid JSON
    r = envoy.post_event(body)
    assert r.status == 200
    assert upstream.wait_for(1)[0].sha256 == sha256(body)

    formats = _bodies_by_request_id(hooks.wait_for(2, "/hooks/formats"))
    metadata = _bodies_by_request_id(hooks.wait_for(1, "/hooks/metadata"))
    assert formats == {"a1": e1, "a4": e4}
    assert metadata == {"a2": e2}
    envoy.settle(events_seen=4)
    assert hooks.count() == 3


def test_ndjson(start_envoy, upstream, hooks):
    envoy = start_envoy(PLUGIN)
    lines = [json.dumps(_event(f"n{i}", realm)).encode()
             for i, realm in enumerate(["formats", "metadata", "collections", "formats", "metadata"])]
    # CRLF and a blank line in between, spaces around a line, and a trailing newline
    body = lines[0] + b"\n" + lines[1] + b"\r\n\n  " + lines[2] + b"  \n" + lines[3] + b"\n" + lines[4] + b"\n"
    r = envoy.post_event(body, content_type="application/x-ndjson")
    assert r.status == 200
    assert upstream.wait_for(1)[0].sha256 == sha256(body)
    formats = _bodies_by_request_id(hooks.wait_for(2, "/hooks/formats"))
    metadata = _bodies_by_request_id(hooks.wait_for(2, "/hooks/metadata"))
    assert formats == {"n0": lines[0], "n3": lines[3]}
    assert metadata == {"n1": lines[1], "n4": lines[4]}
    envoy.settle(events_seen=5)
    assert hooks.count() == 4


def test_ndjson_content_type_with_parameters(start_envoy, upstream, hooks):
    envoy = start_envoy(PLUGIN)
    lines = [json.dumps(_event("p1", "formats")).encode(), json.dumps(_event("p2", "formats")).encode()]
    body = b"\n".join(lines)  # no trailing newline
    r = envoy.post_event(body, content_type="application/x-ndjson; charset=utf-8")
    assert r.status == 200
    got = _bodies_by_request_id(hooks.wait_for(2, "/hooks/formats"))
    assert got == {"p1": lines[0], "p2": lines[1]}


def test_single_line_ndjson(start_envoy, upstream, hooks):
    """A single compact event sent as NDJSON (one line) is one event."""
    envoy = start_envoy(PLUGIN)
    line = json.dumps(_event("s1", "metadata")).encode()
    assert envoy.post_event(line + b"\n", content_type="application/x-ndjson").status == 200
    (rec,) = hooks.wait_for(1, "/hooks/metadata")
    assert rec.body == line
