"""Support for the serving tests: small real ONNX exports (made through plexa.export in
seconds) and a real uvicorn server on a free port in a background thread."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

from plexa.config import PipelineSpec, validate
from plexa.export import export_onnx
from plexa.plugins import DataSpec, DataSplits, Split, architectures, datasets


def digits_spec() -> PipelineSpec:
    return validate(
        {
            "name": "digits-cnn",
            "data": {"plugin": "digits"},
            "model": {"plugin": "cnn", "params": {"channels": [8, 16]}},
        }
    )


def digits_data() -> DataSplits:
    return datasets.create("digits").load(digits_spec().data_config(), seed=0)


def digits_export(out_dir: Path, epochs: int = 10) -> Path:
    """The cnn plugin trained on digits with a plain loop (no Lightning), exported to ONNX.

    One torch thread and large batches: seconds even on a busy 2-core machine (accuracy ~0.93).
    """
    spec, data = digits_spec(), digits_data()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        net = architectures.create("cnn").build(spec.model_config_(), data.spec)
        opt = torch.optim.Adam(net.parameters(), lr=0.02)
        x, y = torch.from_numpy(data.train.x), torch.from_numpy(data.train.y)
        net.train()
        for _ in range(epochs):
            for idx in torch.randperm(len(x)).split(256):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    return export_onnx(net, spec, data, out_dir, run_id=None).path


class TinyGenerator(torch.nn.Module):
    """A latent of 4 numbers to an 8x8 image in [0, 1] (model space of the digits data)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.Sigmoid())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).reshape(-1, 1, 8, 8)

    # what plexa's generator plugins declare for plexa.export (latent inputs, metadata)
    def onnx_inputs(self, n: int) -> dict[str, np.ndarray]:
        return {"input": np.random.default_rng(0).standard_normal((n, 4)).astype(np.float32)}

    def onnx_metadata(self) -> dict[str, object]:
        return {
            "kind": "gan",
            "latent_shape": [4],
            "image_shape": [1, 8, 8],
            "value_range": [0.0, 1.0],
        }


def generator_export(out_dir: Path) -> Path:
    """A generator exported by plexa.export: task 'generative', the latent as its input."""
    spec = validate({"name": "tiny-gen", "data": {"plugin": "digits"}, "model": {"plugin": "cnn"}})
    latent = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)
    data_spec = DataSpec(
        task="generative",
        input_shape=(4,),
        normalisation={"mean": 0.0, "std": 16.0, "raw": "pixel intensities 0..16"},
    )
    empty = Split(latent[:0], np.zeros(0, dtype=np.int64))
    splits = DataSplits(data_spec, empty, empty, Split(latent, np.zeros(16, dtype=np.int64)))
    return export_onnx(TinyGenerator(), spec, splits, out_dir).path


_CACHE: dict[str, Path] = {}
_LOCK = threading.Lock()


def cached(kind: str, root: Path) -> Path:
    """One export of each kind per test session (several test modules share it)."""
    with _LOCK:
        if kind not in _CACHE:
            make = {"digits": digits_export, "generator": generator_export}[kind]
            _CACHE[kind] = make(root / kind)
        return _CACHE[kind]


def wait_ready(
    url: str,
    process: subprocess.Popen[Any],
    seconds: float = 60,
    output: Callable[[], str] | None = None,
) -> None:
    """Until `plexa serve` at `url` answers ready; fails at once if the process has exited,
    with `output()` (default: what it printed) in the message."""

    def said() -> str:
        if output is not None:
            return output()
        return str(process.stdout.read()) if process.stdout else ""

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited:\n{said()}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready in {seconds:g} s:\n{said() if output else ''}")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThreadServer:
    """`plexa.serving.app.create_app` under a real uvicorn on 127.0.0.1, in a thread."""

    def __init__(self, targets: list[str], **options: object) -> None:
        import uvicorn

        from plexa.serving import ServeOptions, resolve_all
        from plexa.serving.app import create_app

        self.app = create_app(resolve_all(targets), ServeOptions(**options))  # type: ignore[arg-type]
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_config=None, access_log=False
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadServer:
        import time

        import httpx

        self.thread.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"server on {self.url} not ready within 60 s")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
