"""Serving: latency and throughput of `plexa serve` beside MLflow's server and plain PyTorch.

The acceptance check of the serving issue, on the digits CNN as `plexa run
pipelines/digits-cnn.yaml` trains, exports and registers it (fresh temporary folder and MLflow
store), served four ways at once on 127.0.0.1:

  (a) plexa serve on the ONNX export (dynamic batching: max batch 32, max wait 2 ms)
  (b) plexa serve --no-batching
  (c) mlflow models serve -m models:/digits-cnn/1 --env-manager local (the same model as
      plexa logged it: MLflow's ONNX flavour, one uvicorn worker, its default)
  (d) a plain FastAPI endpoint running the trained PyTorch network eagerly (the checkpoint
      loaded into the plugin's nn.Module; a sync handler, as FastAPI's docs write one)

Every request carries one digit (1x1x8x8 float32) as JSON, in each server's own format: the
Open Inference Protocol v2 for plexa, `{"inputs": ...}` for MLflow's /invocations and the
eager endpoint. The load comes from a separate process (N keep-alive HTTP/1.1 connections
on asyncio + uvloop, each sending its next prebuilt request when the previous one is answered:
closed-loop concurrency N), so it does not share an event loop with any server, and takes as
little of the shared cores as a Python client can. Each cell is `--duration` seconds after a short
warm-up; cells are interleaved (every server at one concurrency, then the next concurrency,
then the next repeat) and the table shows the median over `--repeats`.

Before measuring, every server must return the same class as ONNX Runtime for 32 test digits.

    .venv/bin/python benchmarks/serving.py [--duration 4] [--repeats 3] [--out FILE]

PLEXA_BENCH_DIR=DIR keeps the folder (and reuses the model trained there by an earlier run).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request  # the eager endpoint's annotations resolve here

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PIPELINE = REPO / "pipelines" / "digits-cnn.yaml"
SYSTEMS = {
    "plexa": "(a) plexa serve",
    "plexa-nobatch": "(b) plexa serve --no-batching",
    "mlflow": "(c) mlflow models serve",
    "eager": "(d) PyTorch eager FastAPI",
}


# --------------------------------------------------------------------------- set-up


def train(folder: Path) -> dict[str, Any]:
    """`plexa run` the digits CNN; return the export, checkpoint and registered model."""
    env = _env(folder)
    if (folder / "mlflow.db").exists():  # PLEXA_BENCH_DIR from an earlier run: reuse its model
        return _trained(folder, env)
    done = subprocess.run(
        [str(BIN / "plexa"), "run", str(PIPELINE)],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if done.returncode != 0:
        raise SystemExit(f"plexa run failed:\n{done.stdout}\n{done.stderr}")
    return _trained(folder, env)


def _trained(folder: Path, env: dict[str, str]) -> dict[str, Any]:
    from mlflow import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    version = client.get_model_version("digits-cnn", "1")
    run = client.get_run(version.run_id)
    run_dir = Path(run.data.tags["plexa.run_dir"])
    return {
        "onnx": run_dir / "export" / "model.onnx",
        "checkpoint": run_dir / "checkpoints" / "best.ckpt",
        "model_uri": "models:/digits-cnn/1",
        "env": env,
    }


def _env(folder: Path) -> dict[str, str]:
    return {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db",
        "PLEXA_RUNS_DIR": str(folder / "plexa-runs"),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # mlflow runs `uvicorn`
    }


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(
    system: str, model: dict[str, Any], folder: Path, max_wait_ms: str
) -> tuple[subprocess.Popen, str, str]:
    """Launch one server; returns the process, its request URL and its readiness URL."""
    port = _port()
    base = f"http://127.0.0.1:{port}"
    if system in ("plexa", "plexa-nobatch"):
        cmd = [str(BIN / "plexa"), "serve", f"digits={model['onnx']}", "--port", str(port)]
        cmd += ["--no-batching"] if system == "plexa-nobatch" else ["--max-wait-ms", max_wait_ms]
        url, ready = f"{base}/v2/models/digits/infer", f"{base}/v2/health/ready"
    elif system == "mlflow":
        cmd = [
            str(BIN / "mlflow"),
            "models",
            "serve",
            "-m",
            model["model_uri"],
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        url, ready = f"{base}/invocations", f"{base}/ping"
    else:
        cmd = [sys.executable, __file__, "_eager", str(model["checkpoint"]), str(port)]
        url, ready = f"{base}/predict", f"{base}/health"
    log = (folder / f"{system}.log").open("w")
    process = subprocess.Popen(
        cmd, cwd=folder, env=model["env"], stdout=log, stderr=subprocess.STDOUT
    )
    return process, url, ready


def wait_ready(ready: str, process: subprocess.Popen, name: str) -> None:
    import urllib.request

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{name} exited with {process.returncode}; see its log")
        try:
            with urllib.request.urlopen(ready, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{name} not ready in 300 s")


def payload(system: str, x: list[float]) -> bytes:
    if system.startswith("plexa"):
        body: Any = {
            "inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": x}]
        }
    elif system == "mlflow":
        body = {"inputs": [[[x[r * 8 : r * 8 + 8] for r in range(8)]]]}
    else:
        body = {"inputs": [x]}
    return json.dumps(body).encode()


def logits_of(system: str, response: dict[str, Any]) -> list[float]:
    if system.startswith("plexa"):
        return response["outputs"][0]["data"]
    if system == "mlflow":
        predictions = response["predictions"]
        return (predictions["output"] if isinstance(predictions, dict) else predictions)[0]
    return response["outputs"][0]


def samples() -> list[list[float]]:
    """32 digits (normalised, as the model takes them), flat."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images[-32:] / 16.0).reshape(32, 64).astype("float32")
    return [row.tolist() for row in x]


def check(system: str, url: str, xs: list[list[float]], onnx: Path) -> None:
    import urllib.request

    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    expected = session.run(["output"], {"input": np.array(xs, np.float32).reshape(-1, 1, 8, 8)})
    for x, want in zip(xs, expected[0].argmax(1), strict=True):
        request = urllib.request.Request(
            url, payload(system, x), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            got = int(np.argmax(logits_of(system, json.loads(response.read()))))
        if got != int(want):
            raise SystemExit(f"{system} predicts {got}, ONNX Runtime {want}")


# --------------------------------------------------------------------------- load


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection that sends prebuilt requests and reads each answer's
    status and Content-Length body: on two shared cores every microsecond the load generator
    spends is taken from the server it measures (aiohttp took about 170 us a request here)."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is None or self.waiter.done():
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        at = head.find(b"\r\ncontent-length:")
        if at < 0:
            self.waiter.set_exception(RuntimeError(f"no Content-Length in {head[:200]!r}"))
            return
        line_end = head.find(b"\r\n", at + 2)
        length = int(head[at + 17 : line_end if line_end >= 0 else len(head)])
        if len(self.buffer) < end + 4 + length:
            return
        del self.buffer[: end + 4 + length]
        self.waiter.set_result(int(head[9:12]))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"the server closed the connection: {exc}"))

    async def send(self, request: bytes) -> int:
        self.waiter = asyncio.get_running_loop().create_future()
        assert self.transport is not None
        self.transport.write(request)
        return await self.waiter


async def _load(url: str, bodies: list[bytes], concurrency: int, duration: float) -> dict:
    from urllib.parse import urlsplit

    where = urlsplit(url)
    head = (
        f"POST {where.path} HTTP/1.1\r\nHost: {where.netloc}\r\n"
        "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n"
    )
    requests = [head.format(len(b)).encode() + b for b in bodies]
    latencies: list[float] = []
    errors = 0
    warm_until = time.perf_counter() + min(1.0, duration / 4)
    stop = warm_until + duration
    loop = asyncio.get_running_loop()

    async def worker(k: int) -> None:
        nonlocal errors
        transport, connection = await loop.create_connection(
            _Connection, where.hostname, where.port
        )
        i = k
        try:
            while (now := time.perf_counter()) < stop:
                ok = await connection.send(requests[i % len(requests)]) == 200
                done = time.perf_counter()
                if now >= warm_until:
                    if ok:
                        latencies.append(done - now)
                    else:
                        errors += 1
                i += concurrency
        finally:
            transport.close()

    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    latencies.sort()
    n = len(latencies)
    return {
        "requests": n,
        "errors": errors,
        "rps": n / duration,
        "p50_ms": 1000 * latencies[n // 2] if n else float("nan"),
        "p99_ms": 1000 * latencies[min(n - 1, int(n * 0.99))] if n else float("nan"),
    }


def measure(system: str, url: str, xs: list[list[float]], concurrency: int, duration: float):
    """One cell, in a separate load-generator process."""
    spec = json.dumps({"url": url, "system": system, "xs": xs, "c": concurrency, "d": duration})
    done = subprocess.run(
        [sys.executable, __file__, "_load"],
        input=spec,
        capture_output=True,
        text=True,
        timeout=duration + 120,
    )
    if done.returncode != 0:
        raise SystemExit(f"load generator failed: {done.stderr}")
    return json.loads(done.stdout)


def batcher_alone(onnx: Path, concurrency: int = 32, calls: int = 4000) -> dict[str, float]:
    """Model calls per second without HTTP: 32 coroutines sending one row each, through
    plexa's Batcher or each on its own thread (what --no-batching does per request)."""
    import numpy as np

    from plexa.serving.batching import Batcher
    from plexa.serving.model import load

    model = load(onnx, "digits", str(onnx))
    x = {"input": np.zeros((1, 1, 8, 8), np.float32)}

    async def closed_loop(call) -> float:
        done = 0

        async def worker() -> None:
            nonlocal done
            while done < calls:
                await call()
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return calls / (time.perf_counter() - started)

    async def run() -> dict[str, float]:
        batcher = Batcher(model, max_batch=32, max_wait=0.002)
        batcher.start()
        batched = await closed_loop(lambda: batcher.submit(x, 1))
        await batcher.stop()
        alone = await closed_loop(lambda: asyncio.to_thread(model.run, x))
        return {"batched": batched, "unbatched": alone}

    return asyncio.run(run())


# --------------------------------------------------------------------------- eager server


def eager_server(checkpoint: str, port: int) -> None:
    """The trained network in plain PyTorch behind FastAPI: what one writes without plexa."""
    import torch
    import uvicorn
    import yaml

    from plexa.assembly import assemble
    from plexa.config import validate

    spec = validate(yaml.safe_load(PIPELINE.read_text()))
    _, _, net, module = assemble(spec)
    module.load_state_dict(torch.load(checkpoint, weights_only=True)["state_dict"])
    net.eval()
    app = FastAPI()

    @app.get("/health")
    def health() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/predict")
    async def predict(request: Request) -> dict[str, Any]:
        body = await request.json()
        x = torch.tensor(body["inputs"], dtype=torch.float32).reshape(-1, 1, 8, 8)
        with torch.no_grad():
            return {"outputs": net(x).tolist()}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


# --------------------------------------------------------------------------- report


def report(results: dict, args: argparse.Namespace, loads: tuple[str, str]) -> str:
    def med(system: str, c: int, key: str) -> float:
        return statistics.median(r[key] for r in results[system][c])

    lines = [
        "# Serving benchmark",
        "",
        f"`{' '.join(['benchmarks/serving.py', *sys.argv[1:]])}` on "
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPU cores, no GPU; "
        f"load average {loads[0]} at the start, {loads[1]} at the end (the machine is shared).",
        f"digits CNN from `plexa run pipelines/digits-cnn.yaml`; one digit per request (JSON); "
        f"{args.duration:g} s per cell, median of {args.repeats} interleaved repeats.",
        "",
        "| server | concurrency | requests/s | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for system in args.systems:
        title = SYSTEMS[system]
        for c in args.concurrency:
            lines.append(
                f"| {title} | {c} | {med(system, c, 'rps'):.0f} | "
                f"{med(system, c, 'p50_ms'):.1f} | {med(system, c, 'p99_ms'):.1f} |"
            )
    lines.append("")

    def paired(a: str, b: str, c: int) -> tuple[float, str, float]:
        """The median of the per-repeat ratios (each repeat measures both side by side, so
        a slow spell of the shared machine hits both), each ratio, and the ratio of the
        table's medians."""
        ratios = [x["rps"] / y["rps"] for x, y in zip(results[a][c], results[b][c], strict=True)]
        each = ", ".join(f"{r:.2f}x" for r in ratios)
        return statistics.median(ratios), each, med(a, c, "rps") / med(b, c, "rps")

    have = set(args.systems)
    if 8 in args.concurrency and {"plexa", "mlflow"} <= have:
        ratio, each, of_medians = paired("plexa", "mlflow", 8)
        p99 = (med("plexa", 8, "p99_ms"), med("mlflow", 8, "p99_ms"))
        lines.append(
            f"- concurrency 8: plexa serve answers **{ratio:.1f}x** the requests per second of "
            f"`mlflow models serve` (goal: at least 3x; median of the repeats' ratios {each}; "
            f"the table's medians give {of_medians:.1f}x), p99 {p99[0]:.1f} ms against "
            f"{p99[1]:.1f} ms (goal: lower)."
        )
    if 32 in args.concurrency and {"plexa", "plexa-nobatch"} <= have:
        ratio, each, of_medians = paired("plexa", "plexa-nobatch", 32)
        lines.append(
            f"- concurrency 32: dynamic batching gives **{ratio:.2f}x** the requests per second "
            f"of the same server with `--no-batching` (goal: at least 2x; median of the "
            f"repeats' ratios {each}; the table's medians give {of_medians:.2f}x)."
        )
    eager = None
    if 8 in args.concurrency and {"plexa", "eager"} <= have:
        eager = med("plexa", 8, "rps") / med("eager", 8, "rps")
    if eager is not None:
        lines.append(f"- concurrency 8: plexa serve {eager:.1f}x the PyTorch eager endpoint.")
    alone = results.get("_batcher")
    if alone:
        ratios = [a["batched"] / a["unbatched"] for a in alone]
        lines.append(
            f"- without HTTP (32 coroutines calling the model in-process): the batcher makes "
            f"{statistics.median(a['batched'] for a in alone):.0f} model calls/s against "
            f"{statistics.median(a['unbatched'] for a in alone):.0f} one thread per call, "
            f"**{statistics.median(ratios):.1f}x**."
        )
    errors = sum(
        r["errors"] for k, s in results.items() if k != "_batcher" for c in s.values() for r in c
    )
    lines.append(f"- non-200 answers during measurement: {errors}.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    parser.add_argument("--max-wait-ms", default="2", help="(a)'s --max-wait-ms")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/serving.md")
    args = parser.parse_args()

    start_load = " ".join(f"{v:.1f}" for v in os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="plexa-serving-bench-") as tmp:
        folder = Path(os.environ.get("PLEXA_BENCH_DIR", tmp))
        folder.mkdir(parents=True, exist_ok=True)
        print("training and registering the digits CNN ...", flush=True)
        model = train(folder)
        xs = samples()
        servers = {s: start(s, model, folder, args.max_wait_ms) for s in args.systems}
        try:
            for system, (process, url, ready) in servers.items():
                wait_ready(ready, process, system)
                check(system, url, xs, model["onnx"])
            print("all four servers agree with ONNX Runtime; measuring", flush=True)
            results: dict[str, dict[int, list[dict]]] = {
                s: {c: [] for c in args.concurrency} for s in args.systems
            }
            for repeat in range(args.repeats):
                for c in args.concurrency:
                    for system, (_, url, _) in servers.items():
                        cell = measure(system, url, xs, c, args.duration)
                        results[system][c].append(cell)
                        print(
                            f"repeat {repeat + 1} c={c:>2} {system:>13}: {cell['rps']:7.0f} "
                            f"req/s  p50 {cell['p50_ms']:6.1f} ms  p99 "
                            f"{cell['p99_ms']:6.1f} ms",
                            flush=True,
                        )
        finally:
            for process, _, _ in servers.values():
                process.terminate()
            for process, _, _ in servers.values():
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
        results["_batcher"] = [batcher_alone(model["onnx"]) for _ in range(args.repeats)]
    end_load = " ".join(f"{v:.1f}" for v in os.getloadavg())
    text = report(results, args, (start_load, end_load))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    (args.out.with_suffix(".json")).write_text(json.dumps(results, indent=1))
    print(text)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_load":
        spec = json.loads(sys.stdin.read())
        bodies = [payload(spec["system"], x) for x in spec["xs"]]
        import uvloop  # uvicorn's loop: the load generator's own overhead stays small

        print(json.dumps(uvloop.run(_load(spec["url"], bodies, spec["c"], spec["d"]))))
    elif len(sys.argv) > 1 and sys.argv[1] == "_eager":
        eager_server(sys.argv[2], int(sys.argv[3]))
    else:
        main()
