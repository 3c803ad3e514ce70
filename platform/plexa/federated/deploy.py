"""Deployment mode: a real SuperLink and N SuperNodes as separate processes on 127.0.0.1,
started and stopped by plexa, and the Flower app submitted to them with `flwr run`.

Each SuperNode gets `partition-id` and `num-partitions` in its node config, so it trains the
same partition the simulation would give it. The transport is `--insecure` (no TLS): fine on
loopback, where nothing leaves the machine; a deployment across hosts needs certificates.
Every process is started in its own session and torn down in `finally`, whatever happened.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack, closing, suppress
from pathlib import Path

from plexa.errors import RunFailed
from plexa.federated.apps import GLOBAL_STATE, JOB_KEY

HOST = "127.0.0.1"
FEDERATION = "plexa-local"
BIN = Path(sys.executable).parent


class DeployError(RunFailed, RuntimeError):
    """A Flower process failed to start, or the run did not complete."""


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DeployError(f"{log.stem} exited with {proc.returncode}; see {log}")
        with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
            if sock.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.2)
    raise DeployError(f"{log.stem} did not listen on {HOST}:{port} in {timeout:.0f}s; see {log}")


def write_app(app_dir: Path, job_path: Path) -> Path:
    """A Flower app folder whose components are plexa's apps (plexa is installed, so the
    bundle carries only its pyproject.toml); the job file is its run config."""
    app_dir.mkdir(parents=True, exist_ok=True)
    (app_dir / "pyproject.toml").write_text(
        f"""[project]
name = "plexa-federated"
version = "1.0.0"
description = "A plexa pipeline trained in Flower rounds"
license = "Apache-2.0"

[tool.flwr.app]
publisher = "plexa"

[tool.flwr.app.components]
serverapp = "plexa.federated.apps:serverapp"
clientapp = "plexa.federated.apps:clientapp"

[tool.flwr.app.config]
{JOB_KEY} = {json.dumps(str(job_path))}
"""
    )
    return app_dir


def _flower_home(home: Path, port: int) -> Path:
    """FLWR_HOME with one SuperLink connection, the loopback one this run started."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f"""[superlink]
default = "{FEDERATION}"

[superlink.{FEDERATION}]
address = "{HOST}:{port}"
insecure = true
"""
    )
    return home


# Linux: the child asks for SIGTERM when plexa dies, even by SIGKILL when no `finally` runs
# (the parent-death signal survives exec), then becomes the Flower command
_LAUNCHER = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(1)  # plexa is already gone\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


class Processes:
    """Popen'd Flower processes, each in its own session; `stop` ends them and their
    children (a SuperLink's ServerApp, a SuperNode's ClientApp)."""

    def __init__(self, logs: Path, env: dict[str, str]) -> None:
        self.logs, self.env = logs, env
        self.procs: list[subprocess.Popen] = []

    def start(self, name: str, args: list[str]) -> tuple[subprocess.Popen, Path]:
        log = self.logs / f"{name}.log"
        if sys.platform.startswith("linux"):
            args = [sys.executable, "-c", _LAUNCHER, str(os.getpid()), *args]
        with log.open("wb") as out:
            proc = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
                cwd=self.logs,
            )
        self.procs.append(proc)
        return proc, log

    def stop(self) -> None:
        for proc in reversed(self.procs):
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in reversed(self.procs):
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            _signal_group(proc, signal.SIGKILL)  # children the parent left behind
            proc.wait()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)  # the session this process leads: only ours


def run(
    job_path: Path,
    clients: int,
    rounds: int,
    workdir: Path,
    round_timeout: float,
    on_wait: Callable[[], None] | None = None,
) -> None:
    """Start a SuperLink and `clients` SuperNodes, run the app to completion, stop them all.

    `on_wait` is called every second while the run goes on (the runner reports rounds)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {
        **os.environ,
        "FLWR_HOME": str(_flower_home(workdir / "flwr-home", port)),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
    }
    app_dir = write_app(workdir / "app", job_path)
    procs = Processes(workdir, env)
    with ExitStack() as stack:
        stack.callback(procs.stop)
        link, link_log = procs.start(
            "superlink",
            [
                str(BIN / "flower-superlink"),
                "--insecure",
                "--host",
                HOST,
                "--port",
                str(port),
                "--disable-runtime-dependency-installation",
            ],
        )
        _wait_port(port, link, link_log)
        for i in range(clients):
            procs.start(
                f"supernode-{i}",
                [
                    str(BIN / "flower-supernode"),
                    "--insecure",
                    "--superlink",
                    f"{HOST}:{port}",
                    "--host",
                    HOST,
                    "--port",
                    str(free_port()),
                    "--node-config",
                    f"partition-id={i} num-partitions={clients}",
                ],
            )
        runner, run_log = procs.start(
            "flwr-run", [str(BIN / "flwr"), "run", str(app_dir), FEDERATION, "--stream"]
        )
        # every round may wait round_timeout for replies; starting the apps takes a while too
        deadline = time.monotonic() + rounds * round_timeout + 300
        while runner.poll() is None:
            if time.monotonic() > deadline:
                raise DeployError(f"the Flower run did not finish in time; logs in {workdir}")
            if on_wait is not None:
                on_wait()
            time.sleep(1.0)
        if on_wait is not None:
            on_wait()
        if runner.returncode != 0:
            tail = run_log.read_text(errors="replace").strip()[-800:]
            raise DeployError(f"flwr run exited with {runner.returncode}: {tail}")
        final = Path(json.loads(job_path.read_text())["run_dir"]) / GLOBAL_STATE
        if not final.exists():
            raise DeployError(
                f"the Flower run ended without a global model; logs in {workdir}:\n"
                + run_log.read_text(errors="replace")[-1500:]
            )
