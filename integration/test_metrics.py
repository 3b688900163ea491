"""Metrics: the filter's counters and gauges in /stats and /stats/prometheus.

Envoy 1.40 (observed): wasm metrics are stored as ``wasmcustom.<name>``; /stats/prometheus
strips the ``wasmcustom`` namespace and does NOT add the ``envoy_`` prefix, so
``wasmcustom.envoy_webhooks.events_seen`` is exported as ``envoy_webhooks_events_seen``; with
the ``webhook_id`` stats tag, ``wasmcustom.envoy_webhooks.webhook_id.fmt-hook.delivered``
becomes ``envoy_webhooks_delivered{webhook_id="fmt-hook"}``."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from harness import REPO, plugin_config, wait_until, webhook

LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)\{(.*)\} (\S+)$")


def parse_prometheus(text: str) -> dict[tuple[str, tuple], float]:
    """{(metric name, ((label, value), ...)): value} of the sample lines."""
    out = {}
    for line in text.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        labels = tuple(sorted(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2))))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def _event(realm: str) -> bytes:
    return json.dumps({"event_type": "assets", "realm": realm, "operation": "update", "object_id": "o",
                       "request_id": realm, "data": {}}).encode()


@pytest.fixture
def exercised(start_envoy, hooks):
    hooks.set_reply("/hooks/bad-hook", status=500)
    plugin = plugin_config([
        webhook("fmt-hook", realm="formats"),
        webhook("bad-hook", realm="formats"),
        webhook("off_hook", realm="formats", status="DISABLED"),
        webhook("dead_hook", realm="formats", status="FAILED"),
        webhook("idle-hook", realm="nothing"),
    ], delivery={"failure_threshold": 10})
    envoy = start_envoy(plugin)
    assert envoy.post_event(_event("formats")).status == 200
    assert envoy.post_event(b"not json").status == 200
    wait_until(lambda: envoy.hook_stat("fmt-hook", "delivered") == 1 and envoy.hook_stat("bad-hook", "failed") == 1,
               message="one delivery and one failure")
    return envoy


def test_stats_names(exercised):
    stats = exercised.stats()
    assert stats["wasmcustom.envoy_webhooks.events_seen"] >= 1
    assert stats["wasmcustom.envoy_webhooks.events_invalid"] == 1
    assert stats["wasmcustom.envoy_webhooks.events_oversized"] == 0
    for hook_id in ("fmt-hook", "bad-hook", "off_hook", "dead_hook", "idle-hook"):
        for metric in ("matched", "delivered", "failed", "dropped", "status"):
            assert f"wasmcustom.envoy_webhooks.webhook_id.{hook_id}.{metric}" in stats, (hook_id, metric)
    assert stats["wasmcustom.envoy_webhooks.webhook_id.fmt-hook.matched"] == 1
    assert stats["wasmcustom.envoy_webhooks.webhook_id.fmt-hook.delivered"] == 1
    assert stats["wasmcustom.envoy_webhooks.webhook_id.bad-hook.failed"] == 1
    assert stats["wasmcustom.envoy_webhooks.webhook_id.idle-hook.matched"] == 0


def test_prometheus_has_webhook_id_label(exercised):
    text = exercised.prometheus()
    samples = parse_prometheus(text)

    def value(name: str, hook_id: str | None = None) -> float:
        key = (name, (("webhook_id", hook_id),) if hook_id else ())
        assert key in samples, f"{name}{{webhook_id={hook_id!r}}} missing; ours: " + "\n".join(
            l for l in text.splitlines() if "webhooks" in l)
        return samples[key]

    assert "# TYPE envoy_webhooks_delivered counter" in text
    assert "# TYPE envoy_webhooks_status gauge" in text
    assert value("envoy_webhooks_delivered", "fmt-hook") == 1
    assert value("envoy_webhooks_matched", "fmt-hook") == 1
    assert value("envoy_webhooks_failed", "fmt-hook") == 0
    assert value("envoy_webhooks_failed", "bad-hook") == 1
    assert value("envoy_webhooks_dropped", "idle-hook") == 0
    assert value("envoy_webhooks_status", "fmt-hook") == 0
    assert value("envoy_webhooks_status", "bad-hook") == 1
    assert value("envoy_webhooks_status", "dead_hook") == 2
    assert value("envoy_webhooks_status", "off_hook") == 3
    assert value("envoy_webhooks_events_seen") >= 1
    assert value("envoy_webhooks_events_invalid") == 1
    assert value("envoy_webhooks_events_oversized") == 0
    # the id is a label, never part of a metric name
    assert not [k for k in samples if k[0].startswith("envoy_webhooks_webhook_id")]
    assert not [k for k in samples if "wasmcustom" in k[0]]


def test_every_metric_the_alert_rules_use_is_exported(exercised):
    """prometheus/alerts.yaml (unit-tested by promtool in scripts/test) against what a running
    Envoy's /stats/prometheus prints: every metric a rule reads exists, with the labels the
    rule aggregates by."""
    rules = yaml.safe_load((REPO / "prometheus" / "alerts.yaml").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    used = {name for expr in exprs for name in re.findall(r"\benvoy_webhooks_[a-z_]+", expr)}
    assert used == {"envoy_webhooks_status", "envoy_webhooks_lost", "envoy_webhooks_dead_lettered",
                    "envoy_webhooks_held_bytes", "envoy_webhooks_held_bytes_limit",
                    "envoy_webhooks_cluster_state_errors"}, used
    text = exercised.prometheus()
    exported = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    assert used <= exported, ("not exported:", used - exported)
    samples = parse_prometheus(text)
    for name in ("envoy_webhooks_status", "envoy_webhooks_lost", "envoy_webhooks_dead_lettered"):
        labelled = {dict(labels).get("webhook_id") for (metric, labels) in samples if metric == name}
        assert "fmt-hook" in labelled, (name, labelled)
    # The budget, one max_held_bytes (256 MiB by default) per root context that holds bodies.
    limit = samples[("envoy_webhooks_held_bytes_limit", ())]
    assert limit > 0 and limit % (256 * 1024 * 1024) == 0, limit
    assert samples[("envoy_webhooks_held_bytes", ())] < limit


def test_status_gauge_follows_transitions(start_envoy, hooks):
    hooks.set_reply("/hooks/g", status=500)
    envoy = start_envoy(plugin_config([webhook("g")], delivery={"failure_threshold": 2}))
    assert envoy.hook_stat("g", "status") == 0
    envoy.post_event(_event("formats"))
    wait_until(lambda: envoy.hook_stat("g", "status") == 1, message="status gauge 1 (FAILING)")
    envoy.post_event(_event("formats"))
    wait_until(lambda: envoy.hook_stat("g", "status") == 2, message="status gauge 2 (FAILED)")
    assert envoy.enable("g").status == 200
    wait_until(lambda: envoy.hook_stat("g", "status") == 0, message="status gauge 0 after enable")
