"""Prometheus metrics of one server, in its own registry (several apps in one process stay
apart): requests, latency, batch sizes, errors, requests in flight.

Every request is counted on the event loop, so the counts are plain ints and lists updated there
and become Prometheus families only when /metrics is scraped (also on the loop):
prometheus_client's own metric objects take a lock for each update, a few µs of every small
request.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class _Histogram:
    """Counts per bucket (a value goes in the first whose bound is at least it) and their sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, int]]:
        """Cumulative counts by upper bound, as the exposition format has them."""
        from prometheus_client.utils import floatToGoString

        out, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append((floatToGoString(bound), running))
        return out


class Metrics:
    """Counters and histograms labelled by route (not by raw path: unknown names stay bounded;
    a gRPC call's route is its method, its status the HTTP one its refusal maps to)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry

        self._requests: dict[tuple[str, int], int] = {}  # (route, status) -> answered
        self._latency: dict[str, _Histogram] = {}
        self._batch: dict[str, _Histogram] = {}
        self._in_flight: dict[str, int] = {}
        self.registry: CollectorRegistry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)  # collect() below

    def begin(self, route: str) -> None:
        """A request on `route` started."""
        self._in_flight[route] = self._in_flight.get(route, 0) + 1

    def end(self, route: str, status: int, seconds: float) -> None:
        """A request on `route` was answered with `status` after `seconds`."""
        self._in_flight[route] -= 1
        key = (route, status)
        self._requests[key] = self._requests.get(key, 0) + 1
        latency = self._latency.get(route)
        if latency is None:
            latency = self._latency[route] = _Histogram(_LATENCY_BUCKETS)
        latency.observe(seconds)

    def batch(self, model: str) -> Callable[[int], None]:
        """What records the rows of each ONNX Runtime call of `model`."""
        histogram = self._batch.get(model)
        if histogram is None:
            histogram = self._batch[model] = _Histogram(_BATCH_BUCKETS)
        return histogram.observe

    def collect(self) -> Iterator[Any]:
        """The families, as prometheus_client asks a custom collector for them."""
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        requests = CounterMetricFamily(
            "plexa_requests", "Requests handled (HTTP and gRPC)", labels=["route", "status"]
        )
        errors = CounterMetricFamily(
            "plexa_errors", "Requests answered with 4xx or 5xx", labels=["route", "status"]
        )
        for (route, status), count in sorted(self._requests.items()):
            requests.add_metric([route, str(status)], count)
            if status >= 400:
                errors.add_metric([route, str(status)], count)
        latency = HistogramMetricFamily(
            "plexa_request_seconds", "Time from request to response", labels=["route"]
        )
        for route, histogram in sorted(self._latency.items()):
            latency.add_metric([route], histogram.buckets(), histogram.total)
        in_flight = GaugeMetricFamily(
            "plexa_in_flight", "Requests being handled now", labels=["route"]
        )
        for route, count in sorted(self._in_flight.items()):
            in_flight.add_metric([route], count)
        batch = HistogramMetricFamily(
            "plexa_batch_size", "Rows per ONNX Runtime call", labels=["model"]
        )
        for model, histogram in sorted(self._batch.items()):
            batch.add_metric([model], histogram.buckets(), histogram.total)
        yield from (requests, errors, latency, in_flight, batch)

    def exposition(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
