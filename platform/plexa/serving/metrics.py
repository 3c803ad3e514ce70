"""Prometheus metrics of one server, in its own registry (several apps in one process stay
apart): requests, latency, batch sizes, errors."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """Counters and histograms labelled by route (not by raw path: unknown names stay bounded;
    a gRPC call's route is its method, its status the HTTP one its refusal maps to)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry: CollectorRegistry = CollectorRegistry()
        self.requests = Counter(
            "plexa_requests",
            "Requests handled (HTTP and gRPC)",
            ["route", "status"],
            registry=self.registry,
        )
        self.errors = Counter(
            "plexa_errors",
            "Requests answered with 4xx or 5xx",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "plexa_request_seconds",
            "Time from request to response",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "plexa_in_flight", "Requests being handled now", ["route"], registry=self.registry
        )
        self.batch = Histogram(
            "plexa_batch_size",
            "Rows per ONNX Runtime call",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self._children: dict[tuple[str, int], tuple[Any, Any, Any]] = {}
        self._in_flight: dict[str, int] = {}  # read by the gauge when scraped, not per request

    def begin(self, route: str) -> None:
        """A request on `route` started."""
        now = self._in_flight.get(route)
        if now is None:
            self.in_flight.labels(route).set_function(lambda: self._in_flight[route])
            now = 0
        self._in_flight[route] = now + 1

    def end(self, route: str, status: int, seconds: float) -> None:
        """A request on `route` was answered with `status` after `seconds`."""
        self._in_flight[route] -= 1
        # `labels()` looks the child up under a lock; routes and statuses are few, keep them
        children = self._children.get((route, status))
        if children is None:
            children = (
                self.requests.labels(route, str(status)),
                self.latency.labels(route),
                self.errors.labels(route, str(status)) if status >= 400 else None,
            )
            self._children[(route, status)] = children
        requests, latency, errors = children
        requests.inc()
        latency.observe(seconds)
        if errors is not None:
            errors.inc()

    def exposition(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
