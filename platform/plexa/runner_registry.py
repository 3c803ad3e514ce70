"""Runner names, found without importing the runners: entry points of the group
`plexa.runners` (plexa's own are declared in its pyproject, a third party declares its own),
and classes registered at run time. `plexa.config` checks `compute.runner` against these
names; `plexa.runners.get` imports the one a pipeline names."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

GROUP = "plexa.runners"
_REGISTERED: dict[str, Any] = {}


def _declared() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def register(name: str, cls: Any) -> None:
    _REGISTERED[name] = cls


def names() -> list[str]:
    return sorted({*_declared(), *_REGISTERED})


def load(name: str) -> Any | None:
    """The runner class of that name, importing its module if it is only declared."""
    if name not in _REGISTERED:
        declared = _declared().get(name)
        if declared is None:
            return None
        _REGISTERED.setdefault(name, declared.load())
    return _REGISTERED[name]
