"""The LightningModules that wrap a plugin's plain `nn.Module`: loss, metrics and optimiser per
task kind.

Metrics are accumulated as running sums on the device and logged once per epoch: calling
`self.log` every step costs more than a small network's forward pass.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from plexa.config import TrainSpec
from plexa.optim import make_optimizer, make_scheduler

STAGES = ("train", "val", "test")


class TaskModule(L.LightningModule):
    """Shared training plumbing; subclasses say how a batch becomes a loss and what to sum."""

    #: the metric the best checkpoint and early stopping follow, and whether higher is better
    monitor: tuple[str, str] = ("val/loss", "min")

    def __init__(self, net: nn.Module, train: TrainSpec) -> None:
        super().__init__()
        self.net = net
        self.train_spec = train
        self._sums: dict[str, dict[str, torch.Tensor]] = {}
        self.test_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    # subclasses ---------------------------------------------------------------
    def batch_sums(self, out: torch.Tensor, y: torch.Tensor, loss: torch.Tensor) -> dict:
        raise NotImplementedError

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def epoch_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        raise NotImplementedError

    # steps --------------------------------------------------------------------
    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        out = self(x)
        loss = self.loss(out, y)
        with torch.no_grad():
            sums = self.batch_sums(out, y, loss)
            acc = self._sums.setdefault(stage, {})
            for key, value in sums.items():
                acc[key] = acc[key] + value if key in acc else value
            if stage == "test":
                self.test_outputs.append((out.detach().cpu(), y.detach().cpu()))
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test")

    def _log_epoch(self, stage: str) -> None:
        sums = self._sums.pop(stage, None)
        if not sums:
            return
        keys = sorted(sums)
        packed = torch.stack([sums[k].double().sum() for k in keys])
        if self.trainer.world_size > 1:  # sum over ranks, then divide once
            packed = self.trainer.strategy.reduce(packed, reduce_op="sum")
        totals = dict(zip(keys, packed.tolist(), strict=True))
        for name, value in self.epoch_metrics(totals).items():
            self.log(f"{stage}/{name}", value, on_epoch=True)

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        # the epoch's training batches are done when validation ends; logging their metrics
        # here lets epoch-end callbacks, which run before this module's own epoch-end hook,
        # see train and val side by side
        self._log_epoch("train")
        self._log_epoch("val")

    def on_test_epoch_start(self) -> None:
        self.test_outputs = []

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def configure_optimizers(self) -> Any:
        optimizer = make_optimizer(self.parameters(), self.train_spec.optimizer)
        total = int(self.trainer.estimated_stepping_batches)
        per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
        scheduler = make_scheduler(optimizer, self.train_spec.scheduler, total, per_epoch)
        if scheduler is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


class ClassificationTask(TaskModule):
    monitor = ("val/acc", "max")

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, y)

    def batch_sums(self, out: torch.Tensor, y: torch.Tensor, loss: torch.Tensor) -> dict:
        n = torch.tensor(float(len(y)), device=y.device)
        return {"loss": loss.detach() * n, "correct": (out.argmax(1) == y).sum(), "n": n}

    def epoch_metrics(self, s: dict[str, float]) -> dict[str, float]:
        return {"loss": s["loss"] / s["n"], "acc": s["correct"] / s["n"]}


class RegressionTask(TaskModule):
    monitor = ("val/loss", "min")

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(out, y.view_as(out))

    def batch_sums(self, out: torch.Tensor, y: torch.Tensor, loss: torch.Tensor) -> dict:
        y = y.view_as(out)
        err = out - y
        n = torch.tensor(float(len(y)), device=y.device)
        return {
            "sse": (err**2).sum(),
            "sae": err.abs().sum(),
            "sy": y.sum(),
            "syy": (y**2).sum(),
            "n": n,
            "values": torch.tensor(float(y.numel()), device=y.device),
        }

    def epoch_metrics(self, s: dict[str, float]) -> dict[str, float]:
        values = s["values"]
        variance = s["syy"] - s["sy"] ** 2 / values
        return {
            "loss": s["sse"] / values,
            "mae": s["sae"] / values,
            "r2": 1 - s["sse"] / variance if variance > 0 else 0.0,
        }


TASK_MODULES: dict[str, type[TaskModule]] = {
    "classification": ClassificationTask,
    "regression": RegressionTask,
}


def wrap(net: nn.Module | L.LightningModule, task: str, train: TrainSpec) -> L.LightningModule:
    """A plugin's LightningModule is used as is; a plain module gets its task's wrapper."""
    if isinstance(net, L.LightningModule):
        return net
    if task not in TASK_MODULES:
        raise ValueError(
            f"no built-in training step for the {task} task: the architecture must return "
            "a LightningModule"
        )
    return TASK_MODULES[task](net, train)
