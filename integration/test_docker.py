"""envoy-webhooks as users deploy it: the docker-compose quickstart end to end, a broken
plugin configuration under compose, the filter's OCI image for Istio pushed to a real
registry and fetched the way Istio's image fetcher does, and the one-line failures of the
Docker runner. Needs Docker and the images of scripts/images (scripts/test builds them);
without them these tests fail, saying what is missing."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import yaml

from harness import (
    ENVOY_IMAGE,
    FIXTURES,
    REPO,
    RUN_ID,
    WASM,
    docker_problem,
    free_port,
    http_request,
    load_shipped_config,
    plugin_of,
    retarget,
    stop_process,
    walk,
    wait_until,
)

VERSION = re.search(r'^version = "(.+)"$', (REPO / "Cargo.toml").read_text(), re.M).group(1)
CLI_IMAGE = f"envoy-webhooks/cli:{VERSION}"
ETCD_IMAGE = "envoy-webhooks/etcd:local"
WASM_IMAGE = f"envoy-webhooks:{VERSION}"
QUICKSTART = REPO / "envoy" / "quickstart"
SECRET_ENV = "QUICKSTART_WEBHOOK_SECRET"


def need_docker(*images: str) -> None:
    for image in images or (None,):
        problem = docker_problem(image)
        if problem:
            pytest.fail(problem, pytrace=False)


def need_command(name: str, why: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing ({why}); scripts/test installs it", pytrace=False)
    return path


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


# --------------------------------------------------------------------------- compose


class Quickstart:
    """docker-compose.yaml of the repository, as it is, on ports chosen now: the quickstart's
    Envoy configs are copied with their ports changed (and nothing else, unless
    ``edit_plugin`` changes the plugin JSON); the compose project is named for this run."""

    def __init__(self, workdir: Path, edit_plugin=None):
        self.compose = need_command("docker-compose", "the quickstart runs with docker-compose")
        self.project = f"ewtest-{RUN_ID}-{secrets.token_hex(2)}"
        self.ports = {"LISTENER_PORT": free_port(), "PLATFORM_PORT": free_port(),
                      "RECEIVER_PORT": free_port(), "ENVOY_ADMIN_PORT": free_port(),
                      "ETCD_PORT": free_port(), "ETCD_PEER_PORT": free_port(),
                      "LISTENER_2_PORT": free_port(), "ENVOY_2_ADMIN_PORT": free_port()}
        p = self.ports
        moves = {18080: p["LISTENER_PORT"], 18081: p["PLATFORM_PORT"], 18082: p["RECEIVER_PORT"],
                 18901: p["ENVOY_ADMIN_PORT"], 18379: p["ETCD_PORT"],
                 18090: p["LISTENER_2_PORT"], 18902: p["ENVOY_2_ADMIN_PORT"]}
        self.dir = workdir / "quickstart"
        self.dir.mkdir()
        for name in ("envoy.yaml", "envoy-2.yaml"):
            envoy = retarget(load_shipped_config(f"quickstart/{name}"), moves, wasm="/etc/envoy/envoy_webhooks.wasm")
            if edit_plugin is not None:
                plugin = plugin_of(envoy)
                edit_plugin(plugin)

                def put(d: dict) -> None:
                    if d.get("@type") == "type.googleapis.com/google.protobuf.StringValue":
                        d["value"] = json.dumps(plugin)

                walk(envoy, put)
            (self.dir / name).write_text(yaml.safe_dump(envoy, sort_keys=False))
        platform = retarget(load_shipped_config("quickstart/platform.yaml"), moves)
        (self.dir / "platform.yaml").write_text(yaml.safe_dump(platform, sort_keys=False))
        self.env = dict(os.environ, QUICKSTART_DIR=str(self.dir), ENVOY_IMAGE=ENVOY_IMAGE,
                        ENVOY_WEBHOOKS_WASM=str(WASM), ENVOY_WEBHOOKS_VERSION=VERSION,
                        **{k: str(v) for k, v in self.ports.items()})

    def run(self, *args: str, timeout: float = 180, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([self.compose, "-f", str(REPO / "docker-compose.yaml"), "-p", self.project, *args],
                              cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"docker-compose {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    def logs(self, service: str) -> str:
        return self.run("logs", "--no-color", service).stdout

    def container(self, service: str) -> str:
        return self.run("ps", "-q", service).stdout.strip()

    def exit_code(self, service: str, timeout: float = 120) -> int:
        """Waits for the service's container to exit; its exit code."""
        cid = self.container(service)
        assert cid, f"no container for {service}"
        return int(docker("wait", cid, timeout=timeout).stdout.strip())

    def leftovers(self) -> dict[str, list[str]]:
        label = f"label=com.docker.compose.project={self.project}"
        return {
            "containers": docker("ps", "-aq", "--filter", label).stdout.split(),
            "networks": docker("network", "ls", "-q", "--filter", label).stdout.split(),
            "volumes": docker("volume", "ls", "-q", "--filter", label).stdout.split(),
        }

    def down(self) -> None:
        self.run("down", "-v", "--remove-orphans", "-t", "5", check=False)


@pytest.fixture
def quickstart(tmp_path: Path, request: pytest.FixtureRequest):
    need_docker(ENVOY_IMAGE, CLI_IMAGE, ETCD_IMAGE)
    made: list[Quickstart] = []

    def make(**kw) -> Quickstart:
        q = Quickstart(tmp_path, **kw)
        made.append(q)
        return q

    yield make
    for q in made:
        if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
            for service in ("envoy", "envoy-2", "etcd", "receiver", "sender", "platform"):
                print(f"\n===== compose {service} =====\n{q.logs(service)[-6000:]}")
        q.down()
        assert q.leftovers() == {"containers": [], "networks": [], "volumes": []}


def test_quickstart_delivers_the_seed_events_with_verified_signatures(quickstart):
    q = quickstart()
    q.run("up", "-d")
    assert q.exit_code("sender") == 0, q.logs("sender")
    sender = q.logs("sender")
    assert sender.count("-> 200 platform-ok") == 2, sender

    def two_deliveries() -> str | None:
        log = q.logs("receiver")
        return log if log.count("answered: 200") >= 2 else None

    log = wait_until(two_deliveries, 30, 0.5, message=lambda: f"two deliveries in:\n{q.logs('receiver')}")
    deliveries = log.split("=== delivery")[1:]
    assert len(deliveries) == 2, log
    by_path = {re.search(r"POST (\S+)", d).group(1): d for d in deliveries}
    assert set(by_path) == {"/hooks/formats", "/hooks/metadata"}, log
    for path, fixture in (("/hooks/formats", "seed-formats-event.json"),
                          ("/hooks/metadata", "seed-metadata-event.json")):
        d = by_path[path]
        body = (FIXTURES / fixture).read_bytes().strip()
        assert "signature: verified" in d, d
        assert f"body ({len(body)} bytes, JSON)" in d, d
        assert f'"request_id": "{json.loads(body)["request_id"]}"' in d, d
        assert "webhook-id: msg_" in d and "user-agent: envoy-webhooks/" in d
    assert "auth-token: quickstart-transcoder-token" in by_path["/hooks/formats"]
    assert "signatures verified" in log  # the receiver was given the secret

    # The filter's admin API, through the quickstart's Envoy.
    status = http_request(q.ports["LISTENER_PORT"], "GET", "/webhooks-admin/status",
                          headers={"authorization": "Bearer quickstart-admin-token"})
    assert status.status == 200
    delivered = {w["id"]: w["delivered"] for w in status.json()["webhooks"]}
    assert delivered == {"formats-to-transcoder": 1, "shared-metadata": 1, "collection-deletes": 0}

    # README's curl: a tenant's webhook made through the API gets the tenant's next events.
    made = http_request(q.ports["LISTENER_PORT"], "POST", "/API/notifications/v1/webhooks/",
                        body=json.dumps({"event_type": "assets", "status": "ENABLED",
                                         # 18082, moved as the quickstart's files are
                                         "url": f"http://127.0.0.1:{q.ports['RECEIVER_PORT']}/hooks/tenant"}).encode(),
                        headers={"Auth-Token": "quickstart-tenant-token-0123456789",
                                 "content-type": "application/json"})
    assert made.status == 201, made
    assert made.json()["secret"].startswith("whsec_")
    event = (FIXTURES / "seed-formats-event.json").read_bytes()

    def tenant_delivery() -> bool:
        http_request(q.ports["LISTENER_PORT"], "POST", "/api/v1/events", body=event,
                     headers={"content-type": "application/json"})
        return "POST /hooks/tenant" in q.logs("receiver")

    wait_until(tenant_delivery, 30, 0.5, message=lambda: q.logs("receiver")[-3000:])
    # ... through the egress listener, whose RBAC let the operator's exception (the receiver) through.
    stats = http_request(q.ports["ENVOY_ADMIN_PORT"], "GET",
                         "/stats?filter=^http\\.webhooks_egress_http\\.rbac\\.").body.decode()
    allowed = dict(line.split(": ") for line in stats.splitlines() if ": " in line)
    assert int(allowed["http.webhooks_egress_http.rbac.allowed"]) >= 1, stats

    q.down()
    assert q.leftovers() == {"containers": [], "networks": [], "volumes": []}


def test_the_second_envoy_of_the_cluster_profile_is_the_first_on_other_ports():
    first = retarget(load_shipped_config("quickstart/envoy.yaml"), {})
    second = retarget(load_shipped_config("quickstart/envoy-2.yaml"), {18090: 18080, 18902: 18901})
    assert second == first, "envoy-2.yaml must be envoy.yaml with the ports 18090 and 18902"


def test_with_the_cluster_profile_a_webhook_failed_through_one_envoy_is_failed_on_the_other(quickstart):
    """docker-compose --profile cluster up: etcd and a second Envoy; the sender's events go
    to the first Envoy, whose calls to one webhook fail (an unknown cluster), and the second
    Envoy, which saw none of them, says FAILED too."""
    def fail_formats(plugin: dict) -> None:
        plugin["webhooks"][0]["cluster"] = "no-such-cluster"
        plugin["delivery"].update(failure_threshold=1, retry_schedule_s=[])

    q = quickstart(edit_plugin=fail_formats)
    q.run("--profile", "cluster", "up", "-d")
    assert q.exit_code("sender") == 0, q.logs("sender")

    def status(port_name: str) -> dict:
        r = http_request(q.ports[port_name], "GET", "/webhooks-admin/status",
                         headers={"authorization": "Bearer quickstart-admin-token"})
        assert r.status == 200, r
        return r.json()

    def webhook(port_name: str, id: str) -> dict:
        return {w["id"]: w for w in status(port_name)["webhooks"]}[id]

    wait_until(lambda: webhook("LISTENER_PORT", "formats-to-transcoder")["status"] == "FAILED", 30, 0.5,
               message="FAILED through the first Envoy")
    second = wait_until(lambda: (w := webhook("LISTENER_2_PORT", "formats-to-transcoder"))["status"] == "FAILED"
                        and w, 10, 0.2, message="FAILED on the second Envoy")
    assert second["failed"] == 0, "the second Envoy made no call itself"
    assert webhook("LISTENER_2_PORT", "shared-metadata")["status"] == "ENABLED"
    assert status("LISTENER_2_PORT")["cluster_state"]["stale"] is False
    q.down()
    assert q.leftovers() == {"containers": [], "networks": [], "volumes": []}


def test_quickstart_with_a_broken_plugin_configuration_exits_with_our_message(quickstart):
    def break_it(plugin: dict) -> None:
        plugin["webhooks"][0]["qeury"] = plugin["webhooks"][0].pop("query")
        plugin["webhooks"][1]["query"] = "data.status=ACTIVE"

    q = quickstart(edit_plugin=break_it)
    q.run("up", "-d", "envoy")
    code = q.exit_code("envoy", timeout=60)
    log = q.logs("envoy")
    assert code != 0, log
    assert "webhook \"formats-to-transcoder\": field 'qeury': unknown field" in log, log[-4000:]
    assert "webhook \"shared-metadata\": field 'query': unquoted value 'ACTIVE'" in log, log[-4000:]


# --------------------------------------------------------------------------- the Envoy image


def test_the_envoy_image_has_the_official_layout():
    need_docker(ENVOY_IMAGE)
    inspect = json.loads(docker("image", "inspect", ENVOY_IMAGE).stdout)[0]["Config"]
    assert inspect["Entrypoint"] == ["/usr/local/bin/envoy"]
    assert inspect["Cmd"] == ["-c", "/etc/envoy/envoy.yaml"]
    version = ENVOY_IMAGE.rsplit(":", 1)[1]
    assert inspect["Labels"]["org.opencontainers.image.version"] == version
    # The binary runs from /usr/local/bin with only the libraries copied in, and the default
    # configuration at /etc/envoy/envoy.yaml is valid (validate mode binds no port).
    run = docker("run", "--rm", "--network", "none", ENVOY_IMAGE, "--version")
    assert f"/{version}/" in run.stdout
    run = docker("run", "--rm", "--network", "none", ENVOY_IMAGE,
                 "--mode", "validate", "-c", "/etc/envoy/envoy.yaml", check=False)
    assert run.returncode == 0 and "configuration '/etc/envoy/envoy.yaml' OK" in run.stdout + run.stderr, \
        run.stdout + run.stderr


# --------------------------------------------------------------------------- the OCI image for Istio


class Registry:
    """Debian's docker-registry on a 127.0.0.1 port, storing in ``workdir``."""

    def __init__(self, workdir: Path):
        binary = need_command("docker-registry", "Debian's registry server, for the OCI image test")
        self.port = free_port()
        config = workdir / "registry.yml"
        config.write_text(yaml.safe_dump({
            "version": 0.1,
            "log": {"level": "warn"},
            "storage": {"filesystem": {"rootdirectory": str(workdir / "registry-data")}},
            "http": {"addr": f"127.0.0.1:{self.port}"},
        }))
        self.log = open(workdir / "registry.log", "wb")
        self.proc = subprocess.Popen([binary, "serve", str(config)], stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        wait_until(lambda: http_request(self.port, "GET", "/v2/", timeout=2).status == 200, 30,
                   message=lambda: f"the registry on 127.0.0.1:{self.port}: "
                                   f"{(workdir / 'registry.log').read_text(errors='replace')[-2000:]}")

    def get(self, path: str, accept: str | None = None):
        r = http_request(self.port, "GET", path, headers={"accept": accept} if accept else None)
        assert r.status == 200, f"GET {path}: {r.status} {r.body[:300]!r}"
        return r

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()


@pytest.fixture
def registry(tmp_path: Path):
    reg = Registry(tmp_path)
    yield reg
    reg.stop()


# What Istio's image fetcher asks a registry for (a Docker image or an OCI manifest).
MANIFEST_ACCEPT = ", ".join([
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
])


def test_the_wasm_image_is_what_istio_fetches(registry):
    need_docker(WASM_IMAGE)
    wasm = WASM.read_bytes()
    assert wasm[:4] == b"\0asm"
    remote = f"127.0.0.1:{registry.port}/envoy-webhooks:{VERSION}"
    docker("tag", WASM_IMAGE, remote)
    try:
        docker("push", remote, timeout=300)
    finally:
        docker("rmi", remote, check=False)  # only the extra tag

    # As Istio does: manifest, then the layers' blobs, over the registry's HTTP API.
    r = registry.get(f"/v2/envoy-webhooks/manifests/{VERSION}", MANIFEST_ACCEPT)
    digest = "sha256:" + hashlib.sha256(r.body).hexdigest()
    # The WasmPlugin's `sha256` for an oci:// URL is this manifest digest.
    assert r.headers["docker-content-digest"] == digest
    manifest = r.json()
    assert manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert manifest["config"]["mediaType"] == "application/vnd.docker.container.image.v1+json"
    layers = manifest["layers"]
    assert len(layers) == 1  # FROM scratch + plugin.wasm: the compat variant
    assert layers[-1]["mediaType"] == "application/vnd.docker.image.rootfs.diff.tar.gzip"
    blob = registry.get(f"/v2/envoy-webhooks/blobs/{layers[-1]['digest']}").body
    assert "sha256:" + hashlib.sha256(blob).hexdigest() == layers[-1]["digest"]
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tar:
        files = {m.name.lstrip("./"): m for m in tar.getmembers() if m.isfile()}
        assert list(files) == ["plugin.wasm"]
        plugin = tar.extractfile(files["plugin.wasm"]).read()
    assert plugin == wasm
    assert plugin[:4] == b"\0asm"
    config = json.loads(registry.get(f"/v2/envoy-webhooks/blobs/{manifest['config']['digest']}").body)
    assert config["config"]["Labels"]["org.opencontainers.image.version"] == VERSION


OCI_LAYOUT = REPO / "target" / "images" / "oci" / "envoy-webhooks"


def test_the_oci_artifact_variant_is_what_istio_fetches(registry):
    skopeo = need_command("skopeo", "pushes the OCI image layout")
    if not (OCI_LAYOUT / "index.json").exists():
        pytest.fail(f"{OCI_LAYOUT} is missing: run `bash scripts/images`", pytrace=False)
    wasm = WASM.read_bytes()
    push = subprocess.run([skopeo, "copy", "--dest-tls-verify=false", f"oci:{OCI_LAYOUT}:{VERSION}",
                           f"docker://127.0.0.1:{registry.port}/envoy-webhooks-oci:{VERSION}"],
                          capture_output=True, text=True, timeout=120)
    assert push.returncode == 0, push.stderr

    r = registry.get(f"/v2/envoy-webhooks-oci/manifests/{VERSION}", MANIFEST_ACCEPT)
    assert r.headers["docker-content-digest"] == "sha256:" + hashlib.sha256(r.body).hexdigest()
    manifest = r.json()
    # Not Docker's schema 2 and not a compat layer: Istio takes it as the oci variant,
    # which must have exactly two layers, one of them the raw .wasm.
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["config"]["mediaType"] == "application/vnd.module.wasm.config.v1+json"
    assert [l["mediaType"] for l in manifest["layers"]] == [
        "application/vnd.module.wasm.config.v1+json",
        "application/vnd.module.wasm.content.layer.v1+wasm",
    ]
    wasm_layer = manifest["layers"][1]
    plugin = registry.get(f"/v2/envoy-webhooks-oci/blobs/{wasm_layer['digest']}").body
    assert plugin == wasm and plugin[:4] == b"\0asm"
    runtime = json.loads(registry.get(f"/v2/envoy-webhooks-oci/blobs/{manifest['layers'][0]['digest']}").body)
    assert runtime["config"]["rootIds"] == ["envoy_webhooks"]


# --------------------------------------------------------------------------- the Docker runner's failures


def test_docker_problems_are_one_clear_line(tmp_path, monkeypatch):
    assert docker_problem(docker=str(tmp_path / "no-docker")).startswith("Docker is missing: no `")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-daemon.sock")
    problem = docker_problem()
    assert problem.startswith("the Docker daemon is not reachable") and "\n" not in problem
    monkeypatch.delenv("DOCKER_HOST")
    assert docker_problem("envoy-webhooks/no-such-image:0") == \
        "the Docker image envoy-webhooks/no-such-image:0 is missing: run `bash scripts/images`"


def test_the_docker_runner_fails_without_a_daemon_saying_so(tmp_path):
    env = dict(os.environ, ENVOY_RUNNER="docker", DOCKER_HOST=f"unix://{tmp_path}/no-daemon.sock")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "integration/test_delivery.py::test_exact_delivery"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout
    assert "ENVOY_RUNNER=docker: the Docker daemon is not reachable" in proc.stdout, proc.stdout
    assert "1 error" in proc.stdout or "1 failed" in proc.stdout, proc.stdout
    assert time.monotonic() - started < 60
