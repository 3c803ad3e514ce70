"""One Tune trial: the pipeline with a sampled point, trained in this process by plexa's own
`fit_and_test`, tracked as a nested MLflow run under the sweep's run.

Every epoch but the last is reported to Tune as it ends, so a scheduler can stop the trial; the
last epoch goes out with the test metrics, the ONNX Runtime latency and the parameter count in
one final report, since a scheduler stops a trial when it reaches the epoch limit. A trial
stopped by the scheduler sees SystemExit from `tune.report` and is marked KILLED (tagged
early-stopped); any other error marks it FAILED and fails only this trial.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import lightning as L

TRIAL_TAG = "plexa.sweep.trial"
PARENT_TAG = "mlflow.parentRunId"
EARLY_STOPPED_TAG = "plexa.sweep.early_stopped"


def objective(weights: dict[str, float], values: dict[str, float]) -> float | None:
    """The weighted sum that `objectives` asks for; None while a term is not measured yet."""
    if not weights or any(k not in values for k in weights):
        return None
    return sum(w * float(values[k]) for k, w in weights.items())


def _experiment(client: Any, setup: dict[str, Any]) -> str:
    """The sweep's experiment in the trial's store, by name (an offline store has its own id)."""
    from plexa.tracking import experiment_id

    return experiment_id(client, setup["experiment"], setup.get("artifacts"))


def find_or_create_run(client: Any, setup: dict[str, Any], trial_id: str, reuse: bool) -> str:
    """The trial's nested run: the existing one when Tune restores the trial from a
    checkpoint (PBT, resume), else a new one (an earlier unfinished attempt stays KILLED)."""
    experiment = _experiment(client, setup)
    if reuse:
        found = client.search_runs(
            [experiment],
            filter_string=f"tags.`{TRIAL_TAG}` = '{trial_id}' and "
            f"tags.`{PARENT_TAG}` = '{setup['parent_run_id']}'",
            max_results=1,
        )
        if found:
            client.update_run(found[0].info.run_id, status="RUNNING")
            return found[0].info.run_id
    tags = {PARENT_TAG: setup["parent_run_id"], TRIAL_TAG: trial_id, **setup.get("tags", {})}
    run = client.create_run(experiment, run_name=f"trial-{trial_id}", tags=tags)
    return run.info.run_id


def finished_run(client: Any, setup: dict[str, Any], trial_id: str) -> Any:
    """This trial's nested run if it already finished: a resumed sweep never trains it again."""
    found = client.search_runs(
        [_experiment(client, setup)],
        filter_string=f"tags.`{TRIAL_TAG}` = '{trial_id}' and "
        f"tags.`{PARENT_TAG}` = '{setup['parent_run_id']}' and attributes.status = 'FINISHED'",
        max_results=1,
    )
    return found[0] if found else None


def trial_store(setup: dict[str, Any]) -> dict[str, Any]:
    """Where this trial logs: the sweep's store, or, when that is an MLflow server that does
    not answer, the local store runs fail over to, tagged so `plexa sync` copies the trial's
    run to the server under the sweep's run."""
    from plexa.tracking import is_remote
    from plexa.tracking_failover import REMOTE_URI_TAG, reachable

    uri = setup["uri"]
    if not is_remote(uri) or reachable(uri):
        return setup
    offline = setup["offline"]
    return {**setup, **offline, "tags": {REMOTE_URI_TAG: uri}}


class NewHyperparameters(L.Callback):
    """After PBT restores a trial from another trial's checkpoint, the optimiser state in it
    carries the donor's hyperparameters; this puts the trial's own ones in place."""

    def __init__(self, optimizer: Any) -> None:
        self.spec = optimizer

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                base = group.get("initial_lr", group["lr"]) or 1.0
                group["lr"] = self.spec.lr * group["lr"] / base
                group["initial_lr"] = self.spec.lr
                group["weight_decay"] = self.spec.weight_decay
                if "momentum" in group:
                    group["momentum"] = self.spec.momentum
        for config in trainer.lr_scheduler_configs:
            config.scheduler.base_lrs = [self.spec.lr] * len(config.scheduler.base_lrs)


def train_trial(config: dict[str, Any], setup: dict[str, Any]) -> None:
    """The Tune trainable. `setup` is what the driver fixed for the whole sweep."""
    import mlflow
    from ray import tune

    from plexa.assembly import assemble
    from plexa.config import PipelineSpec
    from plexa.errors import RunInterrupted
    from plexa.export import export_onnx
    from plexa.plugins import architectures, datasets
    from plexa.quiet import quiet_libraries
    from plexa.streaming import head
    from plexa.sweep import space
    from plexa.sweep.latency import onnx_latency_ms, parameter_count
    from plexa.tracking import Tracker
    from plexa.training import fit_and_test

    quiet_libraries()
    if Path(setup["cwd"]).is_dir():
        os.chdir(setup["cwd"])  # Tune starts a trial in its own folder; paths are the driver's
    for registry, cls in zip((architectures, datasets), setup["plugins"], strict=True):
        if cls.name not in registry.names():
            registry.register(cls.name, cls)
    trial_id = tune.get_context().get_trial_id()
    restored = tune.get_checkpoint()
    setup = trial_store(setup)
    uri = setup["uri"]
    # this process may be a Ray worker started for another store: name the sweep's
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    done = finished_run(client, setup, trial_id)
    if done is not None:  # finished just before an interruption, before Tune heard of it
        tune.report({**done.data.metrics, "finished": 1})
        return
    run_id = find_or_create_run(client, setup, trial_id, reuse=restored is not None)
    tracker = Tracker(run_id, uri, synchronous=True)
    weights: dict[str, float] = setup["objectives"]
    metric = setup["metric"]
    finished = False
    try:
        values = space.decode(setup["space"], config)
        if restored is None:
            client.log_batch(
                run_id,
                params=[
                    mlflow.entities.Param(k, json.dumps(v) if isinstance(v, list) else str(v))
                    for k, v in values.items()
                ],
            )
        # params are the first point; PBT changes a trial's values as it goes, so a tag
        # always holds the current ones
        client.set_tag(run_id, "plexa.sweep.values", json.dumps(values, sort_keys=True))
        spec = space.apply(PipelineSpec.model_validate(setup["spec"]), values)
        built = assemble(spec)
        data, net, module = built.data, built.net, built.module
        trial_dir = Path(setup["run_dir"]) / "trials" / trial_id
        cost: dict[str, float] = {"params": float(parameter_count(net))}
        sample = head(data.test, 1).astype(data.spec.input_dtype)
        if setup["latency_early"]:  # an objective needs it from the first report on
            first = export_onnx(built.export_module(), spec, data, trial_dir / "initial")
            cost["latency_ms"] = onnx_latency_ms(first.path, sample, setup["latency_runs"])
        tracker.log_metrics(cost)

        resume_from = None
        if restored is not None:
            with restored.as_directory() as folder:
                resume_from = Path(tempfile.mkdtemp(prefix="plexa-trial-")) / "last.ckpt"
                shutil.copy2(Path(folder) / "last.ckpt", resume_from)
        held: dict[str, float] = {}
        max_epochs = spec.train.max_epochs

        def report(epoch: int, metrics: dict[str, float]) -> None:
            loss = metrics.get("train/loss")
            if loss is not None and not math.isfinite(loss):
                raise FloatingPointError(f"train/loss is {loss} at epoch {epoch + 1}")
            tracker.log_metrics(metrics, step=epoch)
            out = {**metrics, **cost, "epochs": epoch + 1}
            score = objective(weights, out)
            if score is not None:
                out["objective"] = score
            held.clear()
            held.update(out)
            if epoch + 1 < max_epochs:
                checkpoint = None
                if setup["checkpoints"]:
                    snapshot = Path(tempfile.mkdtemp(prefix="plexa-trial-ckpt-"))
                    shutil.copy2(trial_dir / "checkpoints" / "last.ckpt", snapshot / "last.ckpt")
                    checkpoint = tune.Checkpoint.from_directory(str(snapshot))
                tune.report(out, checkpoint=checkpoint)

        use_gpu = setup["gpu"] > 0
        trained = fit_and_test(
            spec,
            data,
            module,
            trial_dir,
            sinks=[report],
            callbacks=[NewHyperparameters(spec.train.optimizer)] if resume_from else [],
            resume_from=resume_from,
            accelerator="gpu" if use_gpu else "cpu",
            devices=1,
        )
        exported = export_onnx(built.export_module(), spec, data, trial_dir / "export", run_id)
        cost["latency_ms"] = onnx_latency_ms(exported.path, sample, setup["latency_runs"])
        final = {**held, **trained.metrics, **cost}
        final["export/parity_max_abs_diff"] = exported.max_abs_diff
        score = objective(weights, final)
        if score is not None:
            final["objective"] = score
        tracker.log_metrics({k: v for k, v in final.items() if k.startswith(("test/", "best_"))})
        tracker.log_metrics(
            {k: final[k] for k in ("latency_ms", "params", "export/parity_max_abs_diff", "epochs")}
        )
        if score is not None:
            tracker.log_metrics({"objective": score})
        client.log_artifact(run_id, str(exported.path), "onnx")
        if trained.best_checkpoint is not None:
            tracker.set_tags({"plexa.checkpoint": str(trained.best_checkpoint)})
        client.set_terminated(run_id, "FINISHED")
        finished = True
        if metric not in final:
            raise KeyError(f"the sweep metric {metric} was never logged by this trial")
        tune.report({**final, "finished": 1})
    except (SystemExit, RunInterrupted):
        # Tune stops the trial (scheduler) or the sweep (Ctrl-C); Lightning turns the
        # SystemExit Tune raises inside training into a graceful stop (RunInterrupted)
        if not finished:
            client.set_tag(run_id, EARLY_STOPPED_TAG, "true")
            client.set_terminated(run_id, "KILLED")
        raise SystemExit(0) from None
    except BaseException as exc:
        if not finished:
            client.set_tag(run_id, "plexa.error", f"{type(exc).__name__}: {exc}"[:5000])
            client.set_terminated(run_id, "FAILED")
        raise
