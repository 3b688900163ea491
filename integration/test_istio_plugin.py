"""envoy/istio-wasmplugin.yaml: its pluginConfig (which Istio hands to the filter as
JSON) is accepted by the real filter, with the environment variables it names."""

from __future__ import annotations

import base64
import json

import yaml

from harness import REPO, webhook


def test_istio_plugin_config_is_accepted_by_the_filter(launch_envoy, upstream, wasm):
    plugin = yaml.safe_load((REPO / "envoy" / "istio-wasmplugin.yaml").read_text())
    spec = plugin["spec"]
    assert plugin["kind"] == "WasmPlugin"
    env_names = [e["name"] for e in spec["vmConfig"]["env"]]
    env = {"WEBHOOKS_ADMIN_TOKEN": "istio-admin-token",
           "TRANSCODER_WEBHOOK_SECRETS": "whsec_" + base64.b64encode(b"istio secret").decode()}
    assert sorted(env_names) == sorted(env)
    envoy = launch_envoy(json.dumps(spec["pluginConfig"]), upstream=upstream,
                         host_env_keys=env_names, env=env)
    assert any("loaded 1 webhook definition(s)" in line for line in envoy.plugin_log_lines())
    r = envoy.request("GET", "/webhooks-admin/status", headers={"authorization": "Bearer istio-admin-token"})
    assert r.status == 200
    assert [w["id"] for w in r.json()["webhooks"]] == ["proxies-to-transcoder"]


def test_a_missing_secret_variable_is_refused(launch_envoy, upstream, wasm):
    plugin = {"webhooks": [webhook("signed", secret_env="NOT_SET_ANYWHERE")]}
    envoy = launch_envoy(json.dumps(plugin), upstream=upstream, wait=False)
    assert envoy.wait_exit(60) != 0
    assert "secret_env" in envoy.log_text() and "NOT_SET_ANYWHERE is not set" in envoy.log_text()
