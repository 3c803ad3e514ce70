"""Carries rank zero's epochs from Ray Train workers to the driver, which logs them.

Rank zero announces each epoch, once its checkpoint is saved, under a key in Ray's GCS
key-value store (every Ray process can reach it, on any node). A thread in the driver, which
already holds the MLflow run, takes the announcements in epoch order and hands them to the
sinks: MLflow and the console. Workers then never import MLflow, which would cost each run's
first epoch seconds of start-up, and an epoch reaches the run once, even when Ray restarts the
worker group from a checkpoint older than the last epoch announced.

Private API, kept on purpose: Ray's GCS key-value store (`ray.experimental.internal_kv`) has
no public form. Its public alternatives cost more than the relay: a `ray.util.queue.Queue` or a
named actor is one more process per run, which the run's start-up would wait for, on a 2-core
machine a slice of a core during training too. `tests/test_private_apis.py` fails when a Ray
upgrade changes the four functions used here.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from plexa.tracking import Tracker

NAMESPACE = "plexa"
POLL_S = 0.1

EpochSink = Callable[[int, dict[str, float]], None]


def _prefix(run_id: str) -> str:
    return f"epochs/{run_id}/"


def publisher(run_id: str) -> tuple[EpochSink, Callable[[dict[str, str]], None]]:
    """For rank zero: an epoch sink that announces, and a function whose tags go with the next
    announcement."""
    from ray.experimental.internal_kv import _internal_kv_put

    pending: dict[str, str] = {}

    def announce(epoch: int, metrics: dict[str, float]) -> None:
        message = {"epoch": epoch, "metrics": metrics, "tags": dict(pending)}
        pending.clear()
        key = f"{_prefix(run_id)}{epoch:09d}"
        _internal_kv_put(key, json.dumps(message), True, namespace=NAMESPACE)

    return announce, pending.update


class Relay:
    """The driver's side: polls for announcements while Ray Train runs, then drains them.

    Tags and the epochs already logged go through the run's tracker, like the metrics (its
    epoch sink), so a run that failed over to the local store goes on there."""

    def __init__(self, tracker: Tracker, sinks: Sequence[EpochSink]) -> None:
        self.tracker, self.sinks = tracker, list(sinks)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="plexa-epoch-relay", daemon=True)
        self._logged: set[int] | None = None
        self.error: BaseException | None = None

    def __enter__(self) -> Relay:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._take()  # whatever rank zero announced after the thread's last look
        from ray.experimental.internal_kv import _internal_kv_del

        _internal_kv_del(_prefix(self.tracker.run_id), del_by_prefix=True, namespace=NAMESPACE)
        if self.error is not None and exc[0] is None:
            raise RuntimeError(f"logging the run's epochs failed: {self.error}") from self.error

    def _loop(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                self._take()
            except Exception as exc:  # noqa: BLE001 - reported by __exit__, training goes on
                self.error = exc
                return

    def _take(self) -> None:
        from ray.experimental.internal_kv import (
            _internal_kv_del,
            _internal_kv_get,
            _internal_kv_list,
        )

        keys = sorted(_internal_kv_list(_prefix(self.tracker.run_id), namespace=NAMESPACE))
        if not keys:
            return
        logged = self._already_logged()
        for key in keys:
            raw = _internal_kv_get(key, namespace=NAMESPACE)
            if raw is None:
                continue
            _internal_kv_del(key, namespace=NAMESPACE)
            message = json.loads(raw)
            epoch = message["epoch"]
            if message["tags"]:
                self._set_tags(message["tags"])
            if epoch in logged:  # a restarted worker group ran it again
                continue
            for sink in self.sinks:
                sink(epoch, message["metrics"])
            logged.add(epoch)

    def _already_logged(self) -> set[int]:
        """Epochs the run holds already: none for a new run, some for `--resume`."""
        if self._logged is None:
            steps = self.tracker.history(["global_step"])["global_step"]
            self._logged = {step for step, _ in steps}
        return self._logged

    def _set_tags(self, tags: dict[str, str]) -> None:
        self.tracker.set_tags(tags)
