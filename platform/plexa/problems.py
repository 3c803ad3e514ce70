"""Config problems as (dotted path, message) pairs, so that every problem of a pipeline is
reported in one pass with its path, whichever schema (the pipeline's, a plugin's Config, a
search space) found it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError


def dotted(loc: Iterable[Any]) -> str:
    return ".".join(str(p) for p in loc)


def pydantic_problems(exc: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    out = []
    for err in exc.errors():
        path = dotted((*([prefix] if prefix else []), *err["loc"]))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        out.append((path, msg))
    return out
