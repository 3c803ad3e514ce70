"""The LightningModules that wrap a plugin's plain `nn.Module`: loss, metrics and optimiser per
task kind.

Per-step overhead is what separates a training platform from a plain PyTorch loop on small
networks, so these modules keep it low: metrics are running sums on the device, logged once
per epoch, and each Lightning step runs a whole chunk of batches (see `plexa.loaders.Chunks`),
stepping the optimiser and the schedule itself after every batch.
"""

from __future__ import annotations

import math
from typing import Any, cast

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from plexa.config import TrainSpec
from plexa.loaders import Chunk
from plexa.optim import make_optimizer, make_scheduler
from plexa.streaming import labels


class TaskModule(L.LightningModule):
    """Shared training plumbing; subclasses say how a batch becomes a loss and what to sum."""

    #: the metric the best checkpoint and early stopping follow, and whether higher is better
    monitor: tuple[str, str] = ("val/loss", "min")
    #: batches per Lightning step; None: a whole epoch
    batches_per_step: int | None = None

    def __init__(self, net: nn.Module, train: TrainSpec) -> None:
        super().__init__()
        self.automatic_optimization = False  # one optimiser step per batch, not per chunk
        self.net = net
        self.train_spec = train
        # per stage and key, one value per batch; summed once at the end of the epoch
        self._sums: dict[str, dict[str, list[torch.Tensor | float]]] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    # subclasses ---------------------------------------------------------------
    def batch_sums(self, out: torch.Tensor, y: torch.Tensor, loss: torch.Tensor) -> dict:
        """Per-batch quantities (tensors or numbers) whose sums over an epoch give its metrics."""
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
            acc = self._sums.setdefault(stage, {})
            for key, value in self.batch_sums(out, y, loss).items():
                acc.setdefault(key, []).append(value)
        return loss

    def transfer_batch_to_device(self, batch: Any, device: torch.device, idx: int) -> Any:
        if isinstance(batch, Chunk):
            return batch  # MemoryData built it from tensors already on this device
        return super().transfer_batch_to_device(batch, device, idx)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        optimizer = self.optimizers()
        scheduler = self.lr_schedulers()
        # configure_optimizers returns one optimizer and at most one scheduler
        assert not isinstance(optimizer, list) and not isinstance(scheduler, list)
        clip = self.train_spec.gradient_clip
        for one in _batches(batch):
            optimizer.zero_grad(set_to_none=True)
            self.manual_backward(self._step(one, "train"))
            if clip:  # a LightningOptimizer is also an instance of the optimizer it wraps
                self.clip_gradients(cast("torch.optim.Optimizer", optimizer), clip, "norm")
            optimizer.step()
            if scheduler is not None:
                scheduler.step()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        for one in _batches(batch):
            self._step(one, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        for one in _batches(batch):
            self._step(one, "test")

    def _log_epoch(self, stage: str) -> None:
        sums = self._sums.pop(stage, None)
        if not sums:
            return
        keys = sorted(sums)
        packed = torch.stack([self._total(sums[k]) for k in keys])
        if self.trainer.world_size > 1:  # sum over ranks, then divide once
            packed = self.trainer.strategy.reduce(packed, reduce_op="sum")
        totals = dict(zip(keys, packed.tolist(), strict=True))
        for name, value in self.epoch_metrics(totals).items():
            self.log(f"{stage}/{name}", value, on_epoch=True)

    def _total(self, values: list[torch.Tensor | float]) -> torch.Tensor:
        if isinstance(values[0], torch.Tensor):
            return torch.stack(values).double().sum()  # type: ignore[arg-type]
        return torch.tensor(float(sum(values)), dtype=torch.float64, device=self.device)

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        # the epoch's training batches are done when validation ends; logging their metrics
        # here lets epoch-end callbacks, which run before this module's own epoch-end hook,
        # see train and val side by side
        self._log_epoch("train")
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def configure_optimizers(self) -> Any:
        optimizer = make_optimizer(self.parameters(), self.train_spec.optimizer)
        epochs = max(1, self.trainer.max_epochs or 1)
        datamodule: Any = getattr(self.trainer, "datamodule", None)
        if hasattr(datamodule, "batches_per_epoch"):
            per_epoch = datamodule.batches_per_epoch()
        else:  # plain batches from some other loader
            per_epoch = max(1, int(self.trainer.estimated_stepping_batches) // epochs)
        total = per_epoch * epochs
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
        n = len(y)
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
        return {
            "sse": (err**2).sum(),
            "sae": err.abs().sum(),
            "sy": y.sum(),
            "syy": (y**2).sum(),
            "values": y.numel(),
        }

    def epoch_metrics(self, s: dict[str, float]) -> dict[str, float]:
        values = s["values"]
        variance = s["syy"] - s["sy"] ** 2 / values
        return {
            "loss": s["sse"] / values,
            "mae": s["sae"] / values,
            "r2": 1 - s["sse"] / variance if variance > 0 else 0.0,
        }


# ------------------------------------------------------------------ sequence tasks


class ForecastTask(RegressionTask):
    """`sequence`: forecasting. Inputs are windows (N, T, C); targets (N, H) are the next H
    values of channel 0 in the input's units, or (N, H, K) those of channels 0..K-1 (outputs
    are flat, horizon-major), so the naive forecast (each target channel's last value in the
    window, held over the horizon) is scored on the same batches: `mse_vs_naive` is the
    network's mean squared error over the naive one's (below 1 beats it)."""

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        loss = super()._step(batch, stage)
        x, y = batch
        with torch.no_grad():
            k = y.shape[-1] if y.ndim == 3 else 1
            last = x.reshape(len(x), x.shape[1], -1)[:, -1, None, :k]  # (N, 1, K): held over H
            naive = ((last - y.reshape(len(y), -1, k)) ** 2).sum()
            self._sums[stage].setdefault("naive_sse", []).append(naive)
        return loss

    def epoch_metrics(self, s: dict[str, float]) -> dict[str, float]:
        out = super().epoch_metrics(s)
        naive = s["naive_sse"] / s["values"]
        ratio = out["loss"] / naive if naive > 0 else float("inf")
        return {**out, "mse": out["loss"], "naive_mse": naive, "mse_vs_naive": ratio}


class LanguageModelTask(TaskModule):
    """`language-model`: next-token prediction. Inputs (N, T) are token ids, targets (N, T) the
    ids one position later, outputs (N, T, vocab) logits. `perplexity` is exp of the mean
    per-token cross-entropy; the unigram baseline (token frequencies of the training split,
    add-one smoothed) is scored on the same tokens as `unigram_perplexity`, and
    `perplexity_vs_unigram` is the ratio of the two."""

    monitor = ("val/loss", "min")

    def __init__(self, net: nn.Module, train: TrainSpec) -> None:
        super().__init__(net, train)
        self._unigram: torch.Tensor | None = None  # log-probabilities; follows the data

    def setup(self, stage: str) -> None:
        data = getattr(getattr(self.trainer, "datamodule", None), "data", None)
        targets = None if data is None else labels(data.train)
        if data is not None and targets is not None and self._unigram is None:
            ids = torch.as_tensor(targets).reshape(-1)
            counts = torch.bincount(ids, minlength=data.spec.output_size).double() + 1
            self._unigram = (counts / counts.sum()).log()

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out.flatten(0, -2), y.reshape(-1))

    def batch_sums(self, out: torch.Tensor, y: torch.Tensor, loss: torch.Tensor) -> dict:
        n = y.numel()
        sums = {"loss": loss.detach() * n, "correct": (out.argmax(-1) == y).sum(), "n": n}
        if self._unigram is not None:
            self._unigram = self._unigram.to(y.device)
            sums["unigram_nll"] = -self._unigram[y].sum()
        return sums

    def epoch_metrics(self, s: dict[str, float]) -> dict[str, float]:
        loss = s["loss"] / s["n"]
        out = {"loss": loss, "acc": s["correct"] / s["n"], "perplexity": math.exp(loss)}
        if "unigram_nll" in s:
            unigram = math.exp(s["unigram_nll"] / s["n"])
            out["unigram_perplexity"] = unigram
            out["perplexity_vs_unigram"] = out["perplexity"] / unigram
        return out


def _batches(batch: Any) -> list:
    """A chunk of batches, or one plain batch from an ordinary loader.

    A chunk arrives as a plain list of (x, y) pairs where DDP moved it to a GPU itself
    (DistributedDataParallel's forward rebuilds lists), so its type alone does not tell.
    """
    chunked = isinstance(batch, Chunk) or (
        isinstance(batch, list) and len(batch) > 0 and isinstance(batch[0], (tuple, list))
    )
    return batch if chunked else [batch]


TASK_MODULES: dict[str, type[TaskModule]] = {
    "classification": ClassificationTask,
    "regression": RegressionTask,
    "sequence": ForecastTask,
    "language-model": LanguageModelTask,
}


def wrap(net: nn.Module | L.LightningModule, task: str, train: TrainSpec) -> L.LightningModule:
    """A plugin's LightningModule is used as is; a plain module gets its task's wrapper."""
    if isinstance(net, L.LightningModule):
        if hasattr(net, "train_spec"):  # one that builds its own optimisers from `train`
            cast(Any, net).train_spec = train  # Module.__setattr__ is typed for tensors, modules
        return net
    if task not in TASK_MODULES:
        raise ValueError(
            f"no built-in training step for the {task} task: the architecture must return "
            "a LightningModule"
        )
    return TASK_MODULES[task](net, train)
