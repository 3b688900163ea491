"""Matching: which webhook gets which event (type, realm, operation, object_id, query, status).

One Envoy for the module: every webhook below sees the same five events; each test checks
one webhook's share (identified by request_id)."""

from __future__ import annotations

import copy
import json

import pytest

from harness import RecordingServer, Upstream, fixture_bytes, plugin_config, webhook

OBJ_A = "918728e2-bc1c-11ed-aaef-66cff3148306"  # the formats sample's object

FORMATS = json.loads(fixture_bytes("seed-formats-event.json"))
METADATA = json.loads(fixture_bytes("seed-metadata-event.json"))


def _event(base: dict, request_id: str, **top: object) -> dict:
    event = copy.deepcopy(base)
    event.update(top)
    event["request_id"] = request_id
    return event


EVENTS = {
    "formats-update": _event(FORMATS, "formats-update"),
    "metadata-update": _event(METADATA, "metadata-update"),
    "files-download": _event(METADATA, "files-download", realm="files", operation="download",
                             object_id="c0c0c0c0-0000-0000-0000-000000000003"),
    "collection-delete": {"event_type": "collections", "realm": "entity", "operation": "delete",
                          "object_id": "d0d0d0d0-0000-0000-0000-000000000004", "user_id": None,
                          "data": {"title": "old stuff"}, "request_id": "collection-delete"},
    "asset-create": _event(FORMATS, "asset-create", realm="entity", operation="create",
                           data={"title": "new asset", "status": "ACTIVE"}),
}

ALL_ASSETS = {"formats-update", "metadata-update", "files-download", "asset-create"}

# webhook -> (definition fields, request_ids it must get)
CASES = {
    "type-assets": ({}, ALL_ASSETS),
    "type-collections": ({"event_type": "collections"}, {"collection-delete"}),
    "realm-formats": ({"realm": "formats"}, {"formats-update"}),
    "realm-entity-any-type": ({"event_type": "collections", "realm": "entity"}, {"collection-delete"}),
    "op-update": ({"operation": "update"}, {"formats-update", "metadata-update"}),
    "op-all": ({"operation": "all"}, ALL_ASSETS),
    "op-null": ({"operation": None}, ALL_ASSETS),
    "op-download": ({"operation": "download"}, {"files-download"}),
    "op-create": ({"operation": "create"}, {"asset-create"}),
    "op-delete-collections": ({"event_type": "collections", "operation": "delete"}, {"collection-delete"}),
    "object-a": ({"object_id": OBJ_A}, {"formats-update", "asset-create"}),
    "object-a-update": ({"object_id": OBJ_A, "operation": "update"}, {"formats-update"}),
    "query-seed-avc": ({"realm": "formats",
                        "query": 'data.status="ACTIVE" AND (data.components.metadata.format="AVC" '
                                 'OR data.components.metadata.format="MPEG-4")'}, {"formats-update"}),
    "query-regex": ({"query": "data.metadata.format=/MPEG-[2,4]/"}, {"formats-update"}),
    "query-online": ({"query": "data.is_online=true"}, set()),
    "query-width": ({"query": "(data.components.metadata.width>=1920 OR data.components.metadata.height>=1920)"
                              " AND data.components.metadata.duration>10000"}, {"formats-update"}),
    "query-share": ({"realm": "metadata", "query": 'data.metadata_values.share.field_values.value="true"'},
                    {"metadata-update"}),
    "query-top-level": ({"query": 'operation="create" OR user_id="1fb4c6f8-cded-11eb-b943-669489a791b1"'},
                        {"asset-create", "metadata-update", "files-download"}),
    "query-null": ({"query": "data.deleted_by_user=null"}, ALL_ASSETS),
    "disabled": ({"status": "DISABLED"}, set()),
    "failed": ({"status": "FAILED"}, set()),
    "failing": ({"status": "FAILING"}, ALL_ASSETS),
}

EXPECTED_DELIVERIES = sum(len(ids) for _, ids in CASES.values())


@pytest.fixture(scope="module")
def delivered(module_launcher):
    """Starts one Envoy, sends every event once, waits for all expected deliveries plus a
    grace period; returns {webhook id: [request_id, ...]} and the Envoy."""
    upstream = Upstream().start()
    hooks = RecordingServer("hooks").start()
    try:
        plugin = plugin_config([webhook(hook_id, **fields) for hook_id, (fields, _) in CASES.items()])
        envoy = module_launcher(plugin, upstream=upstream, clusters={"hooks": hooks.port})
        for event in EVENTS.values():
            assert envoy.post_event(event).status == 200
        try:
            hooks.wait_for(EXPECTED_DELIVERIES, timeout=10)
        except AssertionError:
            pass  # the per-webhook tests say which ones are missing
        envoy.settle(events_seen=len(EVENTS))  # and wrong deliveries have had time to land
        got: dict[str, list[str]] = {hook_id: [] for hook_id in CASES}
        for rec in hooks.requests():
            hook_id = rec.path.removeprefix("/hooks/")
            got.setdefault(hook_id, []).append(rec.json()["request_id"])
        yield got, envoy
    finally:
        hooks.stop()
        upstream.stop()


@pytest.mark.parametrize("hook_id", list(CASES))
def test_webhook_gets_exactly_its_events(delivered, hook_id):
    got, _ = delivered
    expected = CASES[hook_id][1]
    assert sorted(got[hook_id]) == sorted(expected)


def test_no_delivery_to_unknown_paths(delivered):
    got, _ = delivered
    assert set(got) == set(CASES)


def test_matched_counters(delivered):
    _, envoy = delivered
    for hook_id, (_, expected) in CASES.items():
        if hook_id in ("disabled", "failed"):
            continue  # whether a non-delivering webhook counts `matched` is not specified
        assert envoy.hook_stat(hook_id, "matched") == len(expected), hook_id


def test_status_of_non_delivering_webhooks(delivered):
    _, envoy = delivered
    status = envoy.status()
    assert status["disabled"]["status"] == "DISABLED"
    assert status["failed"]["status"] == "FAILED"
    assert status["failing"]["status"] == "ENABLED"  # its deliveries succeeded
    assert [w for w in status] == list(CASES)  # config order
