"""Tenants' webhooks for the bench: an etcd of its own, filled with ``domains`` x ``per_domain``
webhooks in the form the filter's API stores them, and the plugin configuration that reads them.

The events' domain (``workload.SYSTEM_DOMAIN``) holds the first ``per_domain`` of
``workload.definitions``, so that the matching events are the same as with that many configured
definitions; every other domain holds copies of them that no event of the workload reaches.
Written straight to etcd (a batch of puts per transaction): creating 10,000 webhooks through the
API would take minutes and measure nothing the bench is about."""

from __future__ import annotations

import base64
import json
import random
import shutil
import subprocess
import urllib.request
import uuid
from pathlib import Path

import workload

PREFIX = "/bench/"
# The bench's receivers are on this machine: plain http, a single-label name, allowed here.
URLS = {"allow_http": True, "allow": ["webhooks"]}
SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
PUTS_PER_TXN = 100


def plugin_config() -> dict:
    """No configured webhooks: every definition is a tenant's, read from etcd."""
    return {
        "webhooks": [],
        "api": {"tokens": {"bench-token-0123456789abcdef": {"system_domain_id": workload.SYSTEM_DOMAIN,
                                                            "roles": ["can_read_webhooks"]}},
                "urls": URLS, "max_webhooks": 100_000, "max_webhooks_per_domain": 1000},
        "delivery": {"clusters": {"http": "webhooks", "https": "webhooks"}},
        # A long timeout: in callgrind Envoy runs some 50 times slower, and an etcd call that timed
        # out would be made again (and counted) as it never is at full speed.
        "cluster_state": {"etcd": {"cluster": "etcd", "authority": "etcd", "prefix": PREFIX, "timeout_ms": 60000}},
    }


def stored(definition: dict, domain: str, webhook_id: str) -> dict:
    """A webhook as the API keeps it in etcd (``api::resource::StoredWebhook``)."""
    record = {"id": webhook_id, "system_domain_id": domain, "name": definition.get("name"),
              "event_type": definition["event_type"], "url": definition["url"], "status": "ENABLED",
              "headers": {}, "secrets": [{"secret": SECRET}],
              "date_created_ms": 1_765_000_000_000, "date_modified_ms": 1_765_000_000_000}
    for field in ("realm", "operation", "object_id", "query"):
        if definition.get(field) is not None:
            record[field] = definition[field]
    return record


def records(domains: int, per_domain: int) -> list[tuple[str, dict]]:
    rng = random.Random(20261207)
    definitions = workload.definitions(per_domain)
    out = []
    for d in range(domains):
        domain = workload.SYSTEM_DOMAIN if d == 0 else str(uuid.UUID(int=rng.getrandbits(128), version=4))
        for definition in definitions:
            webhook_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            out.append((f"{PREFIX}api/webhooks/{domain}/{webhook_id}", stored(definition, domain, webhook_id)))
    return out


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class Etcd:
    """One etcd member on 127.0.0.1, its data under ``work``; pinned to ``cpus``."""

    def __init__(self, work: Path, client_port: int, peer_port: int, cpus: str, spawn):
        self.data = work / "etcd-data"
        shutil.rmtree(self.data, ignore_errors=True)
        self.client_port = client_port
        url = f"http://127.0.0.1:{client_port}"
        peer = f"http://127.0.0.1:{peer_port}"
        self.proc = spawn(["taskset", "-c", cpus, "etcd", "--name", "bench", "--data-dir", str(self.data),
                           "--listen-client-urls", url, "--advertise-client-urls", url,
                           "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                           "--initial-cluster", f"bench={peer}", "--log-level", "error"],
                          work / "etcd.log")

    def _post(self, path: str, body: dict) -> dict:
        request = urllib.request.Request(f"http://127.0.0.1:{self.client_port}{path}",
                                         data=json.dumps(body).encode(), method="POST",
                                         headers={"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read())

    def wait_ready(self, timeout: float = 30.0) -> None:
        import time
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._post("/v3/kv/range", {"key": _b64("ready")})
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("etcd did not start: see etcd.log")
                time.sleep(0.1)

    def fill(self, domains: int, per_domain: int) -> int:
        """Replaces every tenant webhook with ``domains`` x ``per_domain``; returns how many."""
        end = PREFIX[:-1] + chr(ord(PREFIX[-1]) + 1)
        self._post("/v3/kv/deleterange", {"key": _b64(PREFIX), "range_end": _b64(end)})
        puts = records(domains, per_domain)
        for i in range(0, len(puts), PUTS_PER_TXN):
            batch = puts[i:i + PUTS_PER_TXN]
            self._post("/v3/kv/txn", {"success": [
                {"requestPut": {"key": _b64(key), "value": _b64(json.dumps(value))}} for key, value in batch]})
        return len(puts)
