"""Flower strategies from a `federated:` section, and the wrapper that records each round.

Every strategy here accepts failures: a client whose reply is an error (it raised, or its
process died) is left out of the aggregate and the round goes on. `Observed` counts those
failures and keeps each client's own metrics, which Flower's aggregate would average away.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedYogi,
    Krum,
    Strategy,
)

if TYPE_CHECKING:
    from plexa.config import FederatedSpec

PARTITION_KEY = "partition-id"  # in each client's MetricRecord: who sent it
ARRAYS_KEY = "arrays"  # Flower's default record keys in a training message
CONFIG_KEY = "config"


def sampled_per_round(fed: FederatedSpec) -> int:
    return max(1, round(fed.fraction * fed.clients))


def build(fed: FederatedSpec) -> Observed:
    """The strategy the spec names, with DP wrapped around it when asked, observed."""
    per_round = sampled_per_round(fed)
    common: dict[str, Any] = {
        "fraction_train": fed.fraction,
        "fraction_evaluate": 0.0,  # the server evaluates the global model centrally instead
        "min_train_nodes": per_round,
        "min_available_nodes": fed.clients,  # wait until every client has connected
    }
    inner: Strategy
    if fed.strategy == "fedavg":
        inner = FedAvg(**common)
    elif fed.strategy == "fedprox":
        inner = FedProx(**common, proximal_mu=fed.proximal_mu)
    elif fed.strategy == "fedadam":
        inner = FedAdam(**common, eta=fed.server_lr)
    elif fed.strategy == "fedyogi":
        inner = FedYogi(**common, eta=fed.server_lr)
    elif fed.strategy == "fedmedian":
        inner = FedMedian(**common)
    else:
        inner = Krum(**common, num_malicious_nodes=fed.byzantine)
    if fed.privacy is not None:
        inner = DifferentialPrivacyServerSideFixedClipping(
            inner,
            noise_multiplier=fed.privacy.noise_multiplier,
            clipping_norm=fed.privacy.clipping_norm,
            num_sampled_clients=per_round,
        )
    return Observed(inner)


@dataclass
class RoundRecord:
    """What one round did: who replied, who failed, each client's metrics, how long."""

    sampled: int = 0
    replied: int = 0
    failed: int = 0
    clients: dict[int, dict[str, float]] = field(default_factory=dict)
    aggregated: dict[str, float] = field(default_factory=dict)
    started: float = 0.0


class Observed(Strategy):
    """Delegates to a strategy and records each training round in `rounds`."""

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy
        self.rounds: dict[int, RoundRecord] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        record = self.rounds.setdefault(server_round, RoundRecord(started=time.perf_counter()))
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        record.sampled = len(messages)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        record = self.rounds.setdefault(server_round, RoundRecord(started=time.perf_counter()))
        good = [r for r in replies if not r.has_error()]
        record.replied = len(good)
        # an error reply, or no reply at all before the round's timeout
        record.failed = record.sampled - len(good)
        for reply in good:
            metrics = next(iter(reply.content.metric_records.values()), None)
            if metrics is not None and PARTITION_KEY in metrics:
                values = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
                record.clients[int(values.pop(PARTITION_KEY))] = values
        arrays, aggregated = self.strategy.aggregate_train(server_round, replies)
        if aggregated is not None:
            record.aggregated = {
                k: float(v)
                for k, v in aggregated.items()
                if k != PARTITION_KEY and isinstance(v, int | float)
            }
        return arrays, aggregated

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.strategy.summary()
