"""A real etcd cluster for the cluster-state tests: Debian's etcd 3.4 (`etcd`, `etcdctl`,
installed by integration/setup.sh's setup_apt_packages), N members on 127.0.0.1, ports from
``free_port``, data in a directory of the test's.

    cluster = EtcdCluster(tmp_path).start_all()
    cluster.put("/k", "v"); cluster.get("/k")      # -> ("v", mod_revision)
    cluster.kill(0); cluster.start(0)             # SIGKILL, then rejoin with the same data
    cluster.kill_all(); cluster.start_all()

Reads and writes go through etcd's HTTP/JSON gateway (``/v3/...``), the way the filter talks
to etcd; ``etcdctl`` only enables authentication.
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from harness import RUN_ID, free_port, stop_process, wait_until

ETCD_BIN = os.environ.get("ETCD_BIN", "etcd")
ETCDCTL_BIN = os.environ.get("ETCDCTL_BIN", "etcdctl")

_running: "set[EtcdCluster]" = set()


@atexit.register
def _kill_leftovers() -> None:
    """Last resort if the test process ends without teardown: no etcd outlives it."""
    for cluster in list(_running):
        cluster.kill_all()


def etcd_problem() -> str | None:
    """Why etcd cannot run here, or None."""
    for binary in (ETCD_BIN, ETCDCTL_BIN):
        if shutil.which(binary) is None:
            return (f"{binary} is not installed: run `. integration/setup.sh && setup_apt_packages` "
                    "(Debian's etcd-server and etcd-client)")
    return None


def b64(data: str | bytes) -> str:
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def prefix_range_end(prefix: bytes) -> bytes:
    """etcd's end of the range of keys starting with ``prefix`` (as src/cluster/etcd.rs)."""
    end = bytearray(prefix)
    while end:
        last = end.pop()
        if last < 0xFF:
            end.append(last + 1)
            return bytes(end)
    return b"\0"


def compact(obj: Any) -> bytes:
    """JSON as serde_json writes it (no spaces), so bodies compare byte for byte."""
    return json.dumps(obj, separators=(",", ":")).encode()


def txn_put_if_revision(key: str | bytes, expected_mod_revision: int, value: str | bytes) -> bytes:
    """The body src/cluster/etcd.rs's ``txn_put_if_revision`` makes (tests check they are equal)."""
    return compact({
        "compare": [{"key": b64(key), "target": "MOD", "result": "EQUAL",
                     "mod_revision": str(expected_mod_revision)}],
        "success": [{"request_put": {"key": b64(key), "value": b64(value)}}],
        "failure": [{"request_range": {"key": b64(key)}}],
    })


def range_prefix_request(prefix: str | bytes) -> bytes:
    raw = prefix.encode() if isinstance(prefix, str) else prefix
    return compact({"key": b64(raw or b"\0"), "range_end": b64(prefix_range_end(raw))})


def authenticate_request(name: str, password: str) -> bytes:
    return compact({"name": name, "password": password})


class EtcdUnreachable(RuntimeError):
    pass


class EtcdCluster:
    """``size`` etcd members on 127.0.0.1. ``start_all()`` launches them and waits until every
    one is healthy; ``kill_all()`` (also at teardown) SIGKILLs what runs. Member logs are
    ``workdir/etcd-<i>.log`` (appended across restarts)."""

    def __init__(self, workdir: Path, size: int = 3, auth_token_ttl: int | None = None,
                 extra_args: list[str] | None = None):
        self.workdir = Path(workdir)
        self.size = size
        self.auth_token_ttl = auth_token_ttl
        self.extra_args = list(extra_args or [])
        self.client_ports = [free_port() for _ in range(size)]
        self.peer_ports = [free_port() for _ in range(size)]
        self.procs: list[subprocess.Popen | None] = [None] * size
        self.token_name = f"envoy-webhooks-{RUN_ID}"
        # Set by enable_auth: the helpers below then authenticate as this user.
        self.credentials: tuple[str, str] | None = None
        self._token: str | None = None

    # ------------------------------------------------------------------ addresses

    def name(self, i: int) -> str:
        return f"m{i}"

    def client_port(self, i: int) -> int:
        return self.client_ports[i]

    def client_url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.client_ports[i]}"

    @property
    def endpoints(self) -> list[str]:
        """Client URLs, one a member (``http://127.0.0.1:PORT``)."""
        return [self.client_url(i) for i in range(self.size)]

    def data_dir(self, i: int) -> Path:
        return self.workdir / f"etcd-{i}.data"

    def log_path(self, i: int) -> Path:
        return self.workdir / f"etcd-{i}.log"

    # ------------------------------------------------------------------ processes

    def command(self, i: int) -> list[str]:
        initial = ",".join(f"{self.name(j)}=http://127.0.0.1:{self.peer_ports[j]}" for j in range(self.size))
        args = [
            ETCD_BIN,
            "--name", self.name(i),
            "--data-dir", str(self.data_dir(i)),
            "--listen-client-urls", self.client_url(i),
            "--advertise-client-urls", self.client_url(i),
            "--listen-peer-urls", f"http://127.0.0.1:{self.peer_ports[i]}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer_ports[i]}",
            "--initial-cluster", initial,
            # Ignored once the data dir exists: a restarted member rejoins from its own data.
            "--initial-cluster-state", "new",
            "--initial-cluster-token", self.token_name,
        ]
        if self.auth_token_ttl is not None:
            args += ["--auth-token-ttl", str(self.auth_token_ttl)]
        return args + self.extra_args

    def running(self, i: int) -> bool:
        proc = self.procs[i]
        return proc is not None and proc.poll() is None

    def launch(self, i: int) -> None:
        """Starts member ``i`` (no wait). Does nothing if it runs."""
        if self.running(i):
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path(i), "ab") as log:
            log.write(f"==== start {' '.join(self.command(i))}\n".encode())
            log.flush()
            self.procs[i] = subprocess.Popen(self.command(i), stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL)
        _running.add(self)

    def healthy(self, i: int) -> bool:
        """Member ``i`` answers /health with true (it has a leader and no alarm)."""
        try:
            with urllib.request.urlopen(self.client_url(i) + "/health", timeout=2) as r:
                return json.loads(r.read()).get("health") == "true"
        except (OSError, ValueError):
            return False

    def wait_healthy(self, members: list[int] | None = None, timeout: float = 30.0) -> None:
        members = list(range(self.size)) if members is None else members

        def check() -> bool:
            for i in members:
                if not self.running(i):
                    raise EtcdUnreachable(f"etcd member {i} exited:\n{self.log_tail(i)}")
            return all(self.healthy(i) for i in members)

        wait_until(check, timeout=timeout, interval=0.1, fatal=(EtcdUnreachable,),
                   message=lambda: f"etcd members {members} healthy; logs:\n"
                   + "\n".join(self.log_tail(i, 15) for i in members))

    def start(self, i: int, timeout: float = 30.0) -> "EtcdCluster":
        """Starts member ``i`` with its data dir (a restarted member rejoins). Waits until it
        is healthy when a quorum would be running, else only until it is launched."""
        self.launch(i)
        running = sum(self.running(j) for j in range(self.size))
        if running > self.size // 2:
            self.wait_healthy([i], timeout)
        return self

    def start_all(self, timeout: float = 30.0) -> "EtcdCluster":
        for i in range(self.size):
            self.launch(i)
        self.wait_healthy(timeout=timeout)
        return self

    def kill(self, i: int) -> None:
        """SIGKILL member ``i`` (what a crash or an OOM kill does)."""
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)

    def stop(self, i: int) -> None:
        """SIGTERM member ``i`` (a clean shutdown), SIGKILL after 10 s."""
        proc = self.procs[i]
        if proc is not None:
            stop_process(proc)

    def kill_all(self) -> None:
        for i in range(self.size):
            self.kill(i)
        _running.discard(self)

    def stop_all(self) -> None:
        for i in range(self.size):
            self.stop(i)
        _running.discard(self)

    def log_tail(self, i: int, lines: int = 40) -> str:
        try:
            text = self.log_path(i).read_text(errors="replace")
        except OSError:
            return f"(no log for etcd member {i})"
        return f"--- etcd member {i} ({self.log_path(i)}):\n" + "\n".join(text.splitlines()[-lines:])

    # ------------------------------------------------------------------ the JSON gateway

    def request(self, path: str, body: bytes | dict, member: int | None = None,
                token: str | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
        """POSTs ``body`` to ``path`` on ``member`` (None: the first running member that
        answers). Returns (status, body) whatever the status; raises EtcdUnreachable when no
        member answers."""
        data = compact(body) if isinstance(body, dict) else body
        members = [member] if member is not None else [i for i in range(self.size) if self.running(i)]
        last: BaseException | None = None
        for i in members:
            req = urllib.request.Request(self.client_url(i) + path, data=data, method="POST",
                                         headers={"Content-Type": "application/json"})
            if token is not None:
                req.add_header("Authorization", token)
            try:
                with urllib.request.urlopen(req, timeout=timeout) as r:
                    return r.status, r.read()
            except urllib.error.HTTPError as e:
                return e.code, e.read()
            except OSError as e:
                last = e
        raise EtcdUnreachable(f"no etcd member answered {path} (tried {members}): {last!r}")

    def leader(self) -> int:
        """The index of the member that is the raft leader now."""
        ids = {}
        leader_id = None
        for i in range(self.size):
            if not self.running(i):
                continue
            status, body = self.request("/v3/maintenance/status", b"{}", member=i, token=self._token)
            if status == 200:
                answer = json.loads(body)
                ids[answer["header"]["member_id"]] = i
                leader_id = answer.get("leader", leader_id)
        if leader_id not in ids:
            raise EtcdUnreachable(f"no running member is the leader ({leader_id!r}; members {ids})")
        return ids[leader_id]

    def authenticate(self, name: str, password: str, member: int | None = None) -> str:
        status, body = self.request("/v3/auth/authenticate", authenticate_request(name, password), member)
        if status != 200:
            raise AssertionError(f"authenticate as {name}: HTTP {status} {body!r}")
        return json.loads(body)["token"]

    def _call(self, path: str, body: bytes | dict, member: int | None = None) -> dict:
        """A call that must succeed, authenticated when auth is enabled."""
        if self.credentials is not None and self._token is None:
            self._token = self.authenticate(*self.credentials)
        status, answer = self.request(path, body, member, self._token)
        if status == 401 and self.credentials is not None:  # token expired: once more
            self._token = self.authenticate(*self.credentials)
            status, answer = self.request(path, body, member, self._token)
        if status != 200:
            raise AssertionError(f"etcd {path}: HTTP {status} {answer!r}")
        return json.loads(answer)

    def put(self, key: str | bytes, value: str | bytes, member: int | None = None) -> int:
        """Writes; returns the store's revision after the write (the key's mod_revision)."""
        answer = self._call("/v3/kv/put", {"key": b64(key), "value": b64(value)}, member)
        return int(answer["header"]["revision"])

    def get(self, key: str | bytes, member: int | None = None) -> tuple[str, int] | None:
        """(value, mod_revision) of ``key``, or None when it does not exist."""
        answer = self._call("/v3/kv/range", {"key": b64(key)}, member)
        kvs = answer.get("kvs", [])
        if not kvs:
            return None
        return unb64(kvs[0].get("value", "")).decode(), int(kvs[0]["mod_revision"])

    def get_prefix(self, prefix: str | bytes, member: int | None = None) -> dict[str, tuple[str, int]]:
        """{key: (value, mod_revision)} of every key starting with ``prefix``."""
        answer = self._call("/v3/kv/range", range_prefix_request(prefix), member)
        return {unb64(kv["key"]).decode(): (unb64(kv.get("value", "")).decode(), int(kv["mod_revision"]))
                for kv in answer.get("kvs", [])}

    def txn(self, body: bytes, member: int | None = None) -> dict:
        return self._call("/v3/kv/txn", body, member)

    # ------------------------------------------------------------------ etcdctl

    def etcdctl(self, *args: str, user: str | None = None) -> str:
        command = [ETCDCTL_BIN, "--endpoints", ",".join(self.endpoints[i] for i in range(self.size)
                                                       if self.running(i))]
        if user is not None:
            command += ["--user", user]
        done = subprocess.run(command + list(args), capture_output=True, text=True, timeout=30,
                              env={**os.environ, "ETCDCTL_API": "3"})
        if done.returncode != 0:
            raise AssertionError(f"{' '.join(command + list(args))}: exit {done.returncode}\n"
                                 f"{done.stdout}{done.stderr}")
        return done.stdout

    def enable_auth(self, user: str = "root", password: str = "rootpw") -> None:
        """Adds ``root`` (with ``password``; and ``user`` with the root role if it is not root)
        and enables authentication. The helpers then authenticate as ``user``."""
        self.etcdctl("user", "add", f"root:{password}")
        if user != "root":
            self.etcdctl("user", "add", f"{user}:{password}")
            self.etcdctl("user", "grant-role", user, "root")
        self.etcdctl("auth", "enable")
        self.credentials = (user, password)
        self._token = None
