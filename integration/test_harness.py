"""The harness itself, checked against Envoy without the filter: if these fail, the
scenario tests cannot be trusted."""

from __future__ import annotations

import os
import socket

import pytest

from harness import (
    closed_port,
    envoy_config,
    fixture_bytes,
    free_port,
    http_request,
    sha256,
    wait_until,
)

FIVE_MIB = 5 * 1024 * 1024


@pytest.fixture
def plain_envoy(launch_envoy, upstream):
    """Envoy with the same listener/route/clusters as the filter tests, but no filter."""
    return launch_envoy(None, upstream=upstream)


def test_free_ports_are_distinct_and_bindable():
    ports = {free_port() for _ in range(50)}
    assert len(ports) == 50
    for port in list(ports)[:5]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_wait_until_returns_value_and_times_out():
    assert wait_until(lambda: 42, timeout=1) == 42
    with pytest.raises(AssertionError, match="timed out"):
        wait_until(lambda: False, timeout=0.2, message="never")


def test_recording_server_replies_and_records(make_server):
    server = make_server("r")
    server.set_reply("/slow", status=503, delay=0.3, body=b"later")
    r = http_request(server.port, "POST", "/fast", b"abc", {"x-one": "1"})
    assert (r.status, r.body) == (200, b"ok")
    r = http_request(server.port, "POST", "/slow", b"def")
    assert (r.status, r.body) == (503, b"later")
    r = http_request(server.port, "POST", "/chunked", [b"ab", b"", b"cd" * 1000], chunked=True)
    assert r.status == 200
    got = server.wait_for(3)
    server.set_reply("/empty", status=204)
    assert (http_request(server.port, "POST", "/empty", b"").status, server.wait_for(4)[3].path) == (204, "/empty")
    assert [(g.method, g.path, g.body[:3]) for g in got] == [("POST", "/fast", b"abc"), ("POST", "/slow", b"def"),
                                                            ("POST", "/chunked", b"abc")]
    assert got[0].headers["x-one"] == "1"
    assert got[2].body == b"ab" + b"cd" * 1000


def test_closed_port_refuses():
    with pytest.raises(OSError):
        http_request(closed_port(), "GET", "/", timeout=2)


def test_envoy_passthrough_keeps_bodies(plain_envoy, upstream):
    body = fixture_bytes("seed-formats-event.json")
    r = plain_envoy.post_event(body)
    assert (r.status, r.body) == (200, b"platform-ok")
    r = plain_envoy.request("GET", "/api/v1/assets?x=1")
    assert r.status == 200
    got = upstream.wait_for(2)
    assert got[0].sha256 == sha256(body)
    assert got[0].path == "/api/v1/events"
    assert got[1].method == "GET" and got[1].path == "/api/v1/assets?x=1"


def test_envoy_passthrough_5mib_chunked(plain_envoy, upstream):
    body = os.urandom(FIVE_MIB)
    chunks = [body[i:i + 65536] for i in range(0, len(body), 65536)]
    r = plain_envoy.request("POST", "/api/v1/events", chunks, {"content-type": "application/json"}, chunked=True)
    assert r.status == 200
    got = upstream.wait_for(1)
    assert len(got[0].body) == FIVE_MIB and got[0].sha256 == sha256(body)


def test_envoy_admin_helpers(plain_envoy):
    stats = plain_envoy.stats()
    assert stats["http.ingress.downstream_rq_total"] >= 0
    assert "# TYPE envoy_http_downstream_rq_total counter" in plain_envoy.prometheus()


def test_envoy_dies_at_teardown(launch_envoy, upstream):
    envoy = launch_envoy(None, upstream=upstream)
    assert envoy.running
    launch_envoy.stop_all(show_logs=False)
    assert not envoy.running


def test_envoy_rejecting_its_config_is_reported(launch_envoy, upstream):
    config = envoy_config(listener_port=free_port(), admin_port=free_port(), upstream_port=upstream.port,
                          plugin=None)
    config["static_resources"]["clusters"][0]["type"] = "NO_SUCH_TYPE"
    envoy = launch_envoy(None, upstream=upstream, config=config, wait=False)
    assert envoy.wait_exit(60) not in (0, None)
    assert "NO_SUCH_TYPE" in envoy.log_text()
