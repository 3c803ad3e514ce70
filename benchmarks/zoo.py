"""The model zoo: train every shipped pipeline once and tabulate what it reaches.

For each `pipelines/*.yaml` (federated and sweep pipelines aside: they are measured by their own
tests and benchmarks), one full `plexa run` on this machine's CPU, in a fresh process and a
fresh working folder with its own MLflow store. The table has the family, the data, the metric
and its bar, what the run reached, its wall time, the network's parameter count and the ONNX
export's parity difference. It goes to benchmarks/results/zoo.md (rows also in zoo.json, so
`--only` can re-measure a few pipelines and keep the rest), which the documentation site's
model-zoo page includes.

Bars are the issue's acceptance thresholds; the benchmark reports, it never fails a build.

    .venv/bin/python benchmarks/zoo.py [--only NAME ...]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PIPELINES = ROOT / "pipelines"
RESULTS = ROOT / "benchmarks" / "results"

FAMILIES = {
    "mlp": "feedforward",
    "cnn": "CNN",
    "rnn": "RNN",
    "transformer": "Transformer",
    "gan": "GAN",
    "vae": "VAE",
    "diffusion": "diffusion",
}


@dataclass(frozen=True)
class Bar:
    """`metric` compared with `bar` by `op`; `also` are further (metric, op, bar) conditions."""

    metric: str
    op: str  # ">=", "<=", "<"
    bar: float | None
    also: tuple[tuple[str, str, float], ...] = ()


GENERATOR_BAR = Bar("test/score", ">=", 6.0, (("test/classes_covered", ">=", 9.0),))
BARS: dict[str, Bar] = {
    "digits-cnn": Bar("test/acc", ">=", 0.97),
    "digits-mlp": Bar("test/acc", ">=", None),
    "wine-mlp": Bar("test/acc", ">=", 0.95),
    "iris-csv": Bar("test/acc", ">=", None),
    "diabetes-regression": Bar("test/r2", ">=", 0.4),
    "images-cnn": Bar("test/acc", ">=", 0.9),
    "digits-rnn": Bar("test/acc", ">=", 0.93),
    "digits-transformer": Bar("test/acc", ">=", 0.93),
    "sine-forecast": Bar("test/mse_vs_naive", "<=", 0.5),
    "text-charlm": Bar("val/perplexity_vs_unigram", "<", 0.5),
    "digits-gan": GENERATOR_BAR,
    "digits-vae": GENERATOR_BAR,
    "digits-diffusion": GENERATOR_BAR,
}


@dataclass
class Row:
    pipeline: str
    family: str
    data: str
    metric: str
    bar: str
    reached: str
    passed: bool | None
    seconds: float
    parameters: int
    parity: float | None
    error: str = ""


def _holds(value: float, op: str, bar: float) -> bool:
    return {">=": value >= bar, "<=": value <= bar, "<": value < bar}[op]


def shipped() -> list[str]:
    """Every pipeline but the federated and sweep ones."""
    import yaml

    names = []
    for path in sorted(PIPELINES.glob("*.yaml")):
        raw = yaml.safe_load(path.read_text()) or {}
        if not ({"federated", "sweep"} & set(raw)):
            names.append(path.stem)
    return names


# --------------------------------------------------------------------------- one pipeline


def measure(name: str) -> Row:
    """Run one pipeline here (a fresh process started by `main`) and describe the result."""
    import mlflow

    from plexa import orchestrator
    from plexa.config import load_pipeline
    from plexa.quiet import quiet_libraries

    quiet_libraries()
    spec = load_pipeline(PIPELINES / f"{name}.yaml", ["compute.accelerator=cpu"])
    bar = BARS.get(name, Bar("test/loss", "<=", None))
    params = spec.data.params
    data = spec.data.plugin + (f" ({params['dataset']})" if "dataset" in params else "")
    family = FAMILIES.get(spec.model.plugin, spec.model.plugin)
    started = time.perf_counter()
    result = orchestrator.run(spec)
    seconds = time.perf_counter() - started

    logged = mlflow.MlflowClient().get_run(result.run_id).data.metrics  # latest values
    metrics = {**logged, **result.metrics}
    conditions = [(bar.metric, bar.op, bar.bar), *bar.also]
    reached, passed = [], None if bar.bar is None else True
    for metric, op, threshold in conditions:
        value = metrics.get(metric)
        reached.append(f"{metric.split('/', 1)[1]} {value:.4g}" if value is not None else "n/a")
        if threshold is not None:
            passed = bool(passed) and value is not None and _holds(value, op, threshold)
    bars = [f"{m.split('/', 1)[1]} {op} {b:g}" for m, op, b in conditions if b is not None]
    return Row(
        pipeline=name,
        family=family,
        data=data,
        metric=bar.metric,
        bar=", ".join(bars) or "-",
        reached=", ".join(reached),
        passed=passed,
        seconds=seconds,
        parameters=sum(p.numel() for p in result.model.parameters()),
        parity=result.export.max_abs_diff if result.export is not None else None,
    )


def run_one(name: str, timeout: float) -> Row:
    """`measure` in a child process with its own folder and MLflow store."""
    with tempfile.TemporaryDirectory(prefix=f"zoo-{name}-") as tmp:
        env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db",
            "PLEXA_RUNS_DIR": f"{tmp}/plexa-runs",
        }
        started = time.perf_counter()
        try:
            done = subprocess.run(
                [sys.executable, __file__, "--measure", name],
                cwd=tmp,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            done = None
        seconds = time.perf_counter() - started
    lines = done.stdout.strip().splitlines() if done else []
    if done and done.returncode == 0 and lines and lines[-1].startswith("{"):
        return Row(**json.loads(lines[-1]))
    reason = f"timed out after {timeout:.0f}s" if done is None else done.stderr.strip()[-300:]
    return Row(name, "", "", "", "", "", False, seconds, 0, None, error=reason)


# --------------------------------------------------------------------------- report


def table(rows: list[Row]) -> str:
    lines = [
        "| family | pipeline | data | bar | reached | met | seconds | parameters | ONNX parity |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        met = "-" if r.passed is None else ("yes" if r.passed else "**no**")
        if r.error:
            met = f"error: {r.error.splitlines()[-1][:80]}" if r.error else met
        parity = f"{r.parity:.1e}" if r.parity is not None else "-"
        lines.append(
            f"| {r.family} | `{r.pipeline}` | {r.data} | {r.bar} | {r.reached} | {met} | "
            f"{r.seconds:.0f} | {r.parameters:,} | {parity} |"
        )
    return "\n".join(lines)


def machine() -> str:
    import torch

    return (
        f"{platform.node()}, {os.cpu_count()} CPU cores visible, torch {torch.__version__} "
        f"(torch threads: {torch.get_num_threads()}), CPU only"
    )


def write(rows: list[Row], note: str = "") -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    store = RESULTS / "zoo.json"
    kept = {r["pipeline"]: r for r in (json.loads(store.read_text()) if store.exists() else [])}
    kept.update({r.pipeline: asdict(r) for r in rows})
    ordered = sorted((Row(**r) for r in kept.values()), key=_order)
    store.write_text(json.dumps([asdict(r) for r in ordered], indent=1) + "\n")
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = (
        f"Measured {when} by `.venv/bin/python benchmarks/zoo.py` on {machine()}: one full "
        "`plexa run` per shipped pipeline (seed 0), each in a fresh process. Seconds are wall "
        "time of the whole run (training, test, MLflow, ONNX export and parity check) on a "
        "machine shared with other work, so read them as rough. Generators: `score` is the "
        "Inception-score analogue over the 10 digits from plexa's own digits classifier "
        "(`plexa.scoring`), on 1000 samples (500 for diffusion)."
        + (f" {note}" if note else "")
        + "\n\n"
        + table(ordered)
        + "\n"
    )
    (RESULTS / "zoo.md").write_text("# Model zoo\n\n" + body)


def _order(row: Row) -> tuple[int, str]:
    """By family, in the order of FAMILIES, then by pipeline name."""
    families = list(FAMILIES.values())
    rank = families.index(row.family) if row.family in families else len(families)
    return rank, row.pipeline


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="Just these pipelines.")
    parser.add_argument("--timeout", type=float, default=1800, help="Seconds per pipeline.")
    parser.add_argument("--note", default="", help="A sentence on how this run was made.")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # the child process's mode
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(asdict(measure(args.measure))))
        return
    names = args.only or shipped()
    unknown = [n for n in names if not (PIPELINES / f"{n}.yaml").exists()]
    if unknown:
        parser.error(f"no such pipeline(s): {', '.join(unknown)}")
    rows = []
    for name in names:
        row = run_one(name, args.timeout)
        status = row.error or f"{row.reached} ({'-' if row.passed is None else row.passed})"
        print(f"{name:<22} {row.seconds:7.1f}s  {status}", flush=True)
        rows.append(row)
        # after each pipeline: a long run leaves partial results
        write(rows, args.note)


if __name__ == "__main__":
    main()
