"""Invalid plugin configuration: the filter's on_configure fails, logs every problem, and
Envoy 1.40 refuses the config. Observed behaviour of Envoy 1.40 with the wasm filter in a
static listener: it logs "Unable to create Wasm plugin envoy_webhooks" and exits with status
1 during start-up; the listener never comes up."""

from __future__ import annotations

import json

import pytest

from harness import plugin_config, webhook


def _refused(launch, plugin):
    """Launches Envoy with ``plugin`` and asserts Envoy exits non-zero; returns (envoy, our
    log lines)."""
    envoy = launch(plugin, wait=False)
    rc = envoy.wait_exit(60)
    assert rc is not None, "Envoy is still running with an invalid plugin configuration"
    assert rc != 0
    log = envoy.log_text()
    assert "Unable to create Wasm plugin envoy_webhooks" in log
    ours = [line for line in log.splitlines() if "envoy-webhooks" in line and "invalid configuration" in line]
    assert ours, f"no 'envoy-webhooks ... invalid configuration' line in the log:\n{envoy.log_tail()}"
    return envoy, envoy.plugin_log_lines()


def _mentions(lines: list[str], *words: str) -> bool:
    return any(all(w in line for w in words) for line in lines)


def test_every_problem_is_logged_and_envoy_exits(start_envoy):
    plugin = plugin_config([
        webhook("ok-hook"),
        webhook("dup-hook"),
        webhook("dup-hook"),
        webhook("dl-hook", event_type="collections", operation="download"),
        webhook("op-hook", operation="rename"),
        webhook("status-hook", status="BROKEN"),
        webhook("unknown-field-hook", colour="blue"),
        webhook("query-hook", query='data.status="ACTIVE" AND'),
        webhook("bad id!", url="http://hooks:8080/hooks/bad-id"),
        webhook("url-hook", url="not a url"),
    ])
    _, lines = _refused(start_envoy, plugin)
    problems = [("dup-hook", "id"), ("dl-hook", "operation"), ("op-hook", "operation"), ("status-hook", "status"),
                ("unknown-field-hook", "colour"), ("query-hook", "query"), ("bad id!", "id"), ("url-hook", "url")]
    missing = [p for p in problems if not _mentions(lines, *p)]
    assert not missing, "problems not logged (webhook id + field): " + repr(missing) + "\n" + "\n".join(lines)


INVALID = {
    "not-json": ("{webhooks: [", []),
    "not-an-object": ("[1, 2]", []),
    "empty": ("", []),
    "no-webhooks": (json.dumps({"events": {"methods": ["POST"]}}), ["webhooks"]),
    "unknown-top-level": (json.dumps(plugin_config([webhook("a")], admin=False, extras=1)), ["extras"]),
    "unknown-delivery-field": (json.dumps(plugin_config([webhook("a")], delivery={"retries": 3})), ["retries"]),
    "missing-url": (json.dumps({"webhooks": [{"id": "nourl", "name": "n", "event_type": "assets"}]}),
                    ["nourl", "url"]),
    "bad-deliver-on": (json.dumps(plugin_config([webhook("a")], events={"deliver_on": "never"})), ["deliver_on"]),
    "admin-without-token": (json.dumps({"webhooks": [webhook("a")], "admin": {"path_prefix": "/x"}}), ["token"]),
    "bad-regex": (json.dumps(plugin_config([webhook("rx", query="data.name=/(unclosed/")])), ["rx", "query"]),
    "long-id": (json.dumps(plugin_config([webhook("x" * 129)])), ["id"]),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_configuration_is_refused(start_envoy, case):
    plugin, words = INVALID[case]
    _, lines = _refused(start_envoy, plugin)
    if words:
        assert _mentions(lines, *words), f"no log line mentions {words}:\n" + "\n".join(lines)


def test_minimal_valid_configuration_starts(start_envoy, upstream):
    envoy = start_envoy({"webhooks": [{"id": "m", "name": "m", "event_type": "assets",
                                       "url": "http://hooks:8080/m"}]})
    assert envoy.post_event({"event_type": "assets"}).status == 200
    assert "invalid configuration" not in envoy.log_text()
