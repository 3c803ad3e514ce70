"""The Ray runner: the same Lightning training on Ray Train workers, on an embedded Ray or a
cluster.

This module imports nothing heavy at the top: Ray's Train controller unpickles `_worker` by
importing it, and torch and Lightning there would only delay the workers' start.

Only placement changes: with more than one worker Ray's DDP strategy and cluster environment
replace Lightning's own (one worker trains as Lightning alone would), a hook hands saved
checkpoints to Ray (so a restarted worker group resumes from the last), and rank zero announces
each epoch to the driver, which emits it as an event to the run's sinks (`epoch_relay`). Model
and task code are untouched.

A data plugin's Ray Data splits (`plexa.RayDataset`) are loaded in the driver and handed to
Ray Train, which gives each worker its streaming split of each; a worker reads its own with
`get_dataset_shard`.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plexa.config import ComputeSpec, PipelineSpec
from plexa.errors import RunFailed, RunInterrupted, UnreachableError, UserError
from plexa.interrupts import sigterm_as_ctrl_c
from plexa.runners import register
from plexa.runners.base import Job, Runner, Trained
from plexa.runs import CHECKPOINTS, checkpoint

if TYPE_CHECKING:
    import lightning as L

INSTALL_HINT = "the ray runner needs Ray Train: pip install 'plexa[ray]'"
# how often Ray Train's controller collects a report from each worker (Ray's own setting, which
# it passes on from the driver to the controller and the workers)
POLL_S = float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2.0"))


def _ray() -> Any:
    try:
        import ray
        import ray.train  # noqa: F401
    except ImportError as exc:  # heavy and optional: say how to get it
        raise UserError(INSTALL_HINT) from exc
    return ray


def connect(compute: ComputeSpec) -> bool:
    """Join `compute.address` (or RAY_ADDRESS); with neither, start Ray in this process sized
    to the machine. True when it started Ray here, so the caller shuts it down."""
    try:
        return _connect(compute)
    finally:
        sigterm_as_ctrl_c()  # `ray.init` put in a handler of its own


def _connect(compute: ComputeSpec) -> bool:
    ray = _ray()
    address = compute.address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        return False
    if address:
        try:
            ray.init(address=address, logging_level="WARNING")
        except ConnectionError as exc:
            # a token-auth cluster answers a driver without the token only with retries, then
            # this; Ray reads RAY_AUTH_MODE once at import, so it must be set before plexa starts
            raise UnreachableError(
                f"{exc}. If the cluster uses token authentication, run plexa with "
                "RAY_AUTH_MODE=token and the cluster's token in RAY_AUTH_TOKEN (or a file named "
                "by RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token)."
            ) from exc
        return False
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING")
    return True


def shutdown() -> None:
    """Stop the Ray this process started, if it is still up."""
    ray = _ray()
    if ray.is_initialized():
        ray.shutdown()


@contextlib.contextmanager
def ray_session(spec: PipelineSpec) -> Iterator[None]:
    """Start (or join) Ray while a thread warms the tracking store; stop the Ray started here.

    A fresh MLflow store migrates its schema, seconds of Python, while `ray.init` mostly waits
    for its processes to come up: done side by side, the store costs the run's start-up
    nothing. The store's client is cached per URI, so the run opens it warm.
    """
    from concurrent.futures import ThreadPoolExecutor

    from plexa.tracking import warm_store

    with ThreadPoolExecutor(1) as pool:
        pool.submit(warm_store, spec.tracking.uri)
        owned = connect(spec.compute)
    try:
        yield
    finally:
        if owned:
            shutdown()


@register("ray")
class RayRunner(Runner):
    name = "ray"

    def check(self, spec: PipelineSpec, resume: str | None) -> None:
        """On Ray started here, Ray Data's reads need a CPU the training workers leave free:
        without one they wait for ever. (A cluster's CPUs are its own, and may grow.)"""
        from plexa.assembly import uses_ray

        c = spec.compute
        if c.address or os.environ.get("RAY_ADDRESS") or not uses_ray(spec):
            return
        ray = _ray()
        here = ray.cluster_resources().get("CPU") if ray.is_initialized() else os.cpu_count()
        cpus, reserved = float(here or 0), c.workers * c.cpus_per_worker
        if cpus - reserved < 1:
            raise UserError(
                f"data plugin '{spec.data.plugin}' reads with Ray Data, whose reads need a CPU "
                f"of their own, but the {c.workers} Ray Train workers reserve {reserved:g} of "
                f"the {cpus:g} CPUs here: lower compute.cpus_per_worker or compute.workers"
            )

    def session(self, spec: PipelineSpec) -> contextlib.AbstractContextManager[None]:
        return ray_session(spec)

    def train(self, job: Job) -> Trained:
        """Train on `compute.workers` Ray Train workers; rank zero's epochs reach the job's
        sinks here in the driver. The best and last checkpoints are copied to the run folder;
        `finish` builds the model from them."""
        from ray import cloudpickle
        from ray.train import (
            Checkpoint,
            CheckpointConfig,
            FailureConfig,
            RunConfig,
            ScalingConfig,
        )
        from ray.train.torch import TorchTrainer

        from plexa.assembly import load_data, uses_ray
        from plexa.plugins import architectures, datasets
        from plexa.runners.epoch_relay import Relay

        spec, run_dir, c = job.spec, job.run_dir, job.spec.compute
        run_id = job.tracker.run_id
        data, ray_data = None, {}
        if uses_ray(spec):  # Ray Train splits the datasets between the workers
            from plexa.quiet import quiet_ray_data
            from plexa.streaming import ray_datasets

            quiet_ray_data()
            data = load_data(spec)
            ray_data = ray_datasets(data)
        config = {
            "spec": spec.model_dump(mode="json"),
            "run_id": run_id,
            "run_dir": str(run_dir),
            # the stages a worker reads from its shards, each with its rows (counted here once)
            "ray_data": {stage: len(getattr(data, stage)) for stage in ray_data},
            # plugins registered in this process (decorators) travel with the job, as bytes
            # that only the workers unpickle: unpickled, they would import torch and Lightning
            # into Ray Train's controller too, seconds of its start-up before any worker starts
            "payload": cloudpickle.dumps(
                {
                    "plugins": (
                        architectures.get(spec.model.plugin),
                        datasets.get(spec.data.plugin),
                    ),
                    "callbacks": list(job.callbacks),
                }
            ),
        }
        resources = {"CPU": c.cpus_per_worker, "GPU": c.gpus_per_worker}
        resume_from = job.resume_from
        trainer = TorchTrainer(
            _worker,
            train_loop_config=config,
            datasets=ray_data or None,
            scaling_config=ScalingConfig(
                num_workers=c.workers,
                use_gpu=c.gpus_per_worker > 0,
                resources_per_worker=resources,
            ),
            run_config=RunConfig(
                name=f"plexa-{run_id}",
                storage_path=str(run_dir / "ray"),
                failure_config=FailureConfig(max_failures=c.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=2),
            ),
            resume_from_checkpoint=(
                Checkpoint.from_directory(str(resume_from.parent)) if resume_from else None
            ),
        )
        previous = signal.getsignal(signal.SIGINT)
        try:
            with Relay(job.tracker, [job.epoch_sink()]):
                result = trainer.fit()
        except (SystemExit, KeyboardInterrupt):
            # Ctrl-C (or SIGTERM, plexa.interrupts) went to Ray Train's handler, which aborted
            # the controller and its workers; the driver's wait for them ends in SystemExit
            raise RunInterrupted(None, _latest_checkpoint(run_dir)) from None
        finally:
            # Ray Train leaves its own Ctrl-C handler behind, aimed at a controller that is gone
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, previous)
        if result.checkpoint is None:
            raise RunFailed(f"Ray Train finished without a checkpoint: {result.error}")

        # the final checkpoint holds best.ckpt and last.ckpt from rank zero's node
        local = run_dir / CHECKPOINTS
        local.mkdir(parents=True, exist_ok=True)
        with result.checkpoint.as_directory() as folder:
            for name in ("best.ckpt", "last.ckpt"):
                if (Path(folder) / name).exists():
                    shutil.copy2(Path(folder) / name, local / name)
        best, last = checkpoint(run_dir, "best"), checkpoint(run_dir, "last")
        assert result.metrics is not None  # reported with the checkpoint
        metrics = {
            k: float(v) for k, v in result.metrics.items() if k.startswith(("test/", "best_"))
        }
        return Trained(metrics, best if best.exists() else last, last, data=data)


def _latest_checkpoint(run_dir: Path) -> Path | None:
    """The last checkpoint rank zero handed to Ray, which `--resume` continues from."""
    found = list((run_dir / "ray").glob("*/checkpoint_*/last.ckpt"))
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: build the pipeline, fit and test with Ray's DDP strategy."""
    import ray.train
    from ray.train.lightning import RayDDPStrategy, RayLightningEnvironment, prepare_trainer

    from plexa.assembly import assemble, monitor
    from plexa.plugins import architectures, datasets
    from plexa.quiet import quiet_libraries
    from plexa.streaming import RayShard
    from plexa.training import fit_and_test

    quiet_libraries()
    if config["ray_data"]:
        from plexa.quiet import quiet_ray_data

        quiet_ray_data()
    payload = pickle.loads(config["payload"])
    arch_cls, data_cls = payload["plugins"]
    for registry, cls in ((architectures, arch_cls), (datasets, data_cls)):
        if cls.name not in registry.names():
            registry.register(cls.name, cls)
    spec = PipelineSpec.model_validate(config["spec"])
    context = ray.train.get_context()
    rank = context.get_world_rank()
    run_dir = Path(config["run_dir"])

    resume_from = None
    restored = ray.train.get_checkpoint()
    if restored is not None:  # a restarted worker group, or `--resume`
        with restored.as_directory() as folder:
            resume_from = Path(tempfile.mkdtemp(prefix="plexa-resume-")) / "last.ckpt"
            shutil.copy2(Path(folder) / "last.ckpt", resume_from)

    sinks, callbacks = [], list(payload["callbacks"])
    if rank == 0:
        import lightning as L
        import torch

        from plexa.runners.epoch_relay import publisher

        announce, tag = publisher(config["run_id"])
        sinks.append(announce)
        if resume_from is not None:
            epoch = torch.load(resume_from, map_location="cpu", weights_only=True)["epoch"]
            tag({"plexa.ray.resumed_after_epoch": str(epoch)})

        class DeviceTag(L.Callback):
            """Where training ran: what `gpus_per_worker` reached."""

            def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
                tag({"plexa.device": str(trainer.strategy.root_device)})

        callbacks.append(DeviceTag())

    last_report = float("-inf")

    def hand_to_ray(trainer: L.Trainer) -> None:
        """Every rank reports; rank zero's checkpoints go to the run's storage.

        Ray Train's controller takes one report per worker each poll (every
        RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s by default), so reports are handed over at most
        that often, after the first epoch: short epochs would otherwise queue a report (and a
        checkpoint copy) per epoch, which the run then waits out at its end, one poll each. Rank
        zero decides and every rank follows, since reports are collective. The upload runs in the
        background (a synchronous report waits for the next poll), on a snapshot, since the next
        epoch overwrites the checkpoint folder while the upload may still be going.
        """
        from ray.train import CheckpointUploadMode

        nonlocal last_report
        now = time.monotonic()
        if not trainer.strategy.broadcast(now - last_report >= POLL_S, src=0):
            return
        last_report = now
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        metrics["epoch"] = trainer.current_epoch
        checkpoint = None
        if rank == 0:
            snapshot = Path(tempfile.mkdtemp(prefix="plexa-checkpoint-"))
            for saved in (run_dir / CHECKPOINTS).glob("*.ckpt"):
                shutil.copy2(saved, snapshot / saved.name)
            checkpoint = ray.train.Checkpoint.from_directory(str(snapshot))
        ray.train.report(
            metrics,
            checkpoint=checkpoint,
            checkpoint_upload_mode=CheckpointUploadMode.ASYNC,
            delete_local_checkpoint_after_upload=True,
        )

    built = assemble(spec)
    use_gpu = spec.compute.gpus_per_worker > 0
    placement: dict[str, Any] = {"accelerator": "gpu" if use_gpu else "cpu"}
    if context.get_world_size() > 1:
        placement.update(
            devices="auto",
            strategy=RayDDPStrategy(),
            plugins=[RayLightningEnvironment()],
            prepare=prepare_trainer,
        )
    else:  # nothing to synchronise: DDP's gradient hooks would only cost time (8% a step here)
        placement.update(devices=1)
    # this worker's streaming split of each Ray Data split the driver handed to Ray Train
    shards = {
        stage: RayShard(ray.train.get_dataset_shard(stage), rows)
        for stage, rows in config["ray_data"].items()
    }
    trained = fit_and_test(
        spec,
        built.data,
        built.module,
        run_dir,
        monitor=monitor(built.module),
        sinks=sinks,
        callbacks=callbacks,
        resume_from=resume_from,
        after_save=[hand_to_ray],
        shards=shards,
        **placement,
    )
    final = ray.train.Checkpoint.from_directory(str(run_dir / CHECKPOINTS)) if rank == 0 else None
    ray.train.report(trained.metrics, checkpoint=final)
