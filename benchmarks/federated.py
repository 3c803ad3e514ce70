"""Federated quality and speed on digits with the cnn plugin (issue 4, point 6).

Quality, 10 clients, the same total epochs over the training split (rounds x local epochs =
the centralised run's epochs), same batch size, optimiser and seed:
  - centralised (plexa's local runner) vs IID FedAvg: goal, within 1.5 points of test accuracy;
  - Dirichlet(alpha=0.1) by label: FedAvg vs FedProx: goal, FedProx at least FedAvg.
Speed: seconds per round for 10 and 50 clients (IID FedAvg, one local epoch) on Flower's
simulation engine. Round 1 includes starting the Ray actors and is reported apart; the
steady figure is the median of the later rounds.

    .venv/bin/python benchmarks/federated.py [--rounds 5 --local-epochs 3 --speed-rounds 4]

Writes the table to benchmarks/results/federated.md. Never a pass/fail.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def base(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "name": "bench-federated",
        "data": {"plugin": "digits", "params": {"val_fraction": 0.15, "test_fraction": 0.15}},
        "model": {"plugin": "cnn", "params": {"channels": [32, 64], "dropout": 0.1}},
        "train": {
            "max_epochs": args.rounds * args.local_epochs,
            "batch_size": args.batch_size,
            "optimizer": {"name": "adamw", "lr": args.lr, "weight_decay": 0.0001},
            "seed": args.seed,
        },
        "compute": {"runner": "local", "accelerator": "cpu", "devices": 1},
        "tracking": {"experiment": "bench-federated", "system_metrics": False},
        "export": {"onnx": False},
    }


def federated(args: argparse.Namespace, **fed: Any) -> dict[str, Any]:
    raw = base(args)
    raw["federated"] = {
        "clients": 10,
        "rounds": args.rounds,
        "local_epochs": args.local_epochs,
        "seed": args.seed,
        **fed,
    }
    return raw


def run(raw: dict[str, Any]) -> tuple[dict[str, float], list[dict[str, float]], float]:
    """Test metrics, per-round records (federated runs) and wall seconds of one pipeline."""
    import json

    from plexa import orchestrator
    from plexa.config import validate
    from plexa.runs import runs_root

    started = time.perf_counter()
    result = orchestrator.run(validate(raw))
    seconds = time.perf_counter() - started
    rounds_file = runs_root() / str(result.run_id) / "rounds.json"
    rounds = json.loads(rounds_file.read_text()) if rounds_file.exists() else []
    return result.metrics, rounds, seconds


def round_seconds(rounds: list[dict[str, float]]) -> tuple[float, float]:
    """(round 1, median of the later rounds)."""
    times = [r["round_seconds"] for r in rounds if "round_seconds" in r]
    return times[0], statistics.median(times[1:]) if len(times) > 1 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--local-epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=0.002)
    parser.add_argument("--mu", type=float, default=0.1, help="FedProx proximal_mu")
    parser.add_argument("--speed-rounds", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args()

    from plexa.quiet import quiet_libraries

    quiet_libraries()
    work = Path(tempfile.mkdtemp(prefix="plexa-bench-fed-"))
    os.chdir(work)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work}/mlflow.db"
    os.environ["PLEXA_RUNS_DIR"] = str(work / "plexa-runs")

    epochs = args.rounds * args.local_epochs
    quality: list[tuple[str, str, float, float]] = []
    cases = [
        ("centralised (local runner)", "all data, one model", base(args)),
        ("FedAvg", "IID", federated(args, strategy="fedavg")),
        (
            "FedAvg",
            "Dirichlet alpha 0.1",
            federated(args, strategy="fedavg", partition={"scheme": "dirichlet", "alpha": 0.1}),
        ),
        (
            f"FedProx (mu {args.mu:g})",
            "Dirichlet alpha 0.1",
            federated(
                args,
                strategy="fedprox",
                proximal_mu=args.mu,
                partition={"scheme": "dirichlet", "alpha": 0.1},
            ),
        ),
    ]
    for name, split, raw in cases:
        metrics, _, seconds = run(raw)
        quality.append((name, split, metrics["test/acc"], seconds))
        print(f"{name:28s} {split:22s} test/acc {metrics['test/acc']:.4f}  {seconds:6.1f}s")

    speed: list[tuple[int, float, float]] = []
    if not args.skip_speed:
        for clients in (10, 50):
            raw = federated(args, strategy="fedavg")
            raw["federated"].update(clients=clients, rounds=args.speed_rounds, local_epochs=1)
            _, rounds, _ = run(raw)
            first, steady = round_seconds(rounds)
            speed.append((clients, first, steady))
            print(f"{clients} clients: round 1 {first:.2f}s, later rounds (median) {steady:.2f}s")

    central = quality[0][2]
    lines = [
        f"digits, cnn [32, 64], 10 clients, {epochs} epochs in all ({args.rounds} rounds x "
        f"{args.local_epochs} local epochs for the federated runs), batch {args.batch_size}, "
        f"AdamW lr {args.lr:g}, seed {args.seed}; `{' '.join(sys.argv)}`, "
        f"{os.cpu_count()} CPU cores (load average at the end {os.getloadavg()[1]:.1f}: wall "
        f"times are only comparable within one run), "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        "| run | partition | test accuracy | vs centralised | wall time |",
        "|---|---|---|---|---|",
    ]
    for name, split, acc, seconds in quality:
        delta = "" if name.startswith("centralised") else f"{100 * (acc - central):+.1f} points"
        lines.append(f"| {name} | {split} | {acc:.4f} | {delta} | {seconds:.0f} s |")
    if speed:
        lines += [
            "",
            "| clients per round | round 1 (starts Ray actors) | later rounds, median |",
            "|---|---|---|",
        ]
        lines += [f"| {c} | {a:.2f} s | {b:.2f} s |" for c, a, b in speed]
    table = "\n".join(lines)
    print("\n" + table)
    out = HERE / "results" / "federated.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("# Federated benchmark (benchmarks/federated.py)\n\n" + table + "\n")
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
