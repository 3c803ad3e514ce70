"""Architecture search: random search with the full budget against Optuna TPE with ASHA.

The acceptance check of the sweep runner, on digits with the cnn plugin: the same search space
(the cnn plugin's own, plus the learning rate), the same number of trials and the same epoch
limit per trial, the same concurrency, run one after the other in this process. Random search
trains every trial to the limit; ASHA stops the weak ones at its rungs and Optuna's TPE steers
later trials towards good regions. Goal: ASHA reaches the best validation accuracy random
search reaches (within 0.5 points) in at most half random search's wall-clock.

- wall-clock: from the start of the sweep's MLflow run (before Ray starts) to its end.
- time to target: the first moment, from the same start, at which any trial of the sweep has
  logged a val/acc at or above (random's best - 0.5 points), read from the MLflow timestamps
  of the trials' per-epoch metrics.
- both sweeps start their own embedded Ray, so both pay the same start-up.

Writes benchmarks/results/nas.md (the comparison and the Optuna/ASHA sweep's trial table,
Pareto front marked) and benchmarks/results/nas_pareto.png (metric vs ONNX Runtime latency of
both sweeps). Never a pass/fail: it reports what it measured.

    .venv/bin/python benchmarks/nas.py [--trials 16] [--epochs 10] [--concurrency 2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PIPELINE = ROOT / "pipelines" / "digits-nas.yaml"
TOLERANCE = 0.005  # 0.5 points of accuracy


def sweep(name: str, overrides: list[str], home: Path) -> dict[str, Any]:
    """One sweep in its own MLflow store and run folder; what the comparison needs from it."""
    import mlflow

    from plexa import orchestrator
    from plexa.config import load_pipeline

    uri = f"sqlite:///{home}/mlflow.db"
    os.environ["PLEXA_RUNS_DIR"] = str(home / "plexa-runs")
    spec = load_pipeline(
        PIPELINE, [f"tracking.uri={uri}", f"tracking.run_name={name}", *overrides]
    )
    started = time.time()
    result = orchestrator.run(spec)
    ended = time.time()
    client = mlflow.MlflowClient(uri)
    parent = client.get_run(result.run_id)
    trials = client.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{result.run_id}'"
    )
    curve = []  # (seconds since start, val/acc) over every trial and epoch
    for trial in trials:
        for point in client.get_metric_history(trial.info.run_id, "val/acc"):
            curve.append((point.timestamp / 1000 - started, point.value))
    statuses = [t.info.status for t in trials]
    rows = []
    for t in trials:
        m = t.data.metrics
        if "latency_ms" in m and "val/acc" in m and t.info.status == "FINISHED":
            rows.append((m["val/acc"], m["latency_ms"]))
    return {
        "name": name,
        "run_id": result.run_id,
        "uri": uri,
        "seconds": ended - started,
        "best": max((v for _, v in curve), default=float("nan")),
        "curve": sorted(curve),
        "epochs": len(curve),
        "finished": statuses.count("FINISHED"),
        "stopped": statuses.count("KILLED"),
        "failed": statuses.count("FAILED"),
        "test_acc": result.metrics.get("test/acc", float("nan")),
        "points": rows,
    }


def time_to(curve: list[tuple[float, float]], target: float) -> float | None:
    return next((t for t, v in curve if v >= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "nas.md")
    args = parser.parse_args()

    from plexa.quiet import quiet_libraries

    quiet_libraries()
    common = [
        f"train.max_epochs={args.epochs}",
        f"sweep.trials={args.trials}",
        f"sweep.concurrency={args.concurrency}",
        f"sweep.seed={args.seed}",
        "sweep.space={train.optimizer.lr: {loguniform: [3.0e-4, 1.0e-2]}}",  # + cnn's own
        "export.register_as=null",
    ]
    load_before = os.getloadavg()[0]
    begun = time.time()
    with tempfile.TemporaryDirectory(prefix="plexa-nas-") as tmp:
        random = sweep(
            "random-full", [*common, "sweep.search=random", "sweep.scheduler=none"], Path(tmp, "a")
        )
        asha = sweep(
            "optuna-asha",
            [*common, "sweep.search=optuna", "sweep.scheduler=asha", "sweep.grace_period=2"],
            Path(tmp, "b"),
        )
        import mlflow

        table = Path(
            mlflow.artifacts.download_artifacts(
                run_id=asha["run_id"], artifact_path="sweep/trials.md", tracking_uri=asha["uri"]
            )
        ).read_text()
    load_after = os.getloadavg()[0]

    target = random["best"] - TOLERANCE
    random_to = time_to(random["curve"], random["best"])
    random_to_text = f"{random_to:.1f} s" if random_to is not None else "n/a"
    asha_to = time_to(asha["curve"], target)
    lines = [
        "# Architecture search: random search (full budget) vs Optuna TPE with ASHA",
        "",
        f"- date: {dt.datetime.now().isoformat(timespec='seconds')}",
        "- pipeline: digits-nas.yaml (cnn on digits), search space: the cnn plugin's "
        "search_space() plus train.optimizer.lr loguniform [3e-4, 1e-2]",
        f"- budget for both: {args.trials} trials, at most {args.epochs} epochs each, "
        f"{args.concurrency} at a time, 1 CPU each, seed {args.seed}",
        f"- versions: torch {version('torch')}, ray {version('ray')}, optuna {version('optuna')}, "
        f"mlflow {version('mlflow')}, python {sys.version.split()[0]}",
        f"- machine: {os.cpu_count()} cores, load average before / after: "
        f"{load_before:.2f} / {load_after:.2f} (the machine is shared)",
        f"- benchmark wall time: {time.time() - begun:.0f} s",
        "",
        "| | random, full budget | Optuna TPE + ASHA |",
        "|---|---|---|",
        f"| best val/acc | {random['best']:.4f} | {asha['best']:.4f} |",
        f"| test/acc of the best trial | {random['test_acc']:.4f} | {asha['test_acc']:.4f} |",
        f"| wall-clock of the sweep | {random['seconds']:.1f} s | {asha['seconds']:.1f} s "
        f"({asha['seconds'] / random['seconds']:.2f}x) |",
        f"| epochs trained (all trials) | {random['epochs']} | {asha['epochs']} |",
        f"| trials finished / stopped early / failed | {random['finished']} / "
        f"{random['stopped']} / {random['failed']} | {asha['finished']} / {asha['stopped']} / "
        f"{asha['failed']} |",
        f"| time to random's best ({random['best']:.4f}) | "
        f"{random_to_text} | |",
        f"| time to within 0.5 points of it (>= {target:.4f}) | | "
        + (
            f"{asha_to:.1f} s ({asha_to / random['seconds']:.2f}x random's wall-clock)"
            if asha_to is not None
            else "never reached"
        )
        + " |",
        "",
        "Goal: ASHA within 0.5 points of random's best in at most half random's wall-clock: "
        + (
            "**met**"
            if asha_to is not None and asha_to <= 0.5 * random["seconds"]
            else "**not met**"
        )
        + ".",
        "",
        "## Trials of the Optuna + ASHA sweep (`*`: on the val/acc vs latency Pareto front)",
        "",
        table,
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    _plot(random, asha, args.out.with_name("nas_pareto.png"))
    print("\n".join(lines[:24]))
    print(f"wrote {args.out} and {args.out.with_name('nas_pareto.png')}")


def _plot(random: dict[str, Any], asha: dict[str, Any], path: Path) -> None:
    """Both sweeps' finished trials, val/acc against latency, each with its Pareto front."""
    from matplotlib.figure import Figure

    from plexa.sweep.pareto import TrialRow, front

    fig = Figure(figsize=(6.0, 4.2), dpi=110, layout="constrained")
    ax = fig.subplots()
    for result, colour in ((random, "tab:grey"), (asha, "tab:blue")):
        rows = [
            TrialRow(str(i), "FINISHED", metric=m, latency_ms=lat)
            for i, (m, lat) in enumerate(result["points"])
        ]
        ax.scatter(
            [r.latency_ms for r in rows], [r.metric for r in rows], color=colour, s=16, alpha=0.6
        )
        edge = front(rows, "max")
        ax.plot(
            [r.latency_ms for r in edge],
            [r.metric for r in edge],
            marker="o",
            color=colour,
            label=f"{result['name']} (Pareto front)",
        )
    ax.set_xlabel("ONNX Runtime latency, batch 1, median (ms)")
    ax.set_ylabel("val/acc")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path)


if __name__ == "__main__":
    main()
