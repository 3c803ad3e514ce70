"""Training for real: determinism, resume after an interruption, Ctrl-C, DDP, early stopping,
and what lands in MLflow."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import lightning as L
import mlflow
import pytest

import plexa
from plexa import orchestrator
from plexa.config import load_pipeline
from plexa.export import ParityError
from plexa.plugins import architectures
from plexa.runners import RunInterrupted

from .conftest import BIN, PIPELINES
from .conftest import plexa as plexa_cli

pytestmark = pytest.mark.slow

EPOCH_KEYS = ("train/loss", "train/acc", "val/loss", "val/acc", "lr", "global_step")


def spec_of(name: str, *overrides: str):
    return load_pipeline(PIPELINES / f"{name}.yaml", ["compute.accelerator=cpu", *overrides])


def history(run_id: str, keys=EPOCH_KEYS) -> dict[str, list[tuple[int, float]]]:
    client = mlflow.MlflowClient()
    return {
        k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in keys
    }


class InterruptAfterEpochs(L.Callback):
    """Sends this process a real SIGINT (Ctrl-C) once `epochs` epochs are done."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epochs:
            os.kill(os.getpid(), signal.SIGINT)


# a small, dropout-using, scheduled run: enough to expose any RNG or LR-schedule drift
RESUMABLE = (
    "train.max_epochs=5",
    "train.scheduler.name=cosine",
    "train.scheduler.warmup_epochs=1",
    "model.params.hidden=[64]",
    "model.params.dropout=0.3",
    "export.onnx=false",
)


def assert_same_history(a: str, b: str) -> None:
    """Two runs logged the same values at the same steps.

    Up to the last float32 bit: MKL promises bitwise-equal results only under conditions torch
    does not set. A seeding or resume bug moves a value by far more (one sample of accuracy out
    of a thousand is 1e-3).
    """
    first, second = history(a), history(b)
    assert {k: [s for s, _ in v] for k, v in first.items()} == {
        k: [s for s, _ in v] for k, v in second.items()
    }
    for key in first:
        ours, theirs = [v for _, v in first[key]], [v for _, v in second[key]]
        assert ours == pytest.approx(theirs, rel=1e-6), key


def test_same_seed_gives_identical_metrics_twice(workdir: Path) -> None:
    spec = spec_of("digits-mlp", *RESUMABLE, "train.max_epochs=2")
    first = orchestrator.run(spec)
    second = orchestrator.run(spec)
    assert first.run_id != second.run_id
    assert first.metrics == pytest.approx(second.metrics, rel=1e-6)
    assert_same_history(first.run_id, second.run_id)


def test_resume_continues_exactly_like_an_uninterrupted_run(workdir: Path) -> None:
    spec = spec_of("digits-mlp", *RESUMABLE)
    with pytest.raises(RunInterrupted) as stopped:
        orchestrator.run(spec, callbacks=[InterruptAfterEpochs(2)])
    run_id = stopped.value.run_id
    assert mlflow.MlflowClient().get_run(run_id).info.status == "KILLED"
    assert stopped.value.last_checkpoint is not None and stopped.value.last_checkpoint.exists()
    assert len(history(run_id)["val/acc"]) == 2

    resumed = orchestrator.run(spec, resume=run_id)
    assert resumed.run_id == run_id
    assert mlflow.MlflowClient().get_run(run_id).info.status == "FINISHED"

    straight = orchestrator.run(spec)
    assert_same_history(run_id, straight.run_id)
    steps = [step for step, _ in history(run_id)["global_step"]]
    assert steps == [0, 1, 2, 3, 4]
    assert resumed.metrics == pytest.approx(straight.metrics, rel=1e-6)


def test_resume_refuses_a_changed_pipeline_or_a_finished_run(workdir: Path) -> None:
    spec = spec_of("digits-mlp", *RESUMABLE, "train.max_epochs=2")
    with pytest.raises(RunInterrupted) as stopped:
        orchestrator.run(spec, callbacks=[InterruptAfterEpochs(1)])
    run_id = stopped.value.run_id
    changed = spec_of("digits-mlp", *RESUMABLE, "train.max_epochs=2", "train.optimizer.lr=0.1")
    with pytest.raises(orchestrator.ResumeError, match="differing keys: train.optimizer.lr"):
        orchestrator.run(changed, resume=run_id)
    orchestrator.run(spec, resume=run_id)
    with pytest.raises(orchestrator.ResumeError, match="already finished"):
        orchestrator.run(spec, resume=run_id)


def test_ctrl_c_leaves_a_last_checkpoint_and_a_killed_run(workdir: Path) -> None:
    # batch size 4: many steps an epoch, so Ctrl-C lands in the middle of one
    args = [
        "run",
        str(PIPELINES / "digits-cnn.yaml"),
        "train.max_epochs=4",
        "train.batch_size=4",
        "train.limit_batches=75",  # a few tenths of a second an epoch
        "export.onnx=false",
    ]
    proc = subprocess.Popen(
        [str(BIN / "plexa"), *args],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("epoch   1/4"):
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.stdout.read()
    assert proc.wait(timeout=120) == 130, "".join(seen) + rest
    assert "interrupted" in rest and "--resume" in rest
    client = mlflow.MlflowClient()
    (run,) = client.search_runs(client.search_experiments()[0].experiment_id.split())
    assert run.info.status == "KILLED"
    assert "checkpoints/last.ckpt" in {
        a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")
    }

    resumed = plexa_cli(*args, "--resume", run.info.run_id, cwd=workdir)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    assert [s for s, _ in history(run.info.run_id)["val/acc"]] == [0, 1, 2, 3]


def test_two_process_ddp_on_cpu_logs_one_run(workdir: Path) -> None:
    out = plexa_cli(
        "run",
        str(PIPELINES / "digits-mlp.yaml"),
        "compute.accelerator=cpu",
        "compute.devices=2",
        "train.max_epochs=2",
        "export.onnx=false",
        cwd=workdir,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    client = mlflow.MlflowClient()
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    # each of the 2 ranks takes half of the 1,257 training samples: 10 steps of 64, not 20
    assert history(runs[0].info.run_id)["global_step"] == [(0, 10.0), (1, 20.0)]
    assert runs[0].data.metrics["test/acc"] > 0.5  # 10 classes: chance is 0.1
    rates = [runs[0].data.metrics[f"worker_{r}/samples_per_second"] for r in range(2)]
    assert all(rate > 0 for rate in rates)


def test_early_stopping_ends_the_run_when_val_loss_stalls(workdir: Path) -> None:
    spec = spec_of(
        "wine-mlp",
        "train.max_epochs=30",
        "train.early_stopping.patience=2",
        "train.early_stopping.min_delta=100",
        "export.onnx=false",
    )
    result = orchestrator.run(spec)
    assert len(history(result.run_id)["val/loss"]) == 3  # the first epoch, then 2 without gain


def test_a_run_records_everything_in_mlflow(workdir: Path) -> None:
    spec = spec_of("digits-cnn", "train.max_epochs=2", "model.params.channels=[8]")
    result = orchestrator.run(spec)
    client = mlflow.MlflowClient()
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert result.tracking_uri == os.environ["MLFLOW_TRACKING_URI"]

    params = run.data.params
    assert params["train.optimizer.lr"] == "0.002"
    assert params["model.params.channels"] == "[8]"
    assert int(params["model.parameters"]) == sum(p.numel() for p in result.model.parameters())
    tags = run.data.tags
    assert tags["plexa.version"] == plexa.__version__
    assert tags["plexa.architecture"] == "cnn" and tags["plexa.architecture.version"] == "0.1.0"
    assert tags["plexa.architecture.distribution"] == "plexa"
    assert tags["plexa.data"] == "digits"

    # each split as an MLflow dataset input: its role, size, schema and a digest
    splits = {
        next(t.value for t in d.tags if t.key == "mlflow.data.context"): d.dataset
        for d in run.inputs.dataset_inputs
    }
    assert sorted(splits) == ["test", "train", "val"]
    for name, dataset in splits.items():
        assert json.loads(dataset.profile)["num_rows"] == int(params[f"data.{name}_size"])
        features = json.loads(json.loads(dataset.schema)["mlflow_tensorspec"]["features"])
        assert features[0]["tensor-spec"]["shape"] == [-1, 1, 8, 8]
        assert dataset.name == f"digits-{name}"
    assert len({d.digest for d in splits.values()}) == 3
    again = mlflow.MlflowClient().get_run(orchestrator.run(spec).run_id).inputs.dataset_inputs
    assert {d.dataset.digest for d in again} == {d.digest for d in splits.values()}

    metrics = run.data.metrics
    for key in ("test/acc", "test/loss", "epoch_seconds", "samples_per_second", "lr"):
        assert key in metrics
    assert any(k.startswith("system/") for k in metrics), sorted(metrics)
    assert len(history(result.run_id)["train/loss"]) == 2

    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"pipeline.yaml", "plots", "checkpoints"} <= artifacts
    plots = {a.path for a in client.list_artifacts(result.run_id, "plots")}
    assert plots == {"plots/learning_curves.png", "plots/confusion_matrix.png"}
    assert "checkpoints/best.ckpt" in {
        a.path for a in client.list_artifacts(result.run_id, "checkpoints")
    }
    logged = load_pipeline_text(result.run_id)
    assert "channels:\n    - 8" in logged

    version = client.get_model_version("digits-cnn", "1")
    assert version.run_id == result.run_id
    model = mlflow.pyfunc.load_model(f"models:/digits-cnn/{version.version}")
    from plexa.plugins import datasets

    data = datasets.create("digits").load(spec.data_config(), spec.train.seed)
    predicted = model.predict(data.test.x[:32])
    logits = next(iter(predicted.values())) if isinstance(predicted, dict) else predicted
    accuracy = (logits.argmax(1) == data.test.y[:32]).mean()
    assert accuracy > 0.8


def load_pipeline_text(run_id: str) -> str:
    return mlflow.artifacts.load_text(f"runs:/{run_id}/pipeline.yaml")


def test_tracking_uri_in_the_pipeline_wins(workdir: Path) -> None:
    store = workdir / "elsewhere.db"
    spec = spec_of(
        "wine-mlp", "train.max_epochs=1", "export.onnx=false", f"tracking.uri=sqlite:///{store}"
    )
    result = orchestrator.run(spec)
    assert store.exists()
    assert mlflow.MlflowClient(f"sqlite:///{store}").get_run(result.run_id)


def test_an_export_that_breaks_parity_fails_the_run(workdir: Path) -> None:
    @plexa.architecture("drifting")
    class Drifting(plexa.Architecture):
        """Computes something else once exported: the parity check must catch it."""

        def build(self, config, data):
            import torch
            from torch import nn

            class Net(nn.Module):
                def __init__(self) -> None:
                    super().__init__()
                    self.linear = nn.Linear(13, 3)

                def forward(self, x: torch.Tensor) -> torch.Tensor:
                    out = self.linear(x)
                    return out + 1.0 if torch.compiler.is_exporting() else out

            return Net()

    try:
        spec = spec_of("wine-mlp", "train.max_epochs=1", "model.plugin=drifting", "model.params={}")
        with pytest.raises(ParityError, match="export.parity_tolerance"):
            orchestrator.run(spec)
    finally:
        architectures.unregister("drifting")
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert run.info.status == "FAILED"


# a sweep's smoke run is one trial, a federated one round of two clients, and diffusion scores
# 50 samples, each 100 denoising steps (tests/test_sweep.py, tests/test_federated.py and
# tests/test_generative.py cover them in depth)
SMOKE_OVERRIDES = {
    "digits-nas": ("sweep.trials=1", "sweep.latency_runs=5"),
    "digits-federated": ("federated.clients=2", "federated.rounds=1"),
    "digits-diffusion": ("model.params.score_samples=50",),
}


@pytest.mark.parametrize("name", sorted(p.stem for p in PIPELINES.glob("*.yaml")))
def test_shipped_pipeline_smoke(name: str, workdir: Path) -> None:
    extra = SMOKE_OVERRIDES.get(name, ())
    result = orchestrator.run(
        spec_of(name, "train.max_epochs=1", "train.limit_batches=3", *extra)
    )
    assert result.status == "FINISHED"
    assert result.export.path.exists() and result.export.max_abs_diff <= 1e-4
    assert result.export.registered_version == "1"


@pytest.mark.gpu
def test_one_gpu_epoch(workdir: Path) -> None:
    spec = load_pipeline(
        PIPELINES / "digits-cnn.yaml",
        ["compute.accelerator=gpu", "compute.devices=1", "train.max_epochs=1"],
    )
    result = orchestrator.run(spec)
    assert result.metrics["test/acc"] > 0.5
    assert result.export.max_abs_diff <= 1e-4  # exported from a GPU-trained net, run on CPU


# ------------------------------------------------------------------ quality bars (issue #2)


@pytest.mark.parametrize(
    ("name", "metric", "bar"),
    [
        ("digits-cnn", "test/acc", 0.97),
        ("wine-mlp", "test/acc", 0.95),
        ("diabetes-regression", "test/r2", 0.4),
    ],
)
def test_quality_bar(name: str, metric: str, bar: float, workdir: Path) -> None:
    result = orchestrator.run(spec_of(name))
    assert result.metrics[metric] >= bar, result.metrics
    if name == "digits-cnn":
        epochs = history(result.run_id, ["epoch_seconds"])["epoch_seconds"]
        assert sum(v for _, v in epochs) < 60


def test_samples_per_second_counts_training_time_not_validation(tmp_path: Path) -> None:
    """`samples_per_second` is training's throughput: an epoch whose validation takes most of
    its time reports the rate of its training batches, while `epoch_seconds` keeps the whole."""
    import time

    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from plexa.callbacks import EpochReport

    class SlowValidation(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch: list[torch.Tensor], idx: int) -> torch.Tensor:
            return self.layer(batch[0]).pow(2).mean()

        def validation_step(self, batch: list[torch.Tensor], idx: int) -> None:
            time.sleep(0.4)  # the work being measured: validation much slower than training

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    reported: list[dict[str, float]] = []
    report = EpochReport([lambda epoch, metrics: reported.append(metrics)])

    class Announce(L.Callback):  # as CommitCheckpoint does, after the epoch's validation
        def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
            report.report(trainer)

    data = TensorDataset(torch.randn(64, 4))
    trainer = L.Trainer(
        max_epochs=1, callbacks=[report, Announce()], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        default_root_dir=tmp_path, accelerator="cpu", devices=1,
    )  # fmt: skip
    trainer.fit(SlowValidation(), DataLoader(data, batch_size=16), DataLoader(data, batch_size=32))
    (metrics,) = reported
    assert metrics["epoch_seconds"] >= 0.8  # two validation batches
    training_seconds = 64 / metrics["samples_per_second"]
    assert training_seconds < metrics["epoch_seconds"] - 0.7
