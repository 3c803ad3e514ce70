"""Where a Ray run's per-epoch time goes: the worker's own speed, and who else takes the cores.

Two measurements behind the documentation's reading of `benchmarks/scaling.py`:

- compute: the same small CNN training loop (50 steps, batch 64, 8x8 inputs; torch's default
  threads, or `--threads`) timed in a plain process and in a bare Ray Train worker holding
  every core (no plexa, no MLflow), interleaved; medians over repeats.
- cores: a real `plexa run` on the Ray runner (1 worker, every core), sampled from /proc once
  training is under way: CPU seconds per second of the Ray Train worker, the driver (the `plexa`
  process: the epoch relay, MLflow, Ray's driver threads) and every other process (Ray's
  daemons and Train actors).

    .venv/bin/python benchmarks/ray_overhead.py [--repeats 5] [--seconds 8] [--threads 1]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")


def steps_seconds(threads: int, steps: int = 50, rounds: int = 7) -> tuple[float, int]:
    """Median seconds of `steps` training steps (after a warm-up round), and torch's threads
    (`threads`, or torch's default for 0)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(32, 64, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(64 * 8 * 8, 10),
    )
    opt = torch.optim.AdamW(net.parameters())
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(steps):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:]), torch.get_num_threads()


def _ray_worker(config: dict) -> None:
    # one machine: the result goes back through a file (a report without a checkpoint
    # leaves Ray Train's result without metrics)
    Path(config["out"]).write_text(" ".join(map(str, steps_seconds(config["threads"]))))


def on_ray(threads: int) -> tuple[float, int]:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cores = os.cpu_count() or 1
    ray.init(num_cpus=cores, include_dashboard=False, logging_level="WARNING")
    try:
        with tempfile.TemporaryDirectory() as storage:
            out = Path(storage) / "result"
            TorchTrainer(
                _ray_worker,
                train_loop_config={"out": str(out), "threads": threads},
                scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": cores}),
                run_config=RunConfig(storage_path=storage),
            ).fit()
            seconds, threads = out.read_text().split()
    finally:
        ray.shutdown()
    return float(seconds), int(threads)


def _child(kind: str, threads: int) -> tuple[float, int]:
    done = subprocess.run(
        [sys.executable, __file__, f"_{kind}", str(threads)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        raise SystemExit(f"{kind} run failed:\n{done.stderr[-3000:]}")
    seconds, threads = done.stdout.strip().splitlines()[-1].split()
    return float(seconds), int(threads)


def _cpu_ticks() -> dict[int, tuple[int, str]]:
    ticks = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:80]
        except OSError:
            continue
        ticks[int(entry.name)] = (int(fields[11]) + int(fields[12]), command)
    return ticks


def cores_during_a_run(seconds: float) -> dict[str, float]:
    """CPU cores used by the worker, the driver and everything else during Ray training."""
    from scaling import CONFIGS, command_of, run_env  # a plexa Ray run as scaling.py runs it

    (config,) = (c for c in CONFIGS if c.name == "plexa Ray, 1 worker")
    pipeline = str(ROOT / "pipelines" / "digits-cnn.yaml")
    with tempfile.TemporaryDirectory() as folder:
        driver = subprocess.Popen(
            command_of(config, pipeline, 300, []),
            cwd=folder,
            env=run_env(Path(folder)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            assert driver.stdout is not None
            for line in driver.stdout:
                if line.startswith("epoch   3/"):
                    break
            before, start = _cpu_ticks(), time.monotonic()
            time.sleep(seconds)
            after, elapsed = _cpu_ticks(), time.monotonic() - start
        finally:
            driver.terminate()
            driver.wait(timeout=120)
    used = {"Ray Train worker": 0.0, "driver (plexa run)": 0.0, "everything else": 0.0}
    for pid, (ticks, command) in after.items():
        if pid not in before or pid == os.getpid():
            continue
        cores = (ticks - before[pid][0]) / TICKS / elapsed
        if "RayTrainWorker" in command:
            used["Ray Train worker"] += cores
        elif pid == driver.pid:
            used["driver (plexa run)"] += cores
        else:
            used["everything else"] += cores
    return used


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seconds", type=float, default=8.0, help="how long to sample /proc")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ray_overhead.md"))
    args = p.parse_args()
    plain, ray = [], []
    for _ in range(args.repeats):
        plain.append(_child("plain", args.threads))
        ray.append(_child("ray", args.threads))
    a, b = statistics.median(s for s, _ in plain), statistics.median(s for s, _ in ray)
    ratios = [r / q for (q, _), (r, _) in zip(plain, ray, strict=True)]
    each = ", ".join(f"{r:.2f}x" for r in ratios)
    lines = [
        f"`{' '.join(['benchmarks/ray_overhead.py', *sys.argv[1:]])}` on "
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, ray "
        f"{version('ray')}, torch {version('torch')}",
        "",
        f"50 training steps, median of {args.repeats} interleaved:",
        f"- plain process: {a * 1000:.0f} ms ({plain[0][1]} torch threads)",
        f"- bare Ray Train worker: {b * 1000:.0f} ms ({ray[0][1]} torch threads)",
        f"- Ray / plain: **{statistics.median(ratios):.2f}x**, median of the pairs ({each})",
        "",
        f"Cores in use during a plexa Ray run (1 worker), over {args.seconds:g} s:",
    ]
    for name, cores in cores_during_a_run(args.seconds).items():
        lines.append(f"- {name}: {cores:.2f}")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    if sys.argv[1:2] == ["_plain"]:
        print(*steps_seconds(int(sys.argv[2])))
    elif sys.argv[1:2] == ["_ray"]:
        print(*on_ray(int(sys.argv[2])))
    else:
        main()
