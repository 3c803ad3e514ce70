"""The `plexa` command. Thin: parse, call the orchestrator, print. Heavy imports happen inside
each command so `plexa --help` answers at once.

Errors have one handler (`_Handled`): a command raises a `plexa.errors.PlexaError` and the
handler prints its message and exits with its code; `--debug` adds the traceback."""

from __future__ import annotations

import os
import signal
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

from plexa.errors import EXIT_INTERRUPTED, NotFoundError, PlexaError, UserError

if TYPE_CHECKING:
    import click
    from rich.console import Console

    from plexa.config import PipelineSpec
    from plexa.runners import RunResult


class _Handled(TyperGroup):
    """The one place an error becomes what the user sees: a PlexaError its message and exit
    code, Ctrl-C "interrupted" and 130; anything else is a bug and keeps its traceback. It is
    the command group, so every command goes through it, in tests with `CliRunner` too."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            if ctx.params.get("debug"):
                traceback.print_exc()
            _console().print("\n[yellow]interrupted[/yellow]")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except Exception as exc:
            error = exc if isinstance(exc, PlexaError) else _wrapped(exc)
            if error is None:
                raise  # a bug: its traceback is what is needed
            if ctx.params.get("debug"):
                traceback.print_exc()
            _error(str(error))
            raise typer.Exit(error.exit_code) from None


def _wrapped(exc: Exception) -> PlexaError | None:
    """A PlexaError that Ray Train wrapped: a WorkerGroupError holds each failed worker's error
    (a DataError while a worker loads the data) in `worker_failures`."""
    failures = getattr(exc, "worker_failures", None)
    for failure in failures.values() if isinstance(failures, dict) else ():
        failure = getattr(failure, "cause", failure)  # a RayTaskError holds the original
        if isinstance(failure, PlexaError):
            return failure
    return None


app = typer.Typer(
    name="plexa",
    cls=_Handled,
    help="Train neural networks from YAML pipelines: Lightning, MLflow, ONNX.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _options(
    debug: Annotated[
        bool,
        typer.Option("--debug", envvar="PLEXA_DEBUG", help="On an error, print its traceback too."),
    ] = False,
) -> None:
    """Options before the command; `_Handled` reads `--debug` from the context."""


Pipeline = Annotated[Path, typer.Argument(help="A pipeline YAML file.", show_default=False)]
Overrides = Annotated[
    list[str] | None,
    typer.Argument(help="Overrides such as train.max_epochs=2.", show_default=False),
]
TrackingUri = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri", help="MLflow store; default MLFLOW_TRACKING_URI or ./mlflow.db."
    ),
]


def _console() -> Console:
    from rich.console import Console

    # a pipe or a CI log is not 80 columns wide: don't fold paths and run ids there
    # and never fold a line it prints: a path or an event's JSON is read back by programs
    return Console(highlight=False, width=None if sys.stdout.isatty() else 200, soft_wrap=True)


def _error(message: str) -> None:
    """`error: message`; the message is plain text, so a `[...]` in a path is not markup."""
    from rich.text import Text

    _console().print(Text.assemble(("error:", "red"), " ", message), soft_wrap=True)


def _load(pipeline: Path, overrides: list[str] | None) -> PipelineSpec:
    from plexa.config import load_pipeline

    return load_pipeline(pipeline, overrides or [])


def _is_rank_zero() -> bool:
    from plexa.runs import global_rank

    return global_rank() == 0


@app.command()
def validate(pipeline: Pipeline, overrides: Overrides = None) -> None:
    """Check a pipeline and every plugin's params; print the resolved pipeline."""
    spec = _load(pipeline, overrides)
    console = _console()
    console.print(spec.to_yaml(), end="", markup=False)
    console.print(f"[green]valid[/green]: {pipeline} (task: {spec.task()})")


@app.command()
def run(
    pipeline: Annotated[
        str | None,
        typer.Argument(help="A pipeline YAML file (none with --from).", show_default=False),
    ] = None,
    overrides: Overrides = None,
    resume: Annotated[
        str | None,
        typer.Option("--resume", help="Continue this MLflow run from its last checkpoint."),
    ] = None,
    from_run: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="Run again the pipeline this MLflow run logged (then every argument is an "
            "override).",
            show_default=False,
        ),
    ] = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Train, test, track and export a pipeline.

    Examples: `plexa run pipelines/digits-cnn.yaml train.max_epochs=3`;
    `plexa run --from RUN_ID` reruns a run's logged pipeline."""
    if from_run:
        from plexa.tracking import pipeline_of

        given = [pipeline] if pipeline else []
        spec = pipeline_of(from_run, tracking_uri, [*given, *(overrides or [])])
        pipeline = f"--from {from_run}"
    elif pipeline is None:
        raise UserError("name a pipeline file, or a run to rerun with --from RUN_ID")
    else:
        spec = _load(Path(pipeline), overrides)
    if tracking_uri:
        spec.tracking.uri = tracking_uri
    from plexa.quiet import quiet_libraries

    quiet_libraries()
    from plexa import orchestrator, runners
    from plexa.errors import RunInterrupted
    from plexa.events import printer

    if resume:  # an unknown run fails now, before the runner's import and loading the data
        from plexa.tracking import get_run

        get_run(resume, spec.tracking.uri)
    runner = runners.for_pipeline(spec)
    console = _console()
    rank_zero = _is_rank_zero()
    if rank_zero:
        verb = f"resuming run {resume} of" if resume else runner.verb
        console.print(f"[bold]plexa[/bold] {verb} {runner.describe(spec)}", highlight=False)
    show = printer(lambda line: console.print(line, markup=False, soft_wrap=True))
    try:
        result = orchestrator.run(spec, resume=resume, sinks=[show], runner=runner)
    except RunInterrupted as exc:
        console.print(
            f"\n[yellow]interrupted[/yellow]: run {exc.run_id} is marked KILLED; "
            f"last checkpoint {exc.last_checkpoint}"
        )
        console.print(f"continue it with: plexa run {pipeline} --resume {exc.run_id}")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    # Ctrl-C outside training (loading, export) reaches the handler; the run is marked KILLED
    if rank_zero:
        _summary(console, pipeline, result)


def _summary(console: Console, pipeline: object, result: RunResult) -> None:
    from rich.table import Table

    table = Table(title=f"{result.pipeline}: done in {result.seconds:.1f}s", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in sorted(result.metrics.items()):
        table.add_row(key, f"{value:.4f}")
    table.add_row("MLflow run", str(result.run_id))
    table.add_row("tracking", str(result.tracking_uri))
    if result.best_checkpoint:
        table.add_row("best checkpoint", str(result.best_checkpoint))
    if result.export is not None:
        ex = result.export
        table.add_row("ONNX", str(ex.path))
        table.add_row(
            "ONNX parity",
            f"max abs diff {ex.max_abs_diff:.2e} (tolerance "
            f"{ex.tolerance:.0e}, {ex.samples} held-out samples)",
        )
        if ex.registered_name:
            table.add_row("registered", f"models:/{ex.registered_name}/{ex.registered_version}")
    console.print(table)
    console.print(f"dashboard: plexa ui    rerun: plexa run --from {result.run_id}")


@app.command()
def plugins() -> None:
    """List every architecture and data plugin, and whether it loads."""
    from rich.table import Table

    from plexa.plugins import all_plugins

    table = Table("name", "kind", "distribution", "version", "status")
    for info in all_plugins():
        status = "[green]ok[/green]" if info.status == "ok" else f"[red]{info.status}[/red]"
        table.add_row(info.name, info.kind, info.distribution, info.version, status)
    _console().print(table)


@app.command()
def runs(
    limit: Annotated[int, typer.Option("--limit", "-n", help="How many runs.")] = 20,
    tracking_uri: TrackingUri = None,
) -> None:
    """Recent plexa runs with their main metrics."""
    from plexa.quiet import quiet_libraries

    quiet_libraries()
    from rich.table import Table

    from plexa.tracking import recent_runs

    table = Table("run id", "pipeline", "status", "started", "metrics")
    for run in recent_runs(limit, tracking_uri):
        metrics = "  ".join(f"{k} {v:.4f}" for k, v in run.metrics.items())
        table.add_row(run.run_id, run.pipeline, run.status, run.started, metrics)
    _console().print(table)


@app.command()
def export(
    run_id: Annotated[str, typer.Argument(help="An MLflow run id.", show_default=False)],
    tracking_uri: TrackingUri = None,
) -> None:
    """Export a run's best checkpoint to ONNX again, check parity, log and register it."""
    from plexa.quiet import quiet_libraries

    quiet_libraries()
    from plexa import orchestrator

    result = orchestrator.export_run(run_id, tracking_uri)
    registered = (
        f", registered as models:/{result.registered_name}/{result.registered_version}"
        if result.registered_name
        else ""
    )
    _console().print(
        f"ONNX: {result.path} (parity max abs diff {result.max_abs_diff:.2e}{registered})"
    )


@app.command()
def ui(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 5000,
    host: Annotated[str, typer.Option(help="Interface; keep 127.0.0.1 unless you add auth.")] = (
        "127.0.0.1"
    ),
    tracking_uri: TrackingUri = None,
) -> None:
    """Open the MLflow dashboard over the same store plexa logs to."""
    from plexa.tracking import resolve_uri

    uri = resolve_uri(tracking_uri)
    _console().print(f"MLflow dashboard for {uri} on http://{host}:{port} (Ctrl-C stops it)")
    args = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--host",
        host,
        "--port",
        str(port),
    ]
    # MLflow's job runner (a Huey consumer per GenAI job type: seven processes, each importing
    # MLflow) serves judges and prompt optimisation, none of which a training dashboard uses
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    sys.stdout.flush()
    os.execv(sys.executable, args)


JobsAddress = Annotated[
    str | None,
    typer.Option(
        "--address",
        help="The cluster's jobs API (its dashboard); default RAY_API_SERVER_ADDRESS, an "
        "http(s) RAY_ADDRESS, else http://127.0.0.1:8265.",
        show_default=False,
    ),
]
JobsToken = Annotated[
    str | None,
    typer.Option(
        "--token",
        help="The cluster's auth token; default RAY_AUTH_TOKEN, else the file in "
        "RAY_AUTH_TOKEN_PATH. Prefer the variable: a command line is visible in `ps`.",
        show_default=False,
    ),
]
JobId = Annotated[str, typer.Argument(help="A Ray job (submission) id.", show_default=False)]


@app.command()
def submit(
    pipeline: Pipeline,
    overrides: Overrides = None,
    address: JobsAddress = None,
    token: JobsToken = None,
    env: Annotated[
        list[str] | None,
        typer.Option("--env", help="KEY=VALUE for the job's environment (repeatable)."),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Follow the job's logs until it ends.")
    ] = True,
) -> None:
    """Run a pipeline on a Ray cluster as a Ray job; exit with its outcome (0: SUCCEEDED)."""
    spec = _load(pipeline, overrides)
    from plexa import jobs

    console = _console()
    job_env = jobs.parse_env(env or [])
    job_id = None
    try:
        warning = jobs.plain_http_risk(jobs.resolve_address(address), jobs.resolve_token(token))
        if warning:
            console.print(f"[yellow]warning:[/yellow] {warning}", soft_wrap=True)
        note = jobs.tracking_note(spec, job_env)
        if note:
            console.print(f"[yellow]note:[/yellow] {note}", soft_wrap=True)
        client = jobs.connect(address, token)
        job_id = jobs.submit(client, spec, job_env)
        console.print(
            f"[bold]plexa[/bold] submitted [cyan]{spec.name}[/cyan] to {client.get_address()} "
            f"as Ray job [bold]{job_id}[/bold]"
        )
        if not wait:
            console.print(f"follow it: plexa logs {job_id} --follow", markup=False)
            return
        status = jobs.watch(client, job_id, console, spec.train.max_epochs)
        reason = "" if status == "SUCCEEDED" else jobs.message(client, job_id)
    except KeyboardInterrupt:
        if not job_id:
            raise
        console.print(
            f"\n[yellow]detached[/yellow]: job {job_id} keeps running; "
            f"follow: plexa logs {job_id} --follow; stop: ray job stop {job_id}",
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None
    colour = "green" if status == "SUCCEEDED" else "red"
    console.print(f"job {job_id} [{colour}]{status}[/{colour}] {reason}".rstrip(), soft_wrap=True)
    raise typer.Exit(0 if status == "SUCCEEDED" else 1)


@app.command(name="jobs")
def jobs_(address: JobsAddress = None, token: JobsToken = None) -> None:
    """The Ray cluster's jobs, newest first: id, status, entrypoint, start time."""
    from rich.table import Table
    from rich.text import Text

    from plexa import jobs

    rows = jobs.list_jobs(jobs.connect(address, token))
    colours = {"SUCCEEDED": "green", "FAILED": "red", "STOPPED": "yellow", "RUNNING": "cyan"}
    table = Table("job id", "status", "entrypoint", "started", "type")
    for row in rows:
        status = Text(row.status, style=colours.get(row.status, ""))
        table.add_row(row.job_id, status, Text(row.entrypoint), row.started, row.kind)
    _console().print(table)


@app.command()
def logs(
    job_id: JobId,
    address: JobsAddress = None,
    token: JobsToken = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing until the job ends.")
    ] = False,
) -> None:
    """Print a Ray job's logs."""
    from plexa import jobs

    console = _console()
    client = jobs.connect(address, token)
    if follow:
        from rich.text import Text

        status = jobs.tail(
            client,
            job_id,
            lambda line: console.print(Text.from_ansi(jobs.readable(line)), soft_wrap=True),
        )
        console.print(f"job {job_id} {status}", markup=False)
    else:
        sys.stdout.write(jobs.logs(client, job_id))


@app.command()
def federate(
    pipeline: Pipeline,
    overrides: Overrides = None,
    deploy: Annotated[
        bool,
        typer.Option(
            "--deploy",
            help="Run a SuperLink and one SuperNode per client as real processes on "
            "127.0.0.1 instead of Flower's simulation engine.",
        ),
    ] = False,
    sets: Annotated[
        list[str] | None,
        typer.Option("--set", help="An override such as federated.rounds=3 (repeatable)."),
    ] = None,
) -> None:
    """Train a pipeline in federated Flower rounds; its `federated:` section (or the
    defaults) says how many clients, rounds, which strategy and partitioning."""
    spec = _load(pipeline, [*(overrides or []), *(sets or [])])
    from plexa.quiet import quiet_libraries

    quiet_libraries()
    from plexa import orchestrator
    from plexa.config import FederatedSpec
    from plexa.events import printer
    from plexa.runners.federated import FederatedRunner

    console = _console()
    if spec.federated is None:
        spec.federated = FederatedSpec()
        console.print("[yellow]note:[/yellow] no federated: section; using the defaults")
    runner = FederatedRunner(deploy)
    console.print(f"[bold]plexa[/bold] {runner.verb} {runner.describe(spec)}", highlight=False)
    show = printer(lambda line: console.print(line, markup=False, soft_wrap=True))
    result = orchestrator.run(spec, sinks=[show], runner=runner)
    _summary(console, pipeline, result)


# --------------------------------------------------------------------------- generate


def _export_file(target: str, tracking_uri: str | None) -> Path:
    """An ONNX file, a folder holding model.onnx, or a run id whose export is on this machine."""
    from plexa.tracking import RunNotFoundError, get_run

    path = Path(target)
    if path.is_dir() and (path / "model.onnx").is_file():
        return path / "model.onnx"
    if path.is_file():
        return path
    if path.suffix == ".onnx":
        raise NotFoundError(f"no ONNX file at {path}")
    try:
        run = get_run(target, tracking_uri)
    except RunNotFoundError as exc:
        raise NotFoundError(f"{target} is neither an ONNX file nor a run: {exc}") from None
    run_dir = run.data.tags.get("plexa.run_dir")
    exported = Path(run_dir) / "export" / "model.onnx" if run_dir else None
    if exported is None or not exported.is_file():
        raise NotFoundError(
            f"run {target} has no ONNX export on this machine (looked in {exported}); "
            f"make one with: plexa export {target}"
        )
    return exported


@app.command()
def generate(
    target: Annotated[
        str, typer.Argument(help="An ONNX export (file or folder) or a run id.", show_default=False)
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Image generators: PNG grid.")] = Path(
        "samples.png"
    ),
    n: Annotated[int, typer.Option("--n", min=1, help="Image generators: samples.")] = 64,
    prompt: Annotated[str, typer.Option("--prompt", help="Language models: the start.")] = "",
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", min=1, help="Language models: length.")
    ] = 200,
    temperature: Annotated[
        float, typer.Option("--temperature", min=0.0, help="Language models: sampling temperature.")
    ] = 1.0,
    top_k: Annotated[
        int, typer.Option("--top-k", min=0, help="Language models: the k likeliest only; 0: all.")
    ] = 0,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    tracking_uri: TrackingUri = None,
) -> None:
    """New samples from an export: a PNG grid (gan, vae, diffusion) or text (language models)."""
    import json

    path = _export_file(target, tracking_uri)
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises its own types (DecodeError, ...) for foreign files
        raise UserError(f"{path} is not a readable ONNX file: {exc}") from None
    props = {p.key: p.value for p in model.metadata_props}
    task = props.get("task")
    console = _console()
    if task == "generative":
        from plexa import imagegen

        written = imagegen.generate(path, out, n, seed)
        kind = json.loads(props["generative"])["kind"]
        console.print(f"{n} samples from {kind} export {path} -> {written}", markup=False)
    elif task == "language-model":
        from plexa import textgen

        text = textgen.generate_text(path, prompt, max_new_tokens, temperature, top_k, seed)
        console.print(text, markup=False, highlight=False)
    else:
        raise UserError(
            f"{path} is a {task or 'non-plexa'} export; plexa generate needs a generative "
            "(gan, vae, diffusion) or language-model export"
        )


# --------------------------------------------------------------------------- serve


@app.command()
def serve(
    targets: Annotated[
        list[str],
        typer.Argument(
            help="What to serve: FILE.onnx, models:/NAME/VERSION, models:/NAME@ALIAS or a run "
            "id; NAME=TARGET picks the name in URLs.",
            show_default=False,
        ),
    ],
    host: Annotated[
        str, typer.Option(help="Interface; keep 127.0.0.1 unless you set a token.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="PLEXA_SERVE_TOKEN",
            help="Bearer token every request but health checks and the page must send; "
            "default PLEXA_SERVE_TOKEN (prefer it: a command line is visible in `ps`).",
            show_default=False,
        ),
    ] = None,
    max_batch: Annotated[
        int, typer.Option(min=1, help="Most rows merged into one ONNX Runtime call.")
    ] = 32,
    max_wait_ms: Annotated[
        float, typer.Option(min=0, help="How long a request waits for others to join it.")
    ] = 2.0,
    no_batching: Annotated[
        bool, typer.Option("--no-batching", help="Run each request on its own.")
    ] = False,
    max_body: Annotated[
        int, typer.Option(min=1, help="Largest request body in bytes (larger: 413).")
    ] = 4 * 1024 * 1024,
    ray: Annotated[
        bool, typer.Option("--ray", help="Run as a Ray Serve deployment (embedded Ray).")
    ] = False,
    replicas: Annotated[int, typer.Option(min=1, help="Ray Serve replicas (with --ray).")] = 1,
    tracking_uri: TrackingUri = None,
) -> None:
    """Serve ONNX exports over the Open Inference Protocol v2, /predict and a web page."""
    from plexa.serving import ServeOptions
    from plexa.serving import serve as run_server

    if replicas > 1 and not ray:
        raise UserError("--replicas needs --ray")
    options = ServeOptions(
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        batching=not no_batching,
        token=token or None,
        max_body_bytes=max_body,
    )
    where = f"http://{host}:{port}"
    console = _console()
    if host not in ("127.0.0.1", "localhost", "::1") and not token:
        console.print(
            f"[yellow]warning:[/yellow] listening on {host} without --token: anyone who can "
            "reach this port can use the models (set PLEXA_SERVE_TOKEN)",
            soft_wrap=True,
        )
    console.print(f"[bold]plexa serve[/bold] on {where} (page: {where}/, Ctrl-C stops it)")
    # uvicorn answers SIGTERM itself (every request in flight is finished), then raises it
    # again for the default action: the process ends by the signal, as servers do
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    run_server(targets, host, port, options, ray=ray, replicas=replicas, tracking_uri=tracking_uri)


# --------------------------------------------------------------------------- sync


@app.command()
def sync(
    source: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="The offline store runs failed over to; default PLEXA_RUNS_DIR/offline/mlflow.db.",
            show_default=False,
        ),
    ] = None,
    target: Annotated[
        str | None,
        typer.Option(
            "--to",
            help="The MLflow server; default the one each run failed over from.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Copy runs that failed over to the local store (server unreachable) to the server."""
    from plexa.quiet import quiet_libraries

    quiet_libraries()
    from plexa.tracking_failover import sync as sync_runs

    console = _console()
    synced = sync_runs(source, target)
    for run in synced:
        registered = f", registered {' '.join(run.registered)}" if run.registered else ""
        console.print(
            f"synced {run.offline_run_id} -> run {run.run_id} on {run.uri}{registered}",
            markup=False,
        )
    if not synced:
        console.print("nothing to sync: every offline run is already on its server")


def main() -> None:
    from plexa.interrupts import sigterm_as_ctrl_c

    sigterm_as_ctrl_c()
    app()


if __name__ == "__main__":
    main()
