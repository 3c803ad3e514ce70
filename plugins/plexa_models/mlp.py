"""`mlp`: a feedforward network for classification and regression on flat features."""

from __future__ import annotations

from math import prod
from typing import Any, Literal

from pydantic import Field

from plexa.plugins import Architecture, DataSpec, PluginConfig


class MLP(Architecture):
    tasks = frozenset({"classification", "regression"})

    class Config(PluginConfig):
        hidden: list[int] = Field(
            default_factory=lambda: [128, 64],
            min_length=1,
            description="Units of each hidden layer, in order (the inputs are flattened first).",
        )
        activation: Literal["relu", "tanh", "sigmoid", "gelu"] = Field(
            "relu", description="The activation after each hidden layer."
        )
        dropout: float = Field(
            0.0, ge=0, lt=1, description="Dropout after each hidden layer's activation."
        )
        batch_norm: bool = Field(
            False, description="Batch normalisation after each hidden layer, before its activation."
        )

    def build(self, config: Config, data: DataSpec) -> Any:
        from torch import nn

        act = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU}
        layers: list[nn.Module] = [nn.Flatten()]
        width = prod(data.input_shape)
        for size in config.hidden:
            layers.append(nn.Linear(width, size))
            if config.batch_norm:
                layers.append(nn.BatchNorm1d(size))
            layers.append(act[config.activation]())
            if config.dropout:
                layers.append(nn.Dropout(config.dropout))
            width = size
        layers.append(nn.Linear(width, data.output_size))
        return nn.Sequential(*layers)

    def search_space(self) -> dict[str, Any]:
        """Depth 1 to 3 with a width per layer, activation, dropout and batch norm."""
        return {
            "hidden": {"each": {"choice": [32, 64, 128, 256]}, "length": [1, 3]},
            "activation": {"choice": ["relu", "gelu", "tanh"]},
            "dropout": {"uniform": [0.0, 0.5]},
            "batch_norm": {"choice": [False, True]},
        }
