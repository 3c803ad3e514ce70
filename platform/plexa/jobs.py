"""Pipelines as Ray jobs: submit one to a cluster's jobs API, follow its logs, list jobs.

Why a job rather than `plexa run` with `compute.address`: the driver then runs on the cluster,
so the submitting machine may disconnect, and it only needs the jobs API (plain HTTP on the
dashboard port, token-authenticated) instead of joining the cluster's gRPC network.

Token authentication (Ray >= 2.52, read from Ray's code): the dashboard's aiohttp middleware
(`ray/_private/authentication/http_token_authentication.py`, `get_token_auth_middleware`) takes
`Authorization: Bearer <token>` (else `X-Ray-Authorization`, else the `ray-authentication-token`
cookie); no token is a 401, a wrong one a 403. Ray's own clients add that header only when
RAY_AUTH_MODE=token is set in *their* process (`get_auth_headers_if_auth_enabled`), taking the
token from the C++ `AuthenticationTokenLoader`: RAY_AUTH_TOKEN, else the file in
RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token. plexa sends the header itself when it has a token,
so `--token` or RAY_AUTH_TOKEN is enough without RAY_AUTH_MODE.

ray is imported inside functions only: `import plexa` and `plexa --help` stay light.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import tempfile
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from plexa.errors import NotFoundError, UnreachableError, UserError
from plexa.events import EVENTS_ENV, Event, render

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient
    from rich.console import Console

    from plexa.config import PipelineSpec

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
PIPELINE_FILE = "pipeline.yaml"
POLL_SECONDS = 1.0


class JobsError(UserError):
    """A jobs API problem worth one line to the user: a bad `--env`, an unreadable token file,
    a request the cluster rejected; the subclasses say unreachable, refused or no such job."""


class ClusterUnreachableError(JobsError, UnreachableError):
    """The jobs API did not answer, or refused the token."""


class JobNotFoundError(JobsError, NotFoundError):
    """The cluster has no job of that id."""


@dataclass(frozen=True)
class JobRow:
    job_id: str
    status: str
    entrypoint: str
    started: str
    kind: str


def resolve_address(address: str | None) -> str:
    """--address, else RAY_API_SERVER_ADDRESS, else RAY_ADDRESS, else the local dashboard.

    RAY_ADDRESS is only taken when it is an http(s) URL: inside a Ray job and after `ray start`
    it usually holds the GCS address (host:6379, "auto"), which is not the jobs API."""
    if address:
        return address
    if os.environ.get("RAY_API_SERVER_ADDRESS"):
        return os.environ["RAY_API_SERVER_ADDRESS"]
    ray_address = os.environ.get("RAY_ADDRESS", "")
    if ray_address.startswith(("http://", "https://")):
        return ray_address
    return DEFAULT_ADDRESS


def resolve_token(token: str | None) -> str | None:
    """--token, else RAY_AUTH_TOKEN, else the file named by RAY_AUTH_TOKEN_PATH (Ray's order).

    With none of them, Ray's client still adds ~/.ray/auth_token when RAY_AUTH_MODE=token."""
    if token:
        return token.strip()
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        try:
            lines = Path(path).expanduser().read_text().splitlines()
        except OSError as exc:
            raise JobsError(f"RAY_AUTH_TOKEN_PATH: cannot read {path}: {exc.strerror}") from None
        if lines and lines[0].strip():
            return lines[0].strip()
        raise JobsError(f"RAY_AUTH_TOKEN_PATH: {path} is empty")
    return None


def plain_http_risk(address: str, token: str | None) -> str | None:
    """A warning when a token would cross the network unencrypted: http to a non-loopback host."""
    parts = urlsplit(address if "://" in address else f"http://{address}")
    host = parts.hostname or ""
    if not token or parts.scheme != "http" or host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass  # a host name: assume it is remote
    return (
        f"sending the cluster token over plain HTTP to {host}: anyone on the path can read it. "
        "Use https, or an SSH tunnel to the head's 127.0.0.1:8265."
    )


def connect(address: str | None = None, token: str | None = None) -> JobSubmissionClient:
    """A jobs API client for `address`, authenticated with `token` when there is one."""
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError as exc:
        raise JobsError("Ray jobs need Ray: pip install 'plexa[ray]'") from exc

    url = resolve_address(address)
    secret = resolve_token(token)
    headers = {"Authorization": f"Bearer {secret}"} if secret else None
    return _call(url, lambda: JobSubmissionClient(url, headers=headers))


def _call(address: str, request: Callable[[], Any], job_id: str | None = None) -> Any:
    """Run one jobs API request; turn Ray's and requests' exceptions into one-line JobsErrors."""
    import requests
    from ray.exceptions import AuthenticationError

    try:
        return request()
    except AuthenticationError as exc:
        first = str(exc).splitlines()[0]
        raise ClusterUnreachableError(
            f"the Ray cluster at {address} refused the request ({first}). Pass its token with "
            "RAY_AUTH_TOKEN or --token; on the head, `ray get-auth-token` prints it."
        ) from None
    except (requests.ConnectionError, ConnectionError) as exc:
        raise ClusterUnreachableError(
            f"cannot reach the Ray jobs API at {address} ({type(exc).__name__}); is the cluster "
            "up, and is this its dashboard address (default port 8265)?"
        ) from None
    except RuntimeError as exc:
        if job_id and "404" in str(exc):
            raise JobNotFoundError(f"no job {job_id} on {address}") from None
        raise JobsError(f"the Ray jobs API at {address} failed: {exc}") from None


def parse_env(pairs: Iterable[str]) -> dict[str, str]:
    """`KEY=VALUE` strings for the job's environment."""
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise JobsError(f"--env wants KEY=VALUE, got {pair!r}")
        env[key.strip()] = value
    return env


def tracking_note(spec: PipelineSpec, env: dict[str, str]) -> str | None:
    """A note when the job would log to MLflow's default store: a file in its working_dir on
    the cluster, gone with the job (unless the cluster's own env sets MLFLOW_TRACKING_URI)."""
    if spec.tracking.uri or "MLFLOW_TRACKING_URI" in env:
        return None
    return (
        "the pipeline names no MLflow store: unless the cluster sets MLFLOW_TRACKING_URI, the "
        "job logs into its own working dir. Pass tracking.uri=... or --env MLFLOW_TRACKING_URI=..."
    )


def submit(
    client: JobSubmissionClient, spec: PipelineSpec, env: dict[str, str] | None = None
) -> str:
    """Send the resolved pipeline (overrides applied, validated here) as a Ray job.

    The job's working_dir is a temp folder holding only pipeline.yaml; Ray zips and uploads it
    to the cluster's GCS and the entrypoint `plexa run pipeline.yaml` runs in it on the head.
    Writing the resolved spec means the job runs exactly what was validated here, with no shell
    quoting of overrides, and relative data paths are already absolute.

    plexa's own code travels with the job (`py_modules`: the core and the first-party plugin
    packages, as they are here), so a cluster runs the submitter's version of it. What a real
    remote cluster still needs: plexa installed in its image (with the plugin distributions
    and the `ray` extra), because the entrypoint is the `plexa` command, plugins are found
    through installed entry points, and torch, Lightning and MLflow come from there. Data files
    the pipeline names must exist at the same path on the cluster, and MLflow must be
    reachable from it (`tracking.uri=http://...` or `--env MLFLOW_TRACKING_URI=...`): a
    sqlite file in the job's working_dir is lost with it."""
    submission_id = f"plexa-{spec.name}-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="plexa-job-") as folder:
        header = f"# {spec.name}: resolved by plexa submit for Ray job {submission_id}\n"
        (Path(folder) / PIPELINE_FILE).write_text(header + spec.to_yaml())
        runtime_env: dict[str, Any] = {"working_dir": folder, "py_modules": _code()}
        # the job prints its progress as events, which `watch` and `logs` render here
        runtime_env["env_vars"] = {EVENTS_ENV: "json", **(env or {})}
        return _call(
            client.get_address(),
            lambda: client.submit_job(
                entrypoint=f"plexa run {PIPELINE_FILE}",
                submission_id=submission_id,
                runtime_env=runtime_env,
                metadata={"plexa_pipeline": spec.name},
            ),
        )


def _code() -> list[str]:
    """The folders of plexa's core and first-party plugin packages, found without importing."""
    import importlib.util

    folders = []
    for package in ("plexa", "plexa_models", "plexa_data"):
        found = importlib.util.find_spec(package)
        if found is not None and found.submodule_search_locations:
            folders.append(list(found.submodule_search_locations)[0])
    return folders


async def follow(
    client: JobSubmissionClient,
    job_id: str,
    on_line: Callable[[str], None],
    on_status: Callable[[str], None],
) -> str:
    """Stream the job's log lines and status changes until it ends; returns its final status."""

    async def poll() -> None:
        last = None
        while True:
            status = await asyncio.to_thread(client.get_job_status, job_id)
            if status != last:
                on_status(str(status.value))
                last = status
            if status.is_terminal():
                return
            await asyncio.sleep(POLL_SECONDS)

    import aiohttp

    poller = asyncio.create_task(poll())
    pending = ""
    try:
        async for chunk in client.tail_job_logs(job_id):
            *lines, pending = (pending + chunk).split("\n")
            for line in lines:
                on_line(line)
    except (RuntimeError, aiohttp.ClientError):
        pass  # the log stream broke off; the status poll below still ends the wait
    finally:
        if pending:
            on_line(pending)
    await poller  # the log stream can end a moment before the status turns terminal
    return str(client.get_job_status(job_id).value)


def watch(client: JobSubmissionClient, job_id: str, console: Console, epochs: int) -> str:
    """Print the job's logs under a Rich progress line (status, epochs, elapsed time)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.text import Text

    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("epochs"),
        TimeElapsedColumn(),
        console=console,
        transient=True,  # the bar is for a terminal; logs and the final line stay
    )
    task = progress.add_task(f"{job_id} PENDING", total=epochs)

    def on_line(line: str) -> None:
        event = Event.from_line(line)
        if event is None:
            progress.console.print(Text.from_ansi(line), soft_wrap=True)
            return
        progress.console.print(render(event), markup=False, soft_wrap=True)
        if event.kind == "epoch":  # a two-node cluster on one machine may print a line twice
            done = max(event.index + 1, int(progress.tasks[0].completed))
            progress.update(task, completed=min(done, epochs))

    def on_status(status: str) -> None:
        progress.update(task, description=f"{job_id} {status}")

    with progress:
        return _call(
            client.get_address(),
            lambda: asyncio.run(follow(client, job_id, on_line, on_status)),
            job_id,
        )


def readable(line: str) -> str:
    """A job's log line as the terminal shows it: an event rendered, anything else as it is."""
    event = Event.from_line(line)
    return line if event is None else render(event)


def tail(client: JobSubmissionClient, job_id: str, on_line: Callable[[str], None]) -> str:
    """Follow a job's logs line by line until it ends; returns its final status."""
    return _call(
        client.get_address(),
        lambda: asyncio.run(follow(client, job_id, on_line, lambda _: None)),
        job_id,
    )


def logs(client: JobSubmissionClient, job_id: str) -> str:
    """Everything the job has printed so far, its events rendered."""
    text = _call(client.get_address(), lambda: client.get_job_logs(job_id), job_id)
    return "".join(readable(line) + "\n" for line in text.splitlines())


def message(client: JobSubmissionClient, job_id: str) -> str:
    """Ray's reason for the job's state, first line only: the rest repeats the job's logs."""
    info = _call(client.get_address(), lambda: client.get_job_info(job_id), job_id)
    return (info.message or "").strip().split("\n")[0]


def list_jobs(client: JobSubmissionClient) -> list[JobRow]:
    """Every job the cluster knows, newest first: submitted jobs and drivers that joined it."""
    details = _call(client.get_address(), client.list_jobs)
    rows = []
    for job in sorted(details, key=lambda j: j.start_time or 0, reverse=True):
        started = (
            datetime.fromtimestamp(job.start_time / 1000).strftime("%Y-%m-%d %H:%M:%S")
            if job.start_time
            else "-"
        )
        rows.append(
            JobRow(
                job_id=job.submission_id or job.job_id or "-",
                status=str(job.status.value),
                entrypoint=job.entrypoint,
                started=started,
                kind=str(job.type.value).lower(),
            )
        )
    return rows
