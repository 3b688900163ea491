"""Webhook status survives a configuration reload (a new listener config through LDS, as
Istio and xDS deliver them); a changed definition starts afresh."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import yaml

from harness import (
    Envoy,
    envoy_config,
    free_port,
    http_request,
    plugin_config,
    wait_until,
    webhook,
)


def _event(i: int) -> bytes:
    return json.dumps({"event_type": "assets", "realm": "formats", "operation": "update",
                       "object_id": f"obj-{i}", "request_id": f"req-{i}"}).encode()


class ReloadableEnvoy:
    """Envoy whose event listener comes from an LDS file that the test rewrites."""

    def __init__(self, tmp_path: Path, envoy_bin: Path, wasm: Path, upstream_port: int,
                 hooks_port: int, extra_args: list[str] | None = None, concurrency: int = 1):
        self.dir = tmp_path / "lds"
        self.dir.mkdir()
        self.lds_path = self.dir / "lds.yaml"
        self.event_port = free_port()
        self.wasm = wasm
        base = envoy_config(listener_port=free_port(), admin_port=free_port(),
                            upstream_port=upstream_port, plugin=None, clusters={"hooks": hooks_port})
        # The static listener (no filter) only keeps the harness's readiness check happy.
        self.listener_template = copy.deepcopy(base["static_resources"]["listeners"][0])
        self.with_filter = envoy_config(listener_port=self.event_port, admin_port=1, upstream_port=upstream_port,
                                        plugin={"webhooks": []}, wasm=wasm)
        base["dynamic_resources"] = {
            "lds_config": {
                "resource_api_version": "V3",
                "path_config_source": {"path": str(self.lds_path),
                                       "watched_directory": {"path": str(self.dir)}},
            }
        }
        self.version = 0
        self.write({"webhooks": []})
        self.envoy = Envoy(base, tmp_path, name="envoy-reload", envoy_bin=envoy_bin,
                           extra_args=extra_args, concurrency=concurrency)

    def write(self, plugin: dict) -> None:
        listener = copy.deepcopy(self.with_filter["static_resources"]["listeners"][0])
        listener["name"] = "events"
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        wasm = hcm["http_filters"][0]["typed_config"]["config"]
        wasm["configuration"]["value"] = json.dumps(plugin)
        self.version += 1
        resources = {"version_info": str(self.version), "resources": [
            dict({"@type": "type.googleapis.com/envoy.config.listener.v3.Listener"}, **listener)]}
        tmp = self.dir / f".lds-{self.version}.yaml"
        tmp.write_text(yaml.safe_dump(resources, sort_keys=False))
        os.replace(tmp, self.lds_path)  # a move: what watched_directory reacts to

    def reload(self, plugin: dict) -> None:
        before = self.envoy.stat("listener_manager.lds.update_success")
        self.write(plugin)
        wait_until(lambda: self.envoy.stat("listener_manager.lds.update_success") > before,
                   timeout=20, message="LDS update applied")
        wait_until(lambda: self.envoy.stat("listener_manager.total_listeners_draining") == 0
                   and self.envoy.stat("listener_manager.total_listeners_warming") == 0,
                   timeout=20, message="new listener active")

    def post_event(self, i: int):
        return http_request(self.event_port, "POST", "/api/v1/events", _event(i),
                            {"content-type": "application/json"})

    def status(self) -> dict[str, dict]:
        r = http_request(self.event_port, "GET", "/webhooks-admin/status", None,
                         {"authorization": "Bearer secret-token"})
        assert r.status == 200, r
        return {w["id"]: w for w in r.json()["webhooks"]}


def test_status_survives_a_reload_and_a_changed_definition_starts_afresh(
        tmp_path, envoy_bin, wasm, upstream, hooks):
    hooks.set_reply("/hooks/flaky", status=500)
    flaky = webhook("flaky")
    first = plugin_config([flaky], delivery={"failure_threshold": 10})
    env = ReloadableEnvoy(tmp_path, envoy_bin, wasm, upstream.port, hooks.port)
    env.envoy.start()
    try:
        env.reload(first)
        for i in (1, 2):
            assert env.post_event(i).status == 200
            wait_until(lambda: env.status()["flaky"]["failed"] == i, message=f"failed == {i}")
        before = env.status()["flaky"]
        assert (before["status"], before["consecutive_failures"]) == ("FAILING", 2)

        # Another webhook is added; flaky's definition is unchanged: its state carries over.
        env.reload(plugin_config([flaky, webhook("other", realm="metadata")],
                                 delivery={"failure_threshold": 10}))
        after = env.status()
        assert set(after) == {"flaky", "other"}
        for field in ("status", "consecutive_failures", "first_failed_at", "last_error", "failed"):
            assert after["flaky"][field] == before[field], field
        assert after["other"]["status"] == "ENABLED"
        assert env.post_event(3).status == 200
        wait_until(lambda: env.status()["flaky"]["consecutive_failures"] == 3, message="count goes on")

        # The receiver's URL is fixed: a changed definition starts from ENABLED.
        hooks.set_reply("/hooks/flaky-fixed", status=200)
        env.reload(plugin_config([dict(flaky, url="http://hooks:8080/hooks/flaky-fixed")],
                                 delivery={"failure_threshold": 10}))
        fresh = env.status()["flaky"]
        assert (fresh["status"], fresh["consecutive_failures"], fresh["failed"], fresh["last_error"]) == \
            ("ENABLED", 0, 0, None)
        assert env.post_event(4).status == 200
        hooks.wait_for(1, "/hooks/flaky-fixed")
        wait_until(lambda: env.status()["flaky"]["delivered"] == 1, message="delivered == 1")
    finally:
        print(env.envoy.log_tail(40))
        env.envoy.stop()
