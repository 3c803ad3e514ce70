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


def test_adam_takes_torchs_fused_kernel_where_it_can() -> None:
    """plexa's Adam and AdamW step with torch's fused kernel (a tenth of the digits CNN's step
    on CPU, see `plexa.optim._fusable`) and move the weights as the default step does."""
    import torch

    from plexa.config import OptimizerSpec
    from plexa.optim import make_optimizer

    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    for name in ("adam", "adamw"):
        optimizer = make_optimizer(net.parameters(), OptimizerSpec(name=name, lr=0.01))
        assert optimizer.defaults["fused"] is True, name
        # its step moves the weights as torch's default step does
        x = torch.randn(16, 4)
        before = [p.detach().clone() for p in net.parameters()]
        net(x).pow(2).mean().backward()
        optimizer.step()
        fused = [p.detach().clone() for p in net.parameters()]
        with torch.no_grad():
            for p, b in zip(net.parameters(), before, strict=True):
                p.copy_(b)
        plain = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
        plain(net.parameters(), lr=0.01, weight_decay=optimizer.defaults["weight_decay"]).step()
        for a, b in zip(fused, net.parameters(), strict=True):
            torch.testing.assert_close(a, b.detach())
        net.zero_grad()
    # parameters the fused kernel cannot take leave torch its default
    whole = [torch.zeros(3, requires_grad=True), torch.zeros(2, dtype=torch.int64)]
    assert make_optimizer(whole, OptimizerSpec(name="adam", lr=0.01)).defaults["fused"] is None
