"""plexa: a plugin-based training platform for neural networks.

`import plexa` stays light: the plugin API is loaded on first use, and torch, Lightning, MLflow
and ONNX Runtime only inside the functions that need them.

The public API, for plugins and for code that drives plexa, is the names below (`__all__`) and
the modules in `PUBLIC_MODULES`; everything else (runners, tracking, the command) may change.
`tests/test_layers.py` holds plexa's own plugins to it.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

PUBLIC_MODULES = (
    "plexa",
    "plexa.plugins",  # Architecture, DataPlugin, ..., DataSplits, Split, Stream, Batch, RayDataset
    "plexa.config",  # the pipeline's spec classes (TrainSpec, ...), load_pipeline, validate
    "plexa.errors",  # UserError, DataError, ... and their exit codes
    "plexa.artifacts",  # log_image: what a plugin logs into the run it trains in
    "plexa.splits",  # seeded train/val/test splits and standardisation for data plugins
    "plexa.optim",  # the optimisers and schedules a pipeline names, for modules that step
    "plexa.imagegen",  # sample grids and DDPM sampling for generative plugins
    "plexa.scoring",  # the digits scorer generative plugins report against
)

_LAZY = {
    "Architecture": "plexa.plugins",
    "Batch": "plexa.plugins",
    "DataPlugin": "plexa.plugins",
    "PluginConfig": "plexa.plugins",
    "DataSpec": "plexa.plugins",
    "DataSplits": "plexa.plugins",
    "Split": "plexa.plugins",
    "Stream": "plexa.plugins",
    "RayDataset": "plexa.plugins",
    "architecture": "plexa.plugins",
    "data": "plexa.plugins",
    "PluginError": "plexa.plugins",
    "load_pipeline": "plexa.config",
    "ConfigError": "plexa.config",
    "run": "plexa.orchestrator",
    "RunResult": "plexa.runners",
    # the error hierarchy (plexa.errors): what a plugin raises for bad data, what callers catch
    "PlexaError": "plexa.errors",
    "UserError": "plexa.errors",
    "DataError": "plexa.errors",
    "NotFoundError": "plexa.errors",
    "UnreachableError": "plexa.errors",
    "RunFailed": "plexa.errors",
    "Interrupted": "plexa.errors",
}

__all__ = [
    "Architecture",
    "Batch",
    "ConfigError",
    "DataError",
    "DataPlugin",
    "DataSpec",
    "DataSplits",
    "Interrupted",
    "NotFoundError",
    "PlexaError",
    "PluginConfig",
    "PluginError",
    "RayDataset",
    "RunFailed",
    "RunResult",
    "Split",
    "Stream",
    "UnreachableError",
    "UserError",
    "__version__",
    "architecture",
    "data",
    "load_pipeline",
    "run",
]

if TYPE_CHECKING:
    from plexa.config import ConfigError, load_pipeline
    from plexa.errors import (
        DataError,
        Interrupted,
        NotFoundError,
        PlexaError,
        RunFailed,
        UnreachableError,
        UserError,
    )
    from plexa.orchestrator import run
    from plexa.plugins import (
        Architecture,
        Batch,
        DataPlugin,
        DataSpec,
        DataSplits,
        PluginConfig,
        PluginError,
        RayDataset,
        Split,
        Stream,
        architecture,
        data,
    )
    from plexa.runners import RunResult


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'plexa' has no attribute '{name}'")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
