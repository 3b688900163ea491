"""The egress listeners' policy in the shipped Envoy configurations is what
`envoy-webhooks egress-policy` prints for their plugin configuration: the RBAC rules of every
egress listener and every DNS cache's resolved_address_filter (docs/api.md, "Tenant URLs").
An operator who edits api.urls.allow and regenerates gets what these files show; a file edited
by hand, or a generator that changed, fails here."""
from __future__ import annotations

import ipaddress
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from harness import ENVOY_DIR, plugin_of, walk

SHIPPED = ["dynamic-forward-proxy.yaml", "quickstart/envoy.yaml", "quickstart/envoy-2.yaml"]


def exceptions_of(rules: dict) -> list[str]:
    """The operator's exceptions an RBAC policy lets through, as api.urls.allow entries."""
    entries = []
    for permission in rules["policies"].get("operator_allow", {}).get("permissions", []):
        config = permission["matcher"]["typed_config"]
        ip = config["upstream_ip"]
        net = ipaddress.ip_network(f"{ip['address_prefix']}/{ip['prefix_len']}")
        host = str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)
        port = config.get("upstream_port_range")
        if port is None:
            entries.append(host)
        else:
            assert port["start"] == port["end"], port
            entries.append(f"[{host}]:{port['start']}" if net.version == 6 else f"{host}:{port['start']}")
    return entries


def egress_parts(config: dict) -> tuple[list[dict], list[dict]]:
    """Every egress RBAC filter's rules, and every resolved_address_filter."""
    rules, filters = [], []

    def grab(d: dict) -> None:
        if d.get("name") == "envoy.filters.http.rbac":
            rules.append(d["typed_config"]["rules"])
        if "resolved_address_filter" in d:
            filters.append(d["resolved_address_filter"])

    walk(config, grab)
    return rules, filters


@pytest.mark.parametrize("name", SHIPPED)
def test_the_shipped_egress_policy_is_the_generated_one(name: str, cli: Path, tmp_path: Path):
    config = yaml.safe_load((ENVOY_DIR / name).read_text())
    rules, filters = egress_parts(config)
    assert rules and filters, f"{name}: no egress listener"
    plugin = plugin_of(config)
    if "api" not in plugin:
        # A file whose filter serves no API (it needs etcd) shows the policy for the
        # exceptions its RBAC lists: the rest must still be the generated one.
        plugin = {"api": {"tokens": {}, "clusters": {"https": "webhooks_egress_https"},
                          "urls": {"allow": exceptions_of(rules[0])}},
                  "cluster_state": {"etcd": {"cluster": "etcd", "authority": "etcd:2379"}}}
    given = tmp_path / "plugin.json"
    given.write_text(json.dumps(plugin))
    run = subprocess.run([str(cli), "egress-policy", str(given)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    generated = json.loads(run.stdout)
    for found in rules:
        assert found == generated["rbac"]["rules"], f"{name}: RBAC rules differ from egress-policy's"
    for found in filters:
        assert found == generated["resolved_address_filter"], f"{name}: resolved_address_filter differs"
    # The dynamic forward proxy filter and its cluster must share a DNS cache's configuration.
    caches: dict[str, list[str]] = {}

    def cache(d: dict) -> None:
        config = d.get("dns_cache_config")
        if isinstance(config, dict) and str(config.get("name", "")).startswith("webhooks_egress"):
            caches.setdefault(config["name"], []).append(json.dumps(config, sort_keys=True))

    walk(config, cache)
    assert caches and all(len(seen) == 2 and seen[0] == seen[1] for seen in caches.values()), caches
    if "api" in plugin_of(config):
        assert exceptions_of(rules[0]) == [e for e in plugin["api"]["urls"].get("allow", [])
                                           if e[0].isdigit() or e.startswith("[")]
