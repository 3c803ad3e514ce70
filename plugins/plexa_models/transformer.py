"""`transformer`: an encoder that classifies (or regresses, or forecasts from) a sequence, and
a decoder-only language model when the data is a language-model task (token ids).

Attention follows a pattern chosen in the pipeline (see `plexa_models.attention`): full,
causal, or the sparse local / strided patterns. A language model must not see the tokens it
predicts, so it takes only the causal patterns; validation refuses `full` with a text data set.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from plexa.plugins import Architecture, DataSpec
from plexa_models.attention import CAUSAL_PATTERNS, Pattern, allowed
from plexa_models.sequence import SequenceInput, sequence_shape


class Transformer(Architecture):
    tasks = frozenset({"classification", "regression", "sequence", "language-model"})

    class Config(SequenceInput):
        width: int = Field(
            64, ge=1, description="The model width (d_model); a multiple of `heads`."
        )
        heads: int = Field(4, ge=1, description="Attention heads per block.")
        layers: int = Field(2, ge=1, description="Pre-norm transformer blocks.")
        feedforward: int = Field(
            128, ge=1, description="Hidden units of each block's feed-forward layer."
        )
        dropout: float = Field(
            0.1, ge=0, lt=1, description="Dropout in attention, feed-forward and embeddings."
        )
        attention: Pattern = Field(
            "full",
            description="Which positions each one attends to: all, earlier ones (causal), the "
            "last `window` (local), or those and every `stride`-th before them (strided). A "
            "language model needs a causal pattern (causal, local or strided).",
        )
        window: int = Field(
            8, ge=1, description="local and strided: how many recent positions are seen."
        )
        stride: int = Field(
            8, ge=1, description="strided: also every stride-th position before the window."
        )
        pool: Literal["mean", "last"] = Field(
            "mean",
            description="Encoder: what the head reads, the mean over positions or the last one.",
        )

        @model_validator(mode="after")
        def _heads_divide(self) -> Transformer.Config:
            if self.width % self.heads:
                raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
            return self

    def supported_tasks(self, config: Config) -> frozenset[str]:
        if config.attention in CAUSAL_PATTERNS:
            return self.tasks
        return self.tasks - {"language-model"}

    def build(self, config: Config, data: DataSpec) -> Any:
        import torch.nn as nn

        from plexa_models.seqnets import ToSequence, TransformerEncoder, TransformerLM, Trunk

        if data.task == "language-model":
            if len(data.input_shape) != 1:
                raise ValueError(
                    f"a language model reads token ids (context,), got {data.input_shape}"
                )
            steps = data.input_shape[0]
            embed: nn.Module = nn.Embedding(data.output_size, config.width)
        else:
            steps, features = sequence_shape(data.input_shape, config.tokens, config.patch)
            embed = nn.Linear(features, config.width)
        trunk = Trunk(
            embed,
            steps,
            config.width,
            heads=config.heads,
            layers=config.layers,
            feedforward=config.feedforward,
            dropout=config.dropout,
            mask=allowed(config.attention, steps, config.window, config.stride),
        )
        if data.task == "language-model":
            return TransformerLM(trunk, config.width, data.output_size)
        to_sequence = ToSequence(len(data.input_shape), config.tokens, config.patch)
        return TransformerEncoder(to_sequence, trunk, config.width, data.output_size, config.pool)

    def search_space(self) -> dict[str, Any]:
        return {
            "width": {"choice": [32, 64, 128]},
            "heads": {"choice": [2, 4]},
            "layers": {"choice": [1, 2, 3, 4]},
            "feedforward": {"choice": [64, 128, 256]},
            "dropout": {"uniform": [0.0, 0.3]},
        }
