"""The Ray runner on an embedded Ray: same results as local DDP, one MLflow run logged from
rank zero, and a worker killed mid-epoch that the run survives."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import lightning as L
import mlflow
import pytest

from plexa import orchestrator
from plexa.config import load_pipeline

from .conftest import PIPELINES
from .conftest import plexa as plexa_cli

pytestmark = pytest.mark.slow

OVERRIDES = ("train.max_epochs=3", "export.onnx=false", "model.params.dropout=0.2")


def ray_spec(*extra: str):
    return load_pipeline(
        PIPELINES / "digits-mlp.yaml",
        ["compute.runner=ray", "compute.workers=2", *OVERRIDES, *extra],
    )


def history(run_id: str, key: str) -> list[tuple[int, float]]:
    points = mlflow.MlflowClient().get_metric_history(run_id, key)
    return sorted((m.step, m.value) for m in points)


@pytest.fixture(scope="module")
def ray_run(tmp_path_factory: pytest.TempPathFactory):
    """One uninterrupted 2-worker run, shared by the tests that compare against it."""
    home = tmp_path_factory.mktemp("ray-run")
    uri = f"sqlite:///{home}/mlflow.db"
    spec = ray_spec(f"tracking.uri={uri}", "export.onnx=true")
    with pytest.MonkeyPatch.context() as patch:  # artifacts and runs land in `home`
        patch.chdir(home)
        patch.setenv("PLEXA_RUNS_DIR", str(home / "plexa-runs"))
        result = orchestrator.run(spec)
    return result, uri


def test_two_ray_workers_match_two_process_ddp(ray_run, workdir: Path) -> None:
    result, uri = ray_run
    ddp = plexa_cli(
        "run",
        str(PIPELINES / "digits-mlp.yaml"),
        "compute.accelerator=cpu",
        "compute.devices=2",
        *OVERRIDES,
        cwd=workdir,
    )
    assert ddp.returncode == 0, ddp.stdout + ddp.stderr
    (local,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    # same seeds, same shards (rank r takes every 2nd sample), same gloo all-reduce
    for key in ("test/acc", "test/loss"):
        assert result.metrics[key] == pytest.approx(local.data.metrics[key], abs=1e-5)


def test_one_mlflow_run_with_rank_zero_epochs_and_worker_throughput(ray_run) -> None:
    result, uri = ray_run
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert [r.info.run_id for r in runs] == [result.run_id]
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["plexa.runner"] == "ray"
    assert run.data.tags["plexa.device"] == "cpu"  # no GPU asked for
    assert [s for s, _ in history(result.run_id, "val/acc")] == [0, 1, 2]  # once per epoch
    for rank in (0, 1):
        assert run.data.metrics[f"worker_{rank}/samples_per_second"] > 0
    assert "test/acc" in run.data.metrics
    assert result.best_checkpoint is not None and result.best_checkpoint.exists()
    # the same artifacts and export as a local run
    client = mlflow.MlflowClient(uri)
    assert {"pipeline.yaml", "plots", "checkpoints"} <= {
        a.path for a in client.list_artifacts(result.run_id)
    }
    assert result.export.max_abs_diff <= 1e-4 and result.export.registered_version == "1"


def test_ctrl_c_handling_is_plexa_s_again_after_a_ray_run(ray_run) -> None:
    """Ray Train installs a SIGINT handler for its controller; plexa puts the previous back."""
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def _until_ray_holds_a_checkpoint(storage: Path, timeout: float = 120) -> None:
    """Wait until Ray Train's controller has registered a checkpoint of this run (its reports
    are collected every few seconds): killing a worker before that would restart from scratch."""
    from ray.train import Result

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for experiment in storage.glob("plexa-*"):
            try:
                if Result.from_path(str(experiment)).checkpoint is not None:
                    return
            except RuntimeError:  # no checkpoint registered yet: no snapshot to read
                pass
        time.sleep(0.1)
    raise TimeoutError(f"Ray Train registered no checkpoint under {storage} in {timeout:.0f}s")


def test_a_worker_killed_mid_epoch_is_replaced_and_the_run_completes(ray_run, workdir) -> None:
    marker = workdir / "killed-once"

    class KillRankOneOnce(L.Callback):
        """SIGKILLs rank 1 in the middle of the second epoch, on the first attempt only."""

        def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
            mid_epoch_two = trainer.current_epoch == 1 and trainer.global_step % 10 == 5
            if trainer.global_rank == 1 and mid_epoch_two and not marker.exists():
                marker.touch()
                _until_ray_holds_a_checkpoint(Path(trainer.default_root_dir) / "ray")
                os.kill(os.getpid(), signal.SIGKILL)

    result = orchestrator.run(ray_spec("compute.max_failures=1"), callbacks=[KillRankOneOnce()])
    assert marker.exists(), "the worker was never killed"
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    # the new worker group restarted from the checkpoint of epoch 0, not from scratch
    assert runs[0].data.tags["plexa.ray.resumed_after_epoch"] == "0"
    # resumed from the end of epoch 1: every epoch logged once, global steps as uninterrupted
    assert history(result.run_id, "global_step") == [(0, 10.0), (1, 20.0), (2, 30.0)]
    # per-epoch seeding makes the replayed epoch identical to the uninterrupted run's
    uninterrupted, _ = ray_run
    assert result.metrics["test/acc"] == pytest.approx(uninterrupted.metrics["test/acc"], abs=1e-6)


@pytest.mark.gpu
def test_one_gpu_worker_trains_an_epoch(workdir: Path) -> None:
    spec = load_pipeline(
        PIPELINES / "digits-cnn.yaml",
        [
            "compute.runner=ray",
            "compute.workers=1",
            "compute.gpus_per_worker=1",
            "train.max_epochs=1",
        ],
    )
    result = orchestrator.run(spec)
    assert result.metrics["test/acc"] > 0.5
    assert result.export.max_abs_diff <= 1e-4
    # the worker's Lightning trainer ran on the GPU Ray gave it
    tags = mlflow.MlflowClient().get_run(result.run_id).data.tags
    assert tags["plexa.device"].startswith("cuda"), tags


def test_sigterm_ends_a_ray_run_like_ctrl_c_and_leaves_no_ray_process(workdir: Path) -> None:
    """`ray.init` installs a SIGTERM handler that stops Ray's daemons but leaves the training
    workers running; plexa hands SIGTERM to Ctrl-C's path instead."""
    import subprocess

    import psutil

    from .conftest import BIN

    overrides = ["compute.runner=ray", "compute.workers=1", "train.max_epochs=500"]
    process = subprocess.Popen(
        [str(BIN / "plexa"), "run", str(PIPELINES / "digits-mlp.yaml"), *overrides],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:  # until training is under way on the Ray worker
            if line.startswith("epoch   2/"):
                break
        ray_processes = psutil.Process(process.pid).children(recursive=True)
        assert any("RayTrainWorker" in " ".join(p.cmdline()) for p in ray_processes)
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=120)[0]
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, output[-2000:]  # plexa's exit code for an interrupted run
    assert "interrupted" in output
    saved = output.split("last checkpoint ")[1].split()[0]  # what `--resume` continues from
    assert saved.endswith("last.ckpt") and Path(saved).exists()
    _, alive = psutil.wait_procs(ray_processes, timeout=30)
    assert not alive, f"left running: {[p.cmdline()[:1] for p in alive]}"
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert [r.info.status for r in runs] == ["KILLED"]
