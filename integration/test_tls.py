"""https:// receivers through envoy/dynamic-forward-proxy.yaml's https cluster (delivery.clusters
picks it by the URL's scheme), with certificates of a CA of the test's own (trustme) in place of
the system's bundle: delivered with SNI and the certificate checked against the URL's host; a
certificate for another host, an expired one and a self-signed one each fail the attempt,
retried and counted, with a last_error that points at TLS and at the cluster's stats (which say
why); a receiver that wants a client certificate gets one through a named cluster with mTLS."""

from __future__ import annotations

import datetime
import json
import ssl
from pathlib import Path

import pytest
import trustme
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from harness import REPO, RecordingServer, free_port, load_shipped_config, plugin_of, retarget, wait_until, walk
from test_envoy_configs import DEMO_PORTS, TOKEN_ENV

HTTPS = "dynamic_forward_proxy_cluster_https"
STRING_VALUE = "type.googleapis.com/google.protobuf.StringValue"


def server_context(cert_pem: bytes, key_pem: bytes, tmp: Path, client_ca: trustme.CA | None = None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    (tmp / "cert.pem").write_bytes(cert_pem)
    (tmp / "key.pem").write_bytes(key_pem)
    ctx.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        client_ca.configure_trust(ctx)
    return ctx


def leaf(cert: trustme.LeafCert) -> tuple[bytes, bytes]:
    return b"".join(blob.bytes() for blob in cert.cert_chain_pems), cert.private_key_pem.bytes()


def self_signed(host: str) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


@pytest.fixture
def receivers(tmp_path):
    """One HTTPS receiver per case, each on its own port, all on 127.0.0.1 (`localhost`)."""
    ca = trustme.CA()
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=2)
    cases = {
        "good": leaf(ca.issue_cert("localhost")),
        "other-host": leaf(ca.issue_cert("other.example")),
        "expired": leaf(ca.issue_cert("localhost", not_before=past - datetime.timedelta(days=30),
                                      not_after=past)),
        "self-signed": self_signed("localhost"),
        "wants-client-cert": leaf(ca.issue_cert("localhost")),
    }
    servers = {}
    for name, (cert, key) in cases.items():
        directory = tmp_path / name
        directory.mkdir()
        client_ca = ca if name == "wants-client-cert" else None
        servers[name] = RecordingServer(name, tls=server_context(cert, key, directory, client_ca)).start()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    client = ca.issue_cert("envoy-webhooks.client")
    client_dir = tmp_path / "client"
    client_dir.mkdir()
    client.cert_chain_pems[0].write_to_path(str(client_dir / "cert.pem"))
    client.private_key_pem.write_to_path(str(client_dir / "key.pem"))
    yield servers, ca_file, client_dir
    for server in servers.values():
        server.stop()


def mtls_cluster(port: int, ca_file: Path, client_dir: Path) -> dict:
    """docs/delivery.md's cluster for a receiver that wants a client certificate, pointed at
    the test's receiver, client certificate and CA."""
    doc = (REPO / "docs" / "delivery.md").read_text()
    block = doc.split("```yaml\n# mtls-receiver-cluster\n", 1)[1].split("```", 1)[0]
    (cluster,) = yaml.safe_load(block)
    replace = {"receiver.example.com": "localhost", "/etc/envoy/receiver-client/cert.pem": str(client_dir / "cert.pem"),
               "/etc/envoy/receiver-client/key.pem": str(client_dir / "key.pem"),
               "/etc/ssl/certs/ca-certificates.crt": str(ca_file)}
    text = json.dumps(cluster)
    for old, new in replace.items():
        text = text.replace(json.dumps(old), json.dumps(new))
    cluster = json.loads(text)
    cluster["type"] = "STATIC"
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    address["socket_address"] = {"address": "127.0.0.1", "port_value": port}
    return cluster


def test_https_receivers_are_checked_like_a_browser_would(launch_envoy, upstream, hooks, receivers):
    servers, ca_file, client_dir = receivers
    config = load_shipped_config("dynamic-forward-proxy.yaml")
    plugin = plugin_of(config)
    plugin["webhooks"] = [
        {"id": name, "event_type": "assets", "url": f"https://localhost:{server.port}/hooks/{name}"}
        for name, server in servers.items()
    ] + [{"id": "mtls", "event_type": "assets", "cluster": "mtls_receiver",
          "url": f"https://localhost:{servers['wants-client-cert'].port}/hooks/mtls"}]
    plugin["delivery"] = dict(plugin["delivery"], retry_schedule_s=[1], failure_threshold=100)

    def put(d: dict) -> None:
        if d.get("@type") == STRING_VALUE:
            d["value"] = json.dumps(plugin)
        if "trusted_ca" in d:
            d["trusted_ca"] = {"filename": str(ca_file)}  # the test's CA, not the system's

    walk(config, put)
    config["static_resources"]["clusters"].append(
        mtls_cluster(servers["wants-client-cert"].port, ca_file, client_dir))
    ports = dict(zip(DEMO_PORTS, (free_port(), upstream.port, hooks.port, free_port())))
    envoy = launch_envoy(None, upstream=upstream, config=retarget(config, ports), env=TOKEN_ENV)
    event = {"event_type": "assets", "realm": "formats", "operation": "update", "object_id": "o1",
             "request_id": "r1", "data": {}}
    assert envoy.post_event(event).status == 200
    token = TOKEN_ENV["WEBHOOKS_ADMIN_TOKEN"]

    def status() -> dict:
        return envoy.status(token=token)

    good = servers["good"].wait_for(1, "/hooks/good")[0]
    assert good.json() == event
    assert servers["good"].server_names == ["localhost"], "SNI from the URL's host"
    (mtls,) = servers["wants-client-cert"].wait_for(1, "/hooks/mtls")
    assert mtls.json() == event
    wait_until(lambda: status()["good"]["delivered"] == 1 and status()["mtls"]["delivered"] == 1,
               message="delivered over TLS, and over mTLS through the named cluster")

    refused = ("other-host", "expired", "self-signed", "wants-client-cert")
    # Each refused, retried once a second later, then failed.
    wait_until(lambda: all(status()[name]["failed"] == 1 for name in refused), timeout=15,
               message="each refused attempt retried, then failed")
    for name in refused:
        entry = status()[name]
        assert entry["status"] == "FAILING", entry
        wait_until(lambda: envoy.hook_stat(name, "retried") == 1, message=f"{name}: retried counted")
        assert "not reached over TLS" in entry["last_error"], entry
        assert f"cluster.{HTTPS}.ssl.fail_verify_*" in entry["last_error"], entry
        assert servers[name].requests(f"/hooks/{name}") == [], f"{name}: nothing reached the receiver"
        # The receiver's side of each refused handshake (it may end just after Envoy's).
        wait_until(lambda: len(servers[name].handshake_errors) >= 2, message=f"{name}: 2 handshakes refused")
        print(f"{name}: the receiver saw {servers[name].handshake_errors[0][:120]}; /status: {entry['status']}, "
              f"failed {entry['failed']}, last_error: {entry['last_error']}")
    stats = envoy.stats()
    ssl_stats = {k.rsplit(".", 1)[1]: v for k, v in stats.items() if k.startswith(f"cluster.{HTTPS}.ssl.")}
    print("ssl stats of the https cluster:", {k: v for k, v in ssl_stats.items() if v})
    assert ssl_stats.get("fail_verify_san", 0) == 2, ssl_stats  # other-host, two attempts
    assert ssl_stats.get("fail_verify_error", 0) == 4, ssl_stats  # expired and self-signed
    assert ssl_stats.get("connection_error", 0) >= 2, ssl_stats  # no client certificate
