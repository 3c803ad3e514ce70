"""Progress events: the terminal view and `plexa submit`'s view (JSON lines from the job,
parsed back) show the same line for the same event."""

from __future__ import annotations

import pytest

from plexa import jobs
from plexa.events import EVENTS_ENV, Event, printer, render

EPOCH = Event(
    "epoch", 1, 5, {"train/loss": 0.5, "val/acc": 0.875, "lr": 1e-3, "epoch_seconds": 0.25}
)


def test_an_epoch_line() -> None:
    assert render(EPOCH) == "epoch   2/5  train/loss 0.5000  val/acc 0.8750  lr 1.00e-03  0.25s"


def test_a_job_prints_events_as_json_that_read_back_as_the_same_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    printed: list[str] = []
    monkeypatch.setenv(EVENTS_ENV, "json")
    printer(printed.append)(EPOCH)
    (line,) = printed
    assert line.startswith("plexa-event {")
    assert Event.from_line(f"(raylet) {line}") == EPOCH  # Ray may prefix a worker's lines
    assert jobs.readable(line) == render(EPOCH)
    assert jobs.readable("any other line") == "any other line"
    assert Event.from_line("plexa-event {not json") is None


def test_rounds_and_trials() -> None:
    metrics = {"server/test/acc": 0.5, "clients/sampled": 3, "clients/replied": 2,
               "clients/failed": 1, "round_seconds": 1.5}  # fmt: skip
    assert render(Event("round", 0, 2, metrics)) == (
        "round   1/2  server/test/acc 0.5000  clients 2/3 (1 failed)  1.50s"
    )
    trial = Event("trial", 0, 4, {"val/acc": 0.9, "epochs": 3}, "finished", "t_1")
    assert render(trial) == "trial t_1 finished after 3 epochs  val/acc 0.9"
    failed = Event("trial", 1, 4, {}, "failed", "t_2")
    assert render(failed) == "trial t_2 failed (recorded as FAILED in MLflow)"
