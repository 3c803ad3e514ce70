"""Learning-rate schedules: warm-up, then cosine, step or one-cycle, as pure functions of step."""

from __future__ import annotations

import math

import pytest

from plexa.config import SchedulerSpec
from plexa.optim import lr_factor


def curve(total: int = 100, per_epoch: int = 10, base: float = 0.1, **spec) -> list[float]:
    s = SchedulerSpec(**spec)
    return [lr_factor(step, s, total, per_epoch, base) for step in range(total)]


def test_warmup_rises_linearly_to_the_base_rate() -> None:
    f = curve(name="none", warmup_epochs=2)
    assert f[:20] == pytest.approx([(i + 1) / 20 for i in range(20)])
    assert set(f[20:]) == {1.0}


def test_cosine_falls_from_the_base_rate_to_min_lr() -> None:
    f = curve(name="cosine", warmup_epochs=1, min_lr=0.001)
    assert f[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:], strict=False))
    assert f[-1] == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 89 / 90)))
    assert lr_factor(100, SchedulerSpec(name="cosine", min_lr=0.001), 100, 10, 0.1) == (
        pytest.approx(0.01)
    )


def test_step_decays_by_gamma_every_step_epochs() -> None:
    f = curve(name="step", step_epochs=3, gamma=0.5)
    assert f[0] == f[29] == 1.0
    assert f[30] == f[59] == 0.5
    assert f[60] == 0.25


def test_one_cycle_rises_for_30_percent_then_anneals() -> None:
    f = curve(name="onecycle")
    peak = max(range(100), key=f.__getitem__)
    assert peak == 29 and f[peak] == pytest.approx(1.0)
    assert f[0] == pytest.approx(1 / 30) and f[-1] < 0.01
