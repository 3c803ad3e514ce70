"""A real MLflow tracking server for tests: PostgreSQL (Debian's package) as the backend store,
`mlflow server` with proxied artifact storage, both on loopback with free ports.

PostgreSQL refuses to run as root, so when the tests run as root its processes run as the
`postgres` user (Popen's `user=`) in a temp dir that user owns. Teardown ends only what this
helper started, by pid: the postmaster gets SIGINT (PostgreSQL's "fast" shutdown), the MLflow
server's process tree (the `mlflow` CLI and the uvicorn it spawns) SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from tests.ray_cluster import free_ports

BIN = Path(sys.executable).parent
STARTUP_TIMEOUT = 120.0  # MLflow runs its schema migrations on first start: slow on 2 cores
STOP_GRACE = 5.0
PG_USER = "plexa"
PG_DATABASE = "mlflow"


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL's bin folder (Debian puts it under /usr/lib/postgresql)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version)
    return Path(found[-1]).parent if found else None


def _version(path: str) -> int:
    part = Path(path).parents[1].name
    return int(part) if part.isdigit() else 0


def _run_as() -> str | None:
    """PostgreSQL will not run as root: run it as `postgres` then; else as ourselves."""
    return "postgres" if os.geteuid() == 0 else None


@dataclass
class Postgres:
    """A private PostgreSQL cluster: its folder, port, password and postmaster."""

    root: Path
    port: int
    password: str
    process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"postgresql+psycopg2://{PG_USER}:{self.password}@127.0.0.1:{self.port}/{PG_DATABASE}"


@contextmanager
def postgres() -> Iterator[Postgres]:
    """initdb, start the postmaster on 127.0.0.1 (and a socket in our folder), create the
    database; stopped and removed afterwards whatever happened."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        raise FileNotFoundError("PostgreSQL is not installed (scripts/system-deps installs it)")
    user = _run_as()
    root = Path(tempfile.mkdtemp(prefix="plexa-pg-"))
    server = Postgres(root=root, port=free_ports(1)[0], password=secrets.token_hex(16))
    try:
        (root / "pwfile").write_text(server.password + "\n")
        (root / "socket").mkdir()
        if user:
            shutil.chown(root, user)
            for path in root.iterdir():
                shutil.chown(path, user)
        initdb = [str(bin_dir / "initdb"), "-D", str(root / "data"), "-U", PG_USER]
        initdb += ["--pwfile", str(root / "pwfile"), "--auth-host=scram-sha-256"]
        initdb += ["--auth-local=scram-sha-256", "-E", "UTF8", "--no-sync"]
        subprocess.run(initdb, user=user, check=True, capture_output=True, timeout=120)
        (root / "pwfile").unlink()
        log = (root / "postgres.log").open("w")
        server.process = subprocess.Popen(
            [str(bin_dir / "postgres"), "-D", str(root / "data"), "-h", "127.0.0.1"]
            + ["-p", str(server.port), "-k", str(root / "socket"), "-c", "fsync=off"],
            user=user,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        _wait_for_database(server)
        yield server
    finally:
        if server.process is not None:
            _end(server.process, signal.SIGINT, tree_too=False)  # postmaster ends its own
        shutil.rmtree(root, ignore_errors=True)


def _wait_for_database(server: Postgres) -> None:
    import psycopg2

    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        assert server.process is not None
        if server.process.poll() is not None:
            log = (server.root / "postgres.log").read_text(errors="replace")
            raise RuntimeError(f"postgres exited ({server.process.returncode}):\n{log[-2000:]}")
        try:
            connection = psycopg2.connect(
                host="127.0.0.1", port=server.port, user=PG_USER, password=server.password,
                dbname="postgres", connect_timeout=2,
            )  # fmt: skip
            break
        except psycopg2.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE {PG_DATABASE}")
    finally:
        connection.close()


@dataclass
class MlflowServer:
    """A running `mlflow server`: its URL, artifact folder, process, and what restarts it."""

    url: str
    artifacts: Path
    log: Path
    command: list[str]
    env: dict[str, str]
    process: subprocess.Popen | None = None
    credentials: tuple[str, str] | None = None  # basic auth's admin, when auth is on

    def alive(self) -> bool:
        import requests

        try:
            return requests.get(f"{self.url}/health", timeout=2).ok
        except requests.RequestException:
            return False

    def client_env(self) -> dict[str, str]:
        """What a client process needs to log in (MLflow reads these variables)."""
        if self.credentials is None:
            return {}
        user, password = self.credentials
        return {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password}

    def start(self) -> None:
        """Start (or start again, on the same port and stores); return once /health answers."""
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not self.alive():
            if self.process.poll() is not None or time.monotonic() > deadline:
                code = self.process.poll()
                self.stop()
                tail = self.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"mlflow server did not come up ({code}):\n{tail}")
            time.sleep(0.3)

    def stop(self) -> None:
        """End the server's whole process tree now, SIGKILL: a crash, as clients see it (and
        no wait for uvicorn's graceful shutdown; the stores are PostgreSQL's and a folder)."""
        if self.process is not None:
            _end(self.process, signal.SIGKILL)


def start_mlflow_server(backend_uri: str, folder: Path, *, auth: bool = False) -> MlflowServer:
    """`mlflow server` on 127.0.0.1 with the given backend store and proxied artifacts in
    `folder/artifacts`, as deploy/compose runs it; with `auth`, MLflow's basic-auth app with a
    random admin password (users in a sqlite file in `folder`)."""
    port = free_ports(1)[0]
    artifacts = folder / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    command = [str(BIN / "mlflow"), "server", "--serve-artifacts"]
    command += ["--artifacts-destination", str(artifacts)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    # the store URI holds the database password: passed in the environment, not on the command
    # line, as the compose stack does
    env["MLFLOW_BACKEND_STORE_URI"] = backend_uri
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # as deploy/compose: see its comment
    credentials = None
    if auth:
        credentials = ("admin", secrets.token_hex(16))
        config = folder / "basic_auth.ini"
        config.write_text(
            "[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
            f"database_uri = sqlite:///{folder / 'basic_auth.db'}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            "auth_cache_ttl_seconds = 60\n"  # one password hash a minute, not one a request
        )
        command += ["--app-name", "basic-auth"]
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(config)
        env["MLFLOW_AUTH_ADMIN_USERNAME"], env["MLFLOW_AUTH_ADMIN_PASSWORD"] = credentials
        env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = secrets.token_hex(16)
    server = MlflowServer(
        f"http://127.0.0.1:{port}", artifacts, folder / "mlflow-server.log", command, env,
        credentials=credentials,
    )  # fmt: skip
    server.start()
    return server


@contextmanager
def mlflow_server(backend_uri: str, folder: Path, *, auth: bool = False) -> Iterator[MlflowServer]:
    server = start_mlflow_server(backend_uri, folder, auth=auth)
    try:
        yield server
    finally:
        server.stop()


def _end(process: subprocess.Popen, first: signal.Signals, *, tree_too: bool = True) -> None:
    """`first` to the process (and its descendants with `tree_too`), SIGKILL to whatever of the
    tree is left after a grace."""
    import psutil

    tree: list[psutil.Process] = []
    with suppress(psutil.Error):
        parent = psutil.Process(process.pid)
        tree = [parent, *parent.children(recursive=True)]
    for member in tree if tree_too else tree[:1]:
        with suppress(psutil.Error):
            member.send_signal(first)
    _, alive = psutil.wait_procs(tree, timeout=STOP_GRACE)
    for member in alive:
        with suppress(psutil.Error):
            member.kill()
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout=STOP_GRACE)
