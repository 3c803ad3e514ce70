"""Runners turn a validated pipeline into a trained, tracked and exported model.

One contract (`plexa.runners.base.Runner`), one implementation per mode, looked up by name:
`local` (Lightning on this machine, DDP included), `ray` (Ray Train workers), `federated`
(Flower rounds) and `sweep` (Ray Tune trials). Every runner returns the same `RunResult`.
A third party adds one with `register` as a call or a decorator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar, overload

from plexa import runner_registry
from plexa.config import PipelineSpec
from plexa.errors import RunInterrupted, UserError
from plexa.runners.base import Job, Runner, RunResult, Trained

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "Job",
    "RunInterrupted",
    "RunResult",
    "Runner",
    "Trained",
    "for_pipeline",
    "get",
    "names",
    "register",
]

R = TypeVar("R", bound=type[Runner])


@overload
def register(name: str, cls: R) -> R: ...
@overload
def register(name: str, cls: None = None) -> Callable[[R], R]: ...
def register(name: str, cls: R | None = None) -> R | Callable[[R], R]:
    """Register a runner class under `name`: `register("mine", Mine)` or `@register("mine")`.
    An installed package declares it instead, as an entry point of the group `plexa.runners`."""

    def add(runner: R) -> R:
        if not (isinstance(runner, type) and issubclass(runner, Runner)):
            raise TypeError(f"runner '{name}' must subclass plexa.runners.base.Runner")
        runner_registry.register(name, runner)
        return runner

    return add(cls) if cls is not None else add


def names() -> list[str]:
    return runner_registry.names()


def get(name: str) -> Runner:
    """A new runner of that name; an unknown name lists the known ones."""
    cls = runner_registry.load(name)
    if cls is None:
        raise UserError(f"unknown runner '{name}'; known runners: {', '.join(names())}")
    if not (isinstance(cls, type) and issubclass(cls, Runner)):
        raise UserError(f"runner '{name}' ({cls!r}) does not subclass plexa.runners.base.Runner")
    return cls()


def name_for(spec: PipelineSpec) -> str:
    """The runner a pipeline asks for: its `federated:` or `sweep:` section, else
    `compute.runner`."""
    if spec.federated is not None:
        return "federated"
    if spec.sweep is not None:
        return "sweep"
    return spec.compute.runner


def for_pipeline(spec: PipelineSpec) -> Runner:
    return get(name_for(spec))
