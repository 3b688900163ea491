"""The demo behind `bash scripts/demo`: Envoy with envoy/demo.yaml and the envoy-webhooks
filter, a stand-in platform upstream and a webhook receiver, all on 127.0.0.1 with fixed ports.
Sends the seed document's two sample events and one event that matches no webhook through
Envoy, prints what the webhook receiver got and the filter's admin status; then, with a
one-member etcd, creates a tenant's webhook through the filter's iconik webhook API
(docs/api.md) and shows it delivered; then stops everything.

Run from anywhere: .venv/bin/python integration/demo.py (after the set-up of scripts/demo).
"""

from __future__ import annotations

import json
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from etcd_cluster import EtcdCluster, etcd_problem  # noqa: E402
from harness import (  # noqa: E402
    ENVOY_DIR,
    REPO,
    WASM,
    Envoy,
    RecordingServer,
    Upstream,
    fixture_bytes,
    http_request,
    load_shipped_config,
    plugin_of,
    served_route,
    sha256,
    wait_until,
    walk,
)

LISTENER, PLATFORM, RECEIVER, ENVOY_ADMIN = 18080, 18081, 18082, 18901
ADMIN_TOKEN = "demo-admin-token"
TENANT_TOKEN = "demo-tenant-token-0123456789"
TENANT = "1297c8b6-3563-11e7-adf1-6c4008b85488"  # the seed events' system_domain_id


def with_the_api(etcd: EtcdCluster, workdir: Path) -> Path:
    """envoy/demo.yaml, with the webhook API for one tenant and its etcd: written to workdir."""
    import yaml
    config = load_shipped_config("demo.yaml")
    plugin = plugin_of(config)
    plugin["api"] = {
        "tokens": {TENANT_TOKEN: {"system_domain_id": TENANT,
                                  "roles": ["can_read_webhooks", "can_write_webhooks", "can_delete_webhooks"]}},
        "urls": {"allow_http": True, "allow": [f"hooks:{RECEIVER}"]},
    }
    plugin.setdefault("delivery", {})["clusters"] = {"http": "hooks"}
    plugin["cluster_state"] = {"etcd": {"cluster": "etcd", "authority": f"127.0.0.1:{etcd.client_port(0)}",
                                        "prefix": "/envoy-webhooks/demo/", "sync_interval_ms": 500}}

    def put(d: dict) -> None:
        if d.get("@type") == "type.googleapis.com/google.protobuf.StringValue":
            d["value"] = json.dumps(plugin)
        if d.get("name") == "platform" and "routes" in d:  # the API's requests reach the filter
            d["routes"].insert(0, served_route("/API/notifications/"))

    walk(config, put)
    config["static_resources"]["clusters"].append({
        "name": "etcd", "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": "etcd", "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": etcd.client_port(0)}}}}]}]}})
    path = workdir / "demo-with-api.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
SHOWN_HEADERS = ("host", "content-type", "content-length", "user-agent", "auth-token")


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def banner(text: str) -> None:
    print(f"\n=== {text} " + "=" * max(0, 74 - len(text)))


def main() -> int:
    busy = [p for p in (LISTENER, PLATFORM, RECEIVER, ENVOY_ADMIN) if port_in_use(p)]
    if busy:
        print(f"demo: port(s) {busy} on 127.0.0.1 are in use; stop whatever listens there", file=sys.stderr)
        return 2
    if not WASM.exists():
        print(f"demo: {WASM} is missing; run bash scripts/demo (it builds the filter)", file=sys.stderr)
        return 2

    events = [
        ("seed formats event (assets/formats/update)", fixture_bytes("seed-formats-event.json")),
        ("seed metadata event (assets/metadata/update)", fixture_bytes("seed-metadata-event.json")),
        ("collections/entity/create event (matches no webhook)", json.dumps({
            "system_domain_id": "1297c8b6-3563-11e7-adf1-6c4008b85488", "event_type": "collections",
            "object_id": "5b1c3f3e-0000-11ee-9b47-7a40066d5234", "user_id": None, "realm": "entity",
            "operation": "create", "data": {"title": "New collection"},
            "request_id": "0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a"}, indent=2).encode()),
    ]

    banner("set-up")
    print(f"platform events listener (Envoy): http://127.0.0.1:{LISTENER}")
    print(f"platform upstream (stand-in):     http://127.0.0.1:{PLATFORM}")
    print(f"webhook receiver:                 http://127.0.0.1:{RECEIVER}")
    print(f"Envoy admin:                      http://127.0.0.1:{ENVOY_ADMIN}")
    print(f"Envoy config:                     {ENVOY_DIR / 'demo.yaml'}")
    print(f"filter:                           {WASM}")

    problem = etcd_problem()
    if problem:
        print(f"demo: {problem}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="envoy-webhooks-demo-"))
    etcd = EtcdCluster(workdir / "etcd", size=1).start_all()
    upstream = Upstream(PLATFORM).start()
    receiver = RecordingServer("webhook-receiver", RECEIVER).start()
    envoy = Envoy(with_the_api(etcd, workdir), workdir, name="envoy", concurrency=2, cwd=REPO,
                  env={"WEBHOOKS_ADMIN_TOKEN": ADMIN_TOKEN})
    print(f"Envoy log:                        {envoy.log_path}")
    try:
        envoy.start()
        banner("platform -> Envoy")
        for label, body in events:
            r = envoy.post_event(body)
            print(f"POST /api/v1/events  {label}: {len(body)} bytes -> {r.status} {r.body.decode(errors='replace')}")

        wait_until(lambda: receiver.count() >= 2, 15, message="two webhook calls")
        wait_until(lambda: envoy.wasm_stat("envoy_webhooks.events_seen") >= len(events), 10,
                   message="the filter to see every event")
        time.sleep(0.5)  # a wrong third call would have landed by now

        got = upstream.requests()
        intact = [g.sha256 for g in got] == [sha256(body) for _, body in events]
        print(f"the platform upstream got {len(got)} request(s), bodies byte-identical: {intact}")

        banner(f"the webhook receiver got {receiver.count()} call(s)")
        for rec in receiver.requests():
            print(f"{rec.method} {rec.path}")
            for name in SHOWN_HEADERS:
                if name in rec.headers:
                    print(f"  {name}: {rec.headers[name]}")
            event = json.loads(rec.body)
            print(f"  body: {len(rec.body)} bytes, event_type={event.get('event_type')} realm={event.get('realm')} "
                  f"operation={event.get('operation')} request_id={event.get('request_id')}")
            print("  " + rec.body.decode().replace("\n", "\n  "))

        banner("GET /webhooks-admin/status (Authorization: Bearer <token>)")
        status = envoy.webhooks_admin("GET", "/status", token=ADMIN_TOKEN)
        print(f"HTTP {status.status}")
        print(json.dumps(status.json(), indent=2) if status.status == 200 else status.body.decode(errors="replace"))

        banner("Envoy /stats/prometheus (envoy_webhooks_*)")
        for line in envoy.prometheus().splitlines():
            if line.startswith("envoy_webhooks_"):
                print(line)

        banner("a tenant makes its own webhook: POST /API/notifications/v1/webhooks/ (Auth-Token)")
        body = {"name": "My archive hook", "event_type": "assets", "realm": "formats", "status": "ENABLED",
                "url": f"http://hooks:{RECEIVER}/hooks/tenant", "query": 'data.status="ACTIVE"'}
        print(json.dumps(body))
        made = http_request(LISTENER, "POST", "/API/notifications/v1/webhooks/", body=json.dumps(body).encode(),
                            headers={"Auth-Token": TENANT_TOKEN, "content-type": "application/json"})
        shown = made.json()
        if "secret" in shown:
            shown["secret"] = shown["secret"][:10] + "... (shown once)"
        print(f"HTTP {made.status}\n{json.dumps(shown, indent=2)}")
        banner("platform -> Envoy: the seed formats event again")
        before = receiver.count()
        wait_until(lambda: (envoy.post_event(events[0][1]), receiver.count("/hooks/tenant") > 0)[1], 10, 0.2,
                   message="the tenant's webhook to be called")
        tenant_call = receiver.requests("/hooks/tenant")[0]
        print(f"{tenant_call.method} {tenant_call.path}  webhook-id: {tenant_call.headers.get('webhook-id')}  "
              f"signed: {'webhook-signature' in tenant_call.headers}")

        ok = before == 2 and intact and status.status == 200 and made.status == 201
        banner("demo " + ("OK" if ok else "FAILED"))
        return 0 if ok else 1
    except Exception as exc:  # noqa: BLE001 - the demo reports and exits non-zero
        print(f"demo failed: {exc}", file=sys.stderr)
        print(envoy.log_tail(40), file=sys.stderr)
        return 1
    finally:
        envoy.stop()
        receiver.stop()
        upstream.stop()
        etcd.kill_all()
        print("stopped Envoy, etcd, the receiver and the upstream")


if __name__ == "__main__":
    sys.exit(main())
