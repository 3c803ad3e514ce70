"""The local runner: Lightning on this machine, on CPU, one GPU, or several GPUs with DDP.
A data plugin's Ray Data splits are read in this process, from Ray started (or joined) here."""

from __future__ import annotations

import contextlib

from plexa.assembly import assemble, uses_ray
from plexa.config import PipelineSpec
from plexa.runners import register
from plexa.runners.base import Job, Runner, Trained
from plexa.training import fit_and_test, placement


@register("local")
class LocalRunner(Runner):
    name = "local"

    def session(self, spec: PipelineSpec) -> contextlib.AbstractContextManager[None]:
        """Ray for a data plugin that returns Ray Data splits, started (or joined) as the ray
        runner does, before the plugin loads: its splits are then read in this process."""
        if not uses_ray(spec):
            return contextlib.nullcontext()
        from plexa.quiet import quiet_ray_data
        from plexa.runners.ray import ray_session

        quiet_ray_data()
        return ray_session(spec)

    def train(self, job: Job) -> Trained:
        place = placement(job.spec.compute)
        built = assemble(job.spec)
        job.log_setup(built)
        try:
            fitted = fit_and_test(
                job.spec,
                built.data,
                built.module,
                job.run_dir,
                sinks=[job.epoch_sink()],
                callbacks=job.callbacks,
                resume_from=job.resume_from,
                **place,
            )
        finally:
            if place["strategy"] == "ddp":
                _leave_process_group()
        return Trained(fitted.metrics, fitted.best_checkpoint, fitted.last_checkpoint, built)


def _leave_process_group() -> None:
    """Lightning keeps the DDP process group for reuse; a process that exits with it alive
    can die in gloo's threads ("terminate called without an active exception"), and
    Lightning's launcher then kills every rank."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
