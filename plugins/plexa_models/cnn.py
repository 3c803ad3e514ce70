"""`cnn`: convolution blocks (conv, batch norm, ReLU, optional pooling) and a linear head."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from plexa.plugins import Architecture, DataSpec, PluginConfig


class CNN(Architecture):
    tasks = frozenset({"classification", "regression"})

    class Config(PluginConfig):
        channels: list[int] = Field(
            default_factory=lambda: [32, 64],
            min_length=1,
            description="Output channels of each block (conv, batch norm, ReLU, pooling); each "
            "at least 1.",
        )
        kernel_size: int = Field(
            3, ge=1, description="The convolutions' kernel side; odd, so padding keeps the size."
        )
        pooling: Literal["max", "avg", "none"] = Field(
            "max",
            description="2x2 pooling after each block (skipped once the image is under 2 "
            "pixels), or none.",
        )
        dropout: float = Field(0.0, ge=0, lt=1, description="Dropout before the linear head.")
        hidden: int = Field(128, ge=1, description="Units of the head's hidden layer.")

        @field_validator("channels")
        @classmethod
        def _positive(cls, value: list[int]) -> list[int]:
            if any(c < 1 for c in value):
                raise ValueError("every channel count must be at least 1")
            return value

        @field_validator("kernel_size")
        @classmethod
        def _odd(cls, value: int) -> int:
            if value % 2 == 0:
                raise ValueError("kernel_size must be odd so 'same' padding keeps the image size")
            return value

    def build(self, config: Config, data: DataSpec) -> Any:
        from torch import nn

        shape = data.input_shape
        if len(shape) == 2:
            shape = (1, *shape)
        if len(shape) != 3:
            raise ValueError(f"cnn needs image inputs (C, H, W) or (H, W), got {data.input_shape}")
        in_ch, height, width = shape
        # (N, H, W) inputs gain a channel axis
        blocks: list[nn.Module] = (
            [] if len(data.input_shape) == 3 else [nn.Unflatten(1, (1, height))]
        )
        for out_ch in config.channels:
            blocks += [
                nn.Conv2d(in_ch, out_ch, config.kernel_size, padding=config.kernel_size // 2),
                nn.BatchNorm2d(out_ch),
                nn.ReLU(),
            ]
            if config.pooling != "none" and min(height, width) >= 2:
                blocks.append(nn.MaxPool2d(2) if config.pooling == "max" else nn.AvgPool2d(2))
                height, width = height // 2, width // 2
            in_ch = out_ch
        blocks += [nn.Flatten()]
        if config.dropout:
            blocks.append(nn.Dropout(config.dropout))
        blocks += [
            nn.Linear(in_ch * height * width, config.hidden),
            nn.ReLU(),
            nn.Linear(config.hidden, data.output_size),
        ]
        return nn.Sequential(*blocks)

    def search_space(self) -> dict[str, Any]:
        """Depth 1 to 3 with a width per block, kernel, pooling, dropout and head width."""
        return {
            "channels": {"each": {"choice": [16, 32, 64]}, "length": [1, 3]},
            "kernel_size": {"choice": [3, 5]},
            "pooling": {"choice": ["max", "avg"]},
            "dropout": {"uniform": [0.0, 0.5]},
            "hidden": {"choice": [64, 128, 256]},
        }
