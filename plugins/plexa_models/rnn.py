"""`rnn`: LSTM, GRU or plain (Elman) RNN layers over a sequence, for sequence classification,
regression and forecasting. Images are read row by row (or patch by patch)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from plexa.plugins import Architecture, DataSpec
from plexa_models.sequence import SequenceInput, sequence_shape


class RNN(Architecture):
    tasks = frozenset({"classification", "regression", "sequence"})

    class Config(SequenceInput):
        cell: Literal["lstm", "gru", "rnn"] = Field(
            "lstm", description="The recurrent cell: LSTM, GRU or a plain (tanh) RNN."
        )
        hidden: int = Field(128, ge=1, description="Hidden units per layer and direction.")
        layers: int = Field(1, ge=1, description="Stacked recurrent layers.")
        bidirectional: bool = Field(False, description="Read the sequence in both directions.")
        dropout: float = Field(
            0.0, ge=0, lt=1, description="Dropout between layers and before the head."
        )
        pool: Literal["last", "mean"] = Field(
            "last",
            description="What the head reads: the last layer's final hidden states (both "
            "directions), or its mean output over the steps.",
        )

    def build(self, config: Config, data: DataSpec) -> Any:
        from plexa_models.seqnets import Recurrent, ToSequence

        steps, features = sequence_shape(data.input_shape, config.tokens, config.patch)
        return Recurrent(
            ToSequence(len(data.input_shape), config.tokens, config.patch),
            features,
            data.output_size,
            cell=config.cell,
            hidden=config.hidden,
            layers=config.layers,
            bidirectional=config.bidirectional,
            dropout=config.dropout,
            pool=config.pool,
        )

    def search_space(self) -> dict[str, Any]:
        return {
            "cell": {"choice": ["lstm", "gru"]},
            "hidden": {"choice": [32, 64, 128, 256]},
            "layers": {"choice": [1, 2]},
            "bidirectional": {"choice": [False, True]},
            "dropout": {"uniform": [0.0, 0.3]},
        }
