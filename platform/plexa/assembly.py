"""Plugins -> data -> network -> LightningModule: the one way every runner, trial, federated
client and export builds a pipeline's model, seeded so its weights start the same everywhere."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plexa.config import PipelineSpec
from plexa.plugins import Architecture, DataSplits, architectures, datasets

if TYPE_CHECKING:
    import lightning as L


@dataclass
class Assembled:
    """A pipeline's pieces: the architecture plugin, the data, its network and the
    LightningModule that trains it (the network itself for a plugin's own module)."""

    arch: Architecture
    data: DataSplits
    net: Any
    module: L.LightningModule

    def export_module(self) -> Any:
        """What the ONNX export traces."""
        return self.arch.export_module(self.net)

    def __iter__(self) -> Iterator[Any]:
        """Unpacks as `arch, data, net, module`."""
        return iter((self.arch, self.data, self.net, self.module))


def load_data(spec: PipelineSpec) -> DataSplits:
    return datasets.create(spec.data.plugin).load(spec.data_config(), spec.train.seed)


def uses_ray(spec: PipelineSpec) -> bool:
    """Whether the pipeline's data plugin returns Ray Data splits (asked without loading)."""
    return bool(datasets.create(spec.data.plugin).uses_ray(spec.data_config()))


def build(spec: PipelineSpec, data: DataSplits) -> Assembled:
    """The network and its task module for loaded data, seeded from `train.seed`."""
    import lightning as L

    from plexa.tasks import wrap

    arch = architectures.create(spec.model.plugin)
    assert isinstance(arch, Architecture)
    L.seed_everything(spec.train.seed, workers=True, verbose=False)
    net = arch.build(spec.model_config_(), data.spec)
    return Assembled(arch, data, net, wrap(net, data.spec.task, spec.train))


def assemble(spec: PipelineSpec) -> Assembled:
    """Load the data, then build the model, seeded so weights start the same."""
    import lightning as L

    L.seed_everything(spec.train.seed, workers=True, verbose=False)
    return build(spec, load_data(spec))


def monitor(module: Any) -> tuple[str, str]:
    """The metric a module's best checkpoint follows: its own, else validation loss."""
    return getattr(module, "monitor", ("val/loss", "min"))


def load_weights(module: Any, checkpoint: Path | None) -> None:
    """A Lightning checkpoint's state dict into `module` (nothing for None)."""
    import torch

    if checkpoint is not None:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        module.load_state_dict(state["state_dict"])
