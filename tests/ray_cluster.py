"""A real Ray cluster on this machine for tests: a head and more nodes as separate `ray start`
processes, token authentication on, dashboard on 127.0.0.1.

Isolation from any other Ray on the machine (an embedded one another test starts, a user's):
every port is picked free, the temp dir is our own (so `ray_current_cluster`, sockets and logs
don't mix with /tmp/ray), and teardown ends only the processes this helper started, by pid.
`ray stop --force` is deliberately not used: it kills *every* Ray process of the user on the
machine, whatever its temp dir, including other tests' embedded Rays.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
STARTUP_TIMEOUT = 180.0  # two cores shared with the test process: starts can be slow
STOP_GRACE = 3.0  # then SIGKILL, as `ray stop --force` would at once

# ports each `ray start` would otherwise take from fixed defaults (52365, 8265, 10001, ...)
_NODE_PORTS = (
    "--node-manager-port",
    "--object-manager-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--metrics-export-port",
    "--runtime-env-agent-port",
)
_HEAD_PORTS = ("--port", "--dashboard-port", "--ray-client-server-port")


@dataclass
class RayCluster:
    """What a test needs to reach the cluster, and what teardown needs to end it."""

    temp_dir: Path
    token: str
    dashboard_url: str = ""
    gcs_address: str = ""
    node_ids: list[str] = field(default_factory=list)
    processes: list[subprocess.Popen] = field(default_factory=list)

    def client_env(self, *, token: bool = True, auth_mode: bool = False) -> dict[str, str]:
        """Env for a client process: the token (and RAY_AUTH_MODE=token, which ray.init needs)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        if token:
            env["RAY_AUTH_TOKEN"] = self.token
        if auth_mode:
            env["RAY_AUTH_MODE"] = "token"
        return env

    def api(self, path: str, *, token: bool = True, timeout: float = 10) -> Any:
        """GET the dashboard's HTTP API, as Ray's own clients do: `Authorization: Bearer`."""
        import requests

        headers = {"Authorization": f"Bearer {self.token}"} if token else {}
        response = requests.get(f"{self.dashboard_url}{path}", headers=headers, timeout=timeout)
        response.raise_for_status()
        return response.json()

    def actors(self, class_name: str) -> list[dict[str, Any]]:
        """Every actor of this class, alive or dead, with its node, from Ray's state API."""
        query = (
            "/api/v0/actors?detail=1&limit=10000&filter_keys=class_name"
            f"&filter_predicates=%3D&filter_values={class_name}"
        )
        return self.api(query)["data"]["result"]["result"]


def free_ports(count: int) -> list[int]:
    """Ports the OS says are free now (held together so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _ray_start(cluster: RayCluster, args: list[str], log_name: str) -> subprocess.Popen:
    """One node: `ray start --block` in its own session, so its whole tree is ours to end."""
    env = cluster.client_env(auth_mode=True)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    log = (cluster.temp_dir / log_name).open("w")
    command = [str(BIN / "ray"), "start", "--block", "--disable-usage-stats", *args]
    command += ["--temp-dir", str(cluster.temp_dir), "--min-worker-port", "0"]
    command += ["--max-worker-port", "0", "--log-style", "record", "--log-color", "false"]
    process = subprocess.Popen(
        command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    log.close()
    cluster.processes.append(process)
    return process


def _wait(cluster: RayCluster, what: str, ready: Any) -> Any:
    """Poll `ready()` until it returns something truthy; fail early if a node process died."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        for process in cluster.processes:
            if process.poll() is not None:
                raise RuntimeError(f"`ray start` exited ({process.returncode}) before {what}")
        with suppress(Exception):
            value = ready()
            if value:
                return value
        time.sleep(0.5)
    raise TimeoutError(f"no {what} after {STARTUP_TIMEOUT:.0f}s")


def start(cluster: RayCluster, nodes: int, cpus_per_node: int) -> None:
    """Head with dashboard on 127.0.0.1, then `nodes - 1` more nodes joining its GCS."""
    ports = free_ports(len(_HEAD_PORTS) + len(_NODE_PORTS))
    head = [f"{flag}={port}" for flag, port in zip(_HEAD_PORTS + _NODE_PORTS, ports, strict=True)]
    _ray_start(
        cluster,
        ["--head", "--dashboard-host=127.0.0.1", "--include-dashboard=true", *head]
        + [f"--num-cpus={cpus_per_node}", "--num-gpus=0"],
        "ray-start-head.log",
    )
    cluster.dashboard_url = f"http://127.0.0.1:{ports[1]}"
    # Ray swaps 127.0.0.1 for the machine's address; the head writes the GCS address it uses
    address_file = cluster.temp_dir / "ray_current_cluster"
    cluster.gcs_address = _wait(cluster, "GCS address", lambda: address_file.read_text().strip())
    _wait(cluster, "jobs API", lambda: cluster.api("/api/jobs/") is not None)

    for index in range(1, nodes):
        node = [f"{flag}={port}" for flag, port in zip(_NODE_PORTS, free_ports(6), strict=True)]
        _ray_start(
            cluster,
            [f"--address={cluster.gcs_address}", *node]
            + [f"--num-cpus={cpus_per_node}", "--num-gpus=0"],
            f"ray-start-node{index}.log",
        )

    def alive_nodes() -> list[str]:
        found = cluster.api("/api/v0/nodes?detail=1&limit=100")["data"]["result"]["result"]
        ids = [n["node_id"] for n in found if n["state"] == "ALIVE"]
        return ids if len(ids) == nodes else []

    cluster.node_ids = _wait(cluster, f"{nodes} alive nodes", alive_nodes)


def _ours(cluster: RayCluster) -> list[Any]:
    """Our processes: each `ray start` and its descendants, plus anything whose command line
    names our temp dir (a daemon that outlived its parent)."""
    import psutil

    found: dict[int, psutil.Process] = {}

    def add(process: psutil.Process) -> None:
        with suppress(psutil.Error):
            found[process.pid] = process
            for child in process.children(recursive=True):
                found[child.pid] = child

    for popen in cluster.processes:
        with suppress(psutil.Error):
            add(psutil.Process(popen.pid))
    marker = str(cluster.temp_dir)
    for process in psutil.process_iter(["cmdline"]):
        if process.pid != os.getpid() and any(marker in a for a in process.info["cmdline"] or []):
            add(process)
    return list(found.values())


def _running(process: Any) -> bool:
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def stop(cluster: RayCluster) -> None:
    """SIGTERM our processes (raylets first, as `ray stop` does), SIGKILL what is left."""
    processes = _ours(cluster)
    processes.sort(key=lambda p: 0 if "raylet" in _name(p) else 2 if "gcs" in _name(p) else 1)
    for process in processes:
        with suppress(Exception):
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    while time.monotonic() < deadline and any(_running(p) for p in processes):
        time.sleep(0.2)
    for process in processes:
        if _running(process):
            with suppress(Exception):
                process.kill()
    for popen in cluster.processes:  # reap our direct children
        with suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=5)


def _name(process: Any) -> str:
    try:
        return process.name()
    except Exception:
        return ""


def logs_tail(cluster: RayCluster, lines: int = 30) -> str:
    """The end of each `ray start` log, to explain a failed start."""
    parts = []
    for log in sorted(cluster.temp_dir.glob("ray-start-*.log")):
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        parts.append(f"--- {log.name}\n" + "\n".join(tail))
    return "\n".join(parts)


@contextmanager
def ray_cluster(nodes: int = 2, cpus_per_node: int = 1) -> Iterator[RayCluster]:
    """A started cluster; stopped and its temp dir removed afterwards, whatever happened.

    The temp dir is short and directly under the system tmp: Ray puts Unix sockets in it and a
    socket path may not exceed 107 bytes, which pytest's tmp_path can."""
    temp_dir = Path(tempfile.mkdtemp(prefix="plexa-ray-"))
    # a fresh random token, as `ray get-auth-token --generate` makes (secrets.token_hex(32)),
    # passed by RAY_AUTH_TOKEN so that ~/.ray/auth_token is neither read nor written
    cluster = RayCluster(temp_dir=temp_dir, token=secrets.token_hex(32))
    try:
        try:
            start(cluster, nodes, cpus_per_node)
        except Exception as exc:
            raise RuntimeError(f"{exc}\n{logs_tail(cluster)}") from exc
        yield cluster
    finally:
        stop(cluster)
        for _ in range(3):  # a process that was still exiting may have written a last file
            shutil.rmtree(temp_dir, ignore_errors=True)
            if not temp_dir.exists():
                break
            time.sleep(1)
