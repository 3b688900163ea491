"""The ready-to-use Envoy files in envoy/: they validate, carry the webhook_id stats tag, and
deliver (with their fixed ports swapped for free ones)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from harness import (
    ENVOY_DIR,
    REPO,
    WEBHOOK_ID_TAG,
    envoy_version,
    fixture_bytes,
    free_port,
    load_shipped_config,
    plugin_of,
    retarget,
    sha256,
    wait_until,
    walk,
)

# Envoy bootstraps (istio-*.yaml are Istio resources, tested in test_istio_plugin.py).
SHIPPED = sorted(p.name for p in ENVOY_DIR.glob("*.yaml") if not p.name.startswith("istio-"))
DEMO_PORTS = (18080, 18081, 18082, 18901)  # listener, platform, receiver, admin
TOKEN_ENV = {"WEBHOOKS_ADMIN_TOKEN": "demo-admin-token"}

FORMATS = fixture_bytes("seed-formats-event.json")
METADATA = fixture_bytes("seed-metadata-event.json")


def test_both_files_are_shipped():
    assert {"demo.yaml", "dynamic-forward-proxy.yaml"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_config_has_webhook_id_tag(name):
    assert WEBHOOK_ID_TAG in load_shipped_config(name)["stats_config"]["stats_tags"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_config_validates_from_repo_root(envoy_bin, wasm, name, tmp_path):
    """`envoy --mode validate` runs the plugin's on_configure too, so this also checks the
    plugin JSON in the file and that the relative .wasm path works from the repo root.
    Envoy before 1.39 refuses the egress listeners' resolved_address_filter, naming it (what
    docs/api.md tells operators of those versions to delete); without it, the file is valid."""
    def validate(path: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(envoy_bin), "--mode", "validate", "-c", path], cwd=REPO,
                              env=dict(os.environ, **TOKEN_ENV), capture_output=True, text=True, timeout=120)

    path = f"envoy/{name}"
    shipped = load_shipped_config(name, as_shipped=True)
    if envoy_version() < (1, 39) and shipped != load_shipped_config(name):
        refused = validate(path)
        assert refused.returncode != 0 and "resolved_address_filter" in refused.stdout + refused.stderr, (
            refused.stdout[-3000:] + refused.stderr[-3000:])
        copy = tmp_path / name
        copy.write_text(json.dumps(load_shipped_config(name)))
        path = str(copy)
    proc = validate(path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "invalid configuration" not in proc.stdout + proc.stderr


def test_validate_mode_refuses_invalid_plugin_configuration(envoy_bin, wasm, tmp_path):
    config = retarget(load_shipped_config("demo.yaml"), {}, wasm)
    plugin = plugin_of(config)
    plugin["webhooks"][0]["operation"] = "rename"

    def put(d):
        if d.get("@type") == "type.googleapis.com/google.protobuf.StringValue":
            d["value"] = json.dumps(plugin)

    walk(config, put)
    path = tmp_path / "invalid.json"
    path.write_text(json.dumps(config))
    proc = subprocess.run([str(envoy_bin), "--mode", "validate", "-c", str(path)], env=dict(os.environ, **TOKEN_ENV),
                          capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "invalid configuration" in out and "formats-to-transcoder" in out and "operation" in out


def _start_shipped(launch_envoy, upstream, hooks, name):
    ports = dict(zip(DEMO_PORTS, (free_port(), upstream.port, hooks.port, free_port())))
    config = retarget(load_shipped_config(name), ports)
    return launch_envoy(None, upstream=upstream, config=config, env=TOKEN_ENV)


def test_demo_yaml_delivers(launch_envoy, wasm, upstream, hooks):
    envoy = _start_shipped(launch_envoy, upstream, hooks, "demo.yaml")
    collection_create = json.dumps({"event_type": "collections", "realm": "entity", "operation": "create",
                                    "object_id": "c1", "request_id": "r-c1", "data": {}}).encode()
    for body in (FORMATS, METADATA, collection_create):
        assert envoy.post_event(body).status == 200
    assert [r.sha256 for r in upstream.wait_for(3)] == [sha256(b) for b in (FORMATS, METADATA, collection_create)]

    (fmt,) = hooks.wait_for(1, "/hooks/formats")
    assert fmt.body == FORMATS.strip()
    assert fmt.headers["auth-token"] == "demo-transcoder-token"
    assert fmt.headers["host"] == f"hooks:{hooks.port}"
    (meta,) = hooks.wait_for(1, "/hooks/metadata")
    assert meta.body == METADATA.strip()

    status = envoy.status(token=TOKEN_ENV["WEBHOOKS_ADMIN_TOKEN"])
    wait_until(lambda: envoy.status(token=TOKEN_ENV["WEBHOOKS_ADMIN_TOKEN"])["shared-metadata"]["delivered"] == 1,
               message="shared-metadata delivered")
    assert list(status) == ["formats-to-transcoder", "shared-metadata", "collection-deletes"]
    assert envoy.webhooks_admin("GET", "/status", token="secret-token").status == 401
    assert hooks.count("/hooks/collections") == 0
    assert 'envoy_webhooks_delivered{webhook_id="formats-to-transcoder"} 1' in envoy.prometheus()


def test_dynamic_forward_proxy_yaml_delivers(launch_envoy, wasm, upstream, hooks):
    """The webhooks' URLs name 127.0.0.1:<port> and localhost:<port>: no cluster per host."""
    envoy = _start_shipped(launch_envoy, upstream, hooks, "dynamic-forward-proxy.yaml")
    clusters = [c["name"] for c in envoy.config["static_resources"]["clusters"]]
    assert "dynamic_forward_proxy_cluster" in clusters and "hooks" not in clusters
    for body in (FORMATS, METADATA):
        assert envoy.post_event(body).status == 200

    (fmt,) = hooks.wait_for(1, "/hooks/formats")
    assert fmt.body == FORMATS.strip()
    assert fmt.headers["host"] == f"127.0.0.1:{hooks.port}"
    assert fmt.headers["auth-token"] == "demo-transcoder-token"
    (meta,) = hooks.wait_for(1, "/hooks/metadata")
    assert meta.body == METADATA.strip()
    assert meta.headers["host"] == f"localhost:{hooks.port}"
    status = wait_until(lambda: (s := envoy.status(token=TOKEN_ENV["WEBHOOKS_ADMIN_TOKEN"]))
                        ["shared-metadata"]["delivered"] == 1 and s, message="delivered == 1")
    assert status["formats-to-transcoder"]["status"] == "ENABLED"


def test_dynamic_forward_proxy_unreachable_host_is_a_failure(launch_envoy, wasm, upstream, hooks):
    config = load_shipped_config("dynamic-forward-proxy.yaml")
    plugin = plugin_of(config)
    down = free_port()
    plugin["webhooks"] = [dict(plugin["webhooks"][0], url=f"http://127.0.0.1:{down}/nobody-home")]
    plugin["delivery"] = dict(plugin["delivery"], failure_threshold=5, retry_schedule_s=[])

    def put(d):
        if d.get("@type") == "type.googleapis.com/google.protobuf.StringValue":
            d["value"] = json.dumps(plugin)

    walk(config, put)
    ports = dict(zip(DEMO_PORTS, (free_port(), upstream.port, hooks.port, free_port())))
    envoy = launch_envoy(None, upstream=upstream, config=retarget(config, ports), env=TOKEN_ENV)
    assert envoy.post_event(FORMATS).status == 200
    e = wait_until(lambda: (s := envoy.status(token=TOKEN_ENV["WEBHOOKS_ADMIN_TOKEN"]))
                   ["formats-to-transcoder"]["failed"] == 1 and s["formats-to-transcoder"], message="failed == 1")
    assert e["status"] == "FAILING" and "not reached" in e["last_error"], e


def test_dynamic_forward_proxy_yaml_wiring_after_first_contact(launch_envoy, wasm, upstream, hooks):
    """Diagnoses the test above: Envoy 1.40's async client, called from a root context, fails
    the very first call to a host that is not yet in the DFP DNS cache (dispatch_http_call
    returns InternalFailure) while that attempt fills the cache; later calls work. This checks
    the YAML's wiring with the cache warm: of two identical events, the second is delivered.
    The strict test above is the contract."""
    envoy = _start_shipped(launch_envoy, upstream, hooks, "dynamic-forward-proxy.yaml")
    token = TOKEN_ENV["WEBHOOKS_ADMIN_TOKEN"]

    def finished() -> int:
        entry = envoy.status(token=token)["formats-to-transcoder"]
        return entry["delivered"] + entry["failed"]

    for i in (1, 2):
        assert envoy.post_event(FORMATS).status == 200
        wait_until(lambda: finished() >= i, message=f"delivery {i} to finish")
    rec = hooks.wait_for(1, "/hooks/formats")[-1]
    assert rec.body == FORMATS.strip()
    assert rec.headers["host"] == f"127.0.0.1:{hooks.port}"
