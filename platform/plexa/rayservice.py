"""The Ray Serve application a KubeRay RayService runs (deploy/k8s/rayservice.yaml).

A RayService names an import path and passes `args` from its serveConfigV2; this builder turns
them into the very deployment `plexa serve --ray` runs, so a cluster serves the same protocol.
The bearer token is read from PLEXA_SERVE_TOKEN (a Secret in the pod), never from the args:
serveConfigV2 is visible to anyone who can read the RayService.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plexa.errors import UserError

TOKEN_ENV = "PLEXA_SERVE_TOKEN"
CACHE_ENV = "PLEXA_SERVE_CACHE"  # where registered models are fetched to; shared by all nodes
_KEYS = {"targets", "replicas", "max_batch", "max_wait_ms", "batching", "tracking_uri"}


class ServiceArgsError(UserError, ValueError):
    """serveConfigV2's args are wrong; the message names every problem."""


@dataclass(frozen=True)
class ServiceArgs:
    targets: list[str]
    replicas: int = 1
    max_batch: int = 32
    max_wait_ms: float = 2.0
    batching: bool = True
    tracking_uri: str | None = None


def parse(args: Mapping[str, Any]) -> ServiceArgs:
    """Check serveConfigV2's `args`, reporting all problems at once with their keys."""
    known = ", ".join(sorted(_KEYS))
    problems = [f"args.{k}: unknown key (known: {known})" for k in args if k not in _KEYS]
    targets = args.get("targets")
    if (
        not isinstance(targets, list)
        or not targets
        or not all(isinstance(t, str) and t for t in targets)
    ):
        problems.append("args.targets: a non-empty list of models:/NAME/VERSION, runs or files")
    for key, kind, low in (("replicas", int, 1), ("max_batch", int, 1), ("max_wait_ms", float, 0)):
        value = args.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or value < low:
            problems.append(f"args.{key}: must be a number >= {low}, not {value!r}")
        elif kind is int and not isinstance(value, int):
            problems.append(f"args.{key}: must be a whole number, not {value!r}")
    if "batching" in args and not isinstance(args["batching"], bool):
        problems.append(f"args.batching: must be true or false, not {args['batching']!r}")
    if problems:
        raise ServiceArgsError("serveConfigV2 " + "; ".join(problems))
    return ServiceArgs(**{k: args[k] for k in _KEYS if k in args})


def app(args: dict[str, Any]):  # -> ray.serve.Application
    """Ray Serve's application builder: `import_path: plexa.rayservice:app`."""
    from plexa.serving.options import ServeOptions
    from plexa.serving.ray_serve import deployment_app
    from plexa.serving.targets import resolve_all

    parsed = parse(args)
    options = ServeOptions(
        max_batch=parsed.max_batch,
        max_wait_ms=float(parsed.max_wait_ms),
        batching=parsed.batching,
        token=os.environ.get(TOKEN_ENV) or None,
    )
    # replicas run on any node and open the file the builder fetched: fetch it into a folder
    # every node sees (the shared volume of deploy/k8s), not this node's /tmp
    cache = os.environ.get(CACHE_ENV)
    previous = tempfile.tempdir
    if cache:
        Path(cache).mkdir(parents=True, exist_ok=True)
        tempfile.tempdir = cache
    try:
        targets = resolve_all(parsed.targets, parsed.tracking_uri)
    finally:
        tempfile.tempdir = previous
    return deployment_app(targets, options, parsed.replicas)
