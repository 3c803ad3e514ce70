"""The `plexa` command. Thin: parse, call the orchestrator, print. Heavy imports happen inside
each command so `plexa --help` answers at once.

Errors have one handler (`_Handled`): a command raises a `plexa.errors.PlexaError` and the
handler prints its message and exits with its code; `--debug` adds the traceback."""

from __future__ import annotations

import inspect
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

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for command in self.commands.values():
            _tidy_help(command)

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


def _tidy_help(command: click.Command) -> None:
    """Two fixes to what a command's `--help` shows.

    A docstring's line breaks: Typer's help keeps them after the first paragraph, so each
    paragraph is joined into one line here and the terminal wraps it.

    Each argument's `typer.Argument(help=...)`: Typer 0.20 sets it before click 8.5's
    `Parameter.__init__` runs, which sets `help` again (to None: Typer passes none), so the
    Arguments panel would show no text; it is read back from the function's annotations."""
    if command.help:
        paragraphs = inspect.cleandoc(command.help).split("\n\n")
        command.help = "\n\n".join(" ".join(p.split("\n")) for p in paragraphs)
    if command.callback is None or all(getattr(p, "help", None) for p in command.params):
        return
    from typer.utils import get_params_from_function

    declared = get_params_from_function(command.callback)
    for param in command.params:
        meta = declared.get(param.name or "")
        if not getattr(param, "help", None) and meta is not None:
            param.help = getattr(meta.default, "help", None)


def _examples(*lines: str) -> str:
    """An `Examples:` epilog, one command a line. Typer's help joins the lines of a paragraph
    into one, so each command is a paragraph of its own."""
    return "\n\n".join(["Examples:", *lines])


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
    help="Train neural networks from YAML pipelines: Lightning, MLflow, ONNX.\n\n"
    "A pipeline names a data plugin, a model plugin and how to train, track and export; "
    "`plexa COMMAND --help` describes a command's arguments and options, with examples.",
    epilog=_examples(
        "plexa validate pipelines/digits-cnn.yaml",
        "plexa run pipelines/digits-cnn.yaml train.max_epochs=3",
        "plexa serve models:/digits-cnn/1",
    ),
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


Pipeline = Annotated[
    Path,
    typer.Argument(
        help="A pipeline YAML file, such as pipelines/digits-cnn.yaml.", show_default=False
    ),
]
Overrides = Annotated[
    list[str] | None,
    typer.Argument(
        help="Changes to the pipeline as KEY=VALUE, the key dotted and the value YAML: "
        "train.max_epochs=2 model.params.dropout=0.2.",
        show_default=False,
    ),
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


@app.command(
    epilog=_examples(
        "plexa validate pipelines/digits-cnn.yaml",
        "plexa validate pipelines/wine-mlp.yaml train.max_epochs=5 train.seed=1",
    )
)
def validate(pipeline: Pipeline, overrides: Overrides = None) -> None:
    """Check a pipeline and every plugin's params; print the resolved pipeline.

    Nothing is trained or logged. The file is read, the overrides applied and each plugin's
    params checked; an invalid pipeline exits with status 2 and names every field at fault."""
    spec = _load(pipeline, overrides)
    console = _console()
    console.print(spec.to_yaml(), end="", markup=False)
    console.print(f"[green]valid[/green]: {pipeline} (task: {spec.task()})")


@app.command(
    epilog=_examples(
        "plexa run pipelines/digits-cnn.yaml",
        "plexa run pipelines/digits-cnn.yaml train.max_epochs=3",
        "plexa run pipelines/iris-csv.yaml train.optimizer.lr=0.01 train.seed=1",
        "plexa run pipelines/digits-cnn.yaml --resume RUN_ID",
        "plexa run --from RUN_ID train.max_epochs=10",
    )
)
def run(
    pipeline: Annotated[
        str | None,
        typer.Argument(help="A pipeline YAML file (none with --from).", show_default=False),
    ] = None,
    overrides: Overrides = None,
    resume: Annotated[
        str | None,
        typer.Option(
            "--resume",
            help="Continue this MLflow run (its id) from its last checkpoint.",
            show_default=False,
        ),
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

    The runner is the one the pipeline asks for (its federated: or sweep: section, else
    compute.runner: local by default, or ray). Its params, metrics, test results and
    checkpoints are logged to MLflow, and the ONNX export (parity checked) when export: asks."""
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
        if (q := ex.quantized) is not None:
            table.add_row(
                "ONNX int8",
                f"{q.path} ({q.mode}): {q.int8_bytes:,} bytes vs {q.float_bytes:,}, "
                f"latency x{q.latency_ratio:.2f}, {q.metric} {q.int8_value:.4f} vs "
                f"{q.float_value:.4f}",
            )
            if ex.registered_name and q.registered_version:
                table.add_row(
                    "registered int8",
                    f"models:/{ex.registered_name}@int8 (version {q.registered_version})",
                )
    console.print(table)
    console.print(f"dashboard: plexa ui    rerun: plexa run --from {result.run_id}")


@app.command(epilog=_examples("plexa plugins"))
def plugins() -> None:
    """List every architecture and data plugin, and whether it loads.

    Each plugin is loaded to check it: the table shows its name, kind, the distribution and
    version that provide it, and ok or the error that loading it raised."""
    from rich.table import Table

    from plexa.plugins import all_plugins

    table = Table("name", "kind", "distribution", "version", "status")
    for info in all_plugins():
        status = "[green]ok[/green]" if info.status == "ok" else f"[red]{info.status}[/red]"
        table.add_row(info.name, info.kind, info.distribution, info.version, status)
    _console().print(table)


@app.command(epilog=_examples("plexa runs", "plexa runs -n 5 --tracking-uri http://127.0.0.1:5000"))
def runs(
    limit: Annotated[int, typer.Option("--limit", "-n", help="How many runs to list.")] = 20,
    tracking_uri: TrackingUri = None,
) -> None:
    """Recent plexa runs with their main metrics.

    Newest first, across every experiment of the store; only runs plexa started are listed."""
    from plexa.quiet import quiet_libraries

    quiet_libraries()
    from rich.table import Table

    from plexa.tracking import recent_runs

    table = Table("run id", "pipeline", "status", "started", "metrics")
    for run in recent_runs(limit, tracking_uri):
        metrics = "  ".join(f"{k} {v:.4f}" for k, v in run.metrics.items())
        table.add_row(run.run_id, run.pipeline, run.status, run.started, metrics)
    _console().print(table)


@app.command(
    epilog=_examples("plexa export RUN_ID", "plexa export RUN_ID --tracking-uri ./mlflow.db")
)
def export(
    run_id: Annotated[
        str, typer.Argument(help="An MLflow run id (plexa runs lists them).", show_default=False)
    ],
    tracking_uri: TrackingUri = None,
) -> None:
    """Export a run's best checkpoint to ONNX again, check parity, log and register it.

    The model is rebuilt from the pipeline the run logged and its best checkpoint (else its
    last); the ONNX file is logged to the same run and registered as its export section says."""
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


@app.command(
    epilog=_examples("plexa ui", "plexa ui --port 5001 --tracking-uri sqlite:///mlflow.db")
)
def ui(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 5000,
    host: Annotated[str, typer.Option(help="Interface; keep 127.0.0.1 unless you add auth.")] = (
        "127.0.0.1"
    ),
    tracking_uri: TrackingUri = None,
) -> None:
    """Open the MLflow dashboard over the same store plexa logs to.

    It runs `mlflow ui` on that store in this terminal until Ctrl-C."""
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
JobId = Annotated[
    str,
    typer.Argument(
        help="A Ray job (submission) id, as plexa submit and plexa jobs print it.",
        show_default=False,
    ),
]


@app.command(
    epilog=_examples(
        "plexa submit pipelines/digits-cnn.yaml --address http://127.0.0.1:8265",
        "plexa submit pipelines/wine-mlp.yaml compute.runner=ray --no-wait",
        "plexa submit pipelines/wine-mlp.yaml tracking.uri=http://mlflow:5000",
        "plexa submit pipelines/wine-mlp.yaml --env PLEXA_DEBUG=1",
    )
)
def submit(
    pipeline: Pipeline,
    overrides: Overrides = None,
    address: JobsAddress = None,
    token: JobsToken = None,
    env: Annotated[
        list[str] | None,
        typer.Option(
            "--env",
            help="KEY=VALUE for the job's environment (repeatable).",
            show_default=False,
        ),
    ] = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait/--no-wait",
            help="Follow the job's logs until it ends; --no-wait returns once it is submitted.",
        ),
    ] = True,
) -> None:
    """Run a pipeline on a Ray cluster as a Ray job; exit with its outcome (0: SUCCEEDED).

    The pipeline is validated here and sent resolved (overrides applied, paths absolute).
    Ctrl-C while following detaches: the job keeps running on the cluster."""
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


@app.command(
    name="jobs", epilog=_examples("plexa jobs", "plexa jobs --address http://127.0.0.1:8265")
)
def jobs_(address: JobsAddress = None, token: JobsToken = None) -> None:
    """The Ray cluster's jobs, newest first: id, status, entrypoint, start time.

    Every job the cluster's jobs API knows is listed, those plexa did not submit too."""
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


@app.command(
    epilog=_examples(
        "plexa logs JOB_ID --follow",
        "plexa logs plexa-digits-cnn-1a2b3c4d --address http://127.0.0.1:8265",
    )
)
def logs(
    job_id: JobId,
    address: JobsAddress = None,
    token: JobsToken = None,
    follow: Annotated[
        bool,
        typer.Option("--follow", "-f", help="Keep printing until the job ends, then its status."),
    ] = False,
) -> None:
    """Print a Ray job's logs.

    Without --follow, what the job has written so far is printed once."""
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


@app.command(
    epilog=_examples(
        "plexa federate pipelines/digits-federated.yaml",
        "plexa federate pipelines/digits-federated.yaml --set federated.rounds=5",
        "plexa federate pipelines/digits-federated.yaml --deploy",
    )
)
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
        typer.Option(
            "--set",
            help="An override such as federated.rounds=3 (repeatable); the same as one given "
            "after PIPELINE.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Train a pipeline in federated Flower rounds.

    Its federated: section (or the defaults) says how many clients and rounds, which
    strategy and how the data is partitioned among the clients."""
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


@app.command(
    epilog=_examples(
        "plexa generate RUN_ID --n 16 --out digits.png",
        'plexa generate RUN_ID --prompt "def " --temperature 0.8 --top-k 10',
        "plexa generate plexa-runs/RUN_ID/export/model.onnx --seed 1",
    )
)
def generate(
    target: Annotated[
        str,
        typer.Argument(
            help="An ONNX export (the .onnx file or the folder holding model.onnx) or a run id "
            "whose export is on this machine.",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Image generators: the PNG grid to write.")
    ] = Path("samples.png"),
    n: Annotated[int, typer.Option("--n", min=1, help="Image generators: how many samples.")] = 64,
    prompt: Annotated[
        str, typer.Option("--prompt", help="Language models: the text to continue.")
    ] = "",
    max_new_tokens: Annotated[
        int,
        typer.Option("--max-new-tokens", min=1, help="Language models: how many tokens to add."),
    ] = 200,
    temperature: Annotated[
        float,
        typer.Option(
            "--temperature",
            min=0.0,
            help="Language models: sampling temperature; 0: the likeliest token each time.",
        ),
    ] = 1.0,
    top_k: Annotated[
        int, typer.Option("--top-k", min=0, help="Language models: the k likeliest only; 0: all.")
    ] = 0,
    seed: Annotated[
        int, typer.Option("--seed", help="Random seed; the same seed gives the same samples.")
    ] = 0,
    tracking_uri: TrackingUri = None,
) -> None:
    """New samples from an export: a PNG grid (gan, vae, diffusion) or text (language models).

    The export runs on ONNX Runtime; its metadata says which kind it is, so the image options
    apply to generators and the text options to language models."""
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


@app.command(
    epilog=_examples(
        "plexa serve models:/digits-cnn/1",
        "plexa serve digits=models:/digits-cnn@champion --port 8080",
        "plexa serve digits-int8=models:/digits-cnn@int8",
        "plexa serve plexa-runs/RUN_ID/export/model.onnx --no-batching",
        "plexa serve RUN_ID --ray --replicas 2",
        "plexa serve models:/digits-cnn/1 --grpc-port 8001",
    )
)
def serve(
    targets: Annotated[
        list[str],
        typer.Argument(
            help="What to serve: FILE.onnx, models:/NAME/VERSION, models:/NAME@ALIAS, a run "
            "id (its float export) or runs:/RUN_ID/onnx-model-int8 (its int8 copy; registered: "
            "models:/NAME@int8); NAME=TARGET picks the name in URLs.",
            show_default=False,
        ),
    ],
    host: Annotated[
        str, typer.Option(help="Interface; keep 127.0.0.1 unless you set a token.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    grpc_port: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=65535,
            help="Also serve the protocol over gRPC (KServe's GRPCInferenceService) on this "
            "port, same host, token, limits and models.",
            show_default=False,
        ),
    ] = None,
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
        int,
        typer.Option(
            min=1,
            help="Largest request body or gRPC message in bytes (larger: 413, RESOURCE_EXHAUSTED).",
        ),
    ] = 4 * 1024 * 1024,
    ray: Annotated[
        bool, typer.Option("--ray", help="Run as a Ray Serve deployment (embedded Ray).")
    ] = False,
    replicas: Annotated[int, typer.Option(min=1, help="Ray Serve replicas (with --ray).")] = 1,
    tracking_uri: TrackingUri = None,
) -> None:
    """Serve ONNX exports over the Open Inference Protocol v2, /predict and a web page.

    The protocol over HTTP, and over gRPC too with --grpc-port. Models run on ONNX Runtime;
    requests that arrive together are merged into one call unless --no-batching. SIGTERM stops
    it once the requests in flight are answered."""
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
    ports = "this port" if grpc_port is None else "these ports"
    console = _console()
    if host not in ("127.0.0.1", "localhost", "::1") and not token:
        console.print(
            f"[yellow]warning:[/yellow] listening on {host} without --token: anyone who can "
            f"reach {ports} can use the models (set PLEXA_SERVE_TOKEN)",
            soft_wrap=True,
        )
    grpc_where = "" if grpc_port is None else f", gRPC on {host}:{grpc_port}"
    console.print(
        f"[bold]plexa serve[/bold] on {where}{grpc_where} (page: {where}/, Ctrl-C stops it)",
        soft_wrap=True,
    )
    # uvicorn answers SIGTERM itself (every request in flight is finished), then raises it
    # again for the default action: the process ends by the signal, as servers do
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    run_server(
        targets,
        host,
        port,
        options,
        ray=ray,
        replicas=replicas,
        tracking_uri=tracking_uri,
        grpc_port=grpc_port,
    )


# --------------------------------------------------------------------------- sync


@app.command(
    epilog=_examples(
        "plexa sync",
        "plexa sync --from plexa-runs/offline/mlflow.db --to http://127.0.0.1:5000",
    )
)
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
    """Copy runs that failed over to the local store (server unreachable) to the server.

    A run whose MLflow server stops answering keeps logging to a local store; this copies
    each such run to its server once it is back. A run already copied is skipped."""
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
