"""The pipeline schema: YAML loading, `a.b=c` overrides, and validation that reports every
problem at once, each with its path (`model.params.channels: ...`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from plexa.plugins import PluginConfig, PluginError, Registry, architectures, datasets


class ConfigError(ValueError):
    """An invalid pipeline: every problem found, each as (path, message)."""

    def __init__(self, problems: list[tuple[str, str]], source: str = "pipeline") -> None:
        self.problems, self.source = problems, source
        lines = [f"  {path}: {msg}" if path else f"  {msg}" for path, msg in problems]
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(f"{source}: {len(problems)} {noun}\n" + "\n".join(lines))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PluginRef(_Strict):
    plugin: str
    params: dict[str, Any] = Field(default_factory=dict)


class OptimizerSpec(_Strict):
    name: Literal["adam", "adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)  # sgd only


class SchedulerSpec(_Strict):
    """Stepped every optimiser step; `warmup_epochs` ramps the rate linearly from zero."""

    name: Literal["none", "cosine", "step", "onecycle"] = "none"
    warmup_epochs: float = Field(0.0, ge=0)
    min_lr: float = Field(0.0, ge=0)  # cosine floor
    step_epochs: int = Field(10, ge=1)  # step: decay every this many epochs
    gamma: float = Field(0.1, gt=0, le=1)  # step: decay factor


class EarlyStoppingSpec(_Strict):
    monitor: str | None = None  # default: the checkpoint metric
    patience: int = Field(5, ge=1)
    min_delta: float = Field(0.0, ge=0)


class TrainSpec(_Strict):
    max_epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)
    # validation and test batches; default: the training batch size, at least 1024 (metrics
    # are sums over the split, so only speed depends on it)
    eval_batch_size: int | None = Field(None, ge=1)
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    early_stopping: EarlyStoppingSpec | None = None
    seed: int = 0
    precision: Literal["32-true", "16-mixed", "bf16-mixed", "64-true"] = "32-true"
    gradient_clip: float | None = Field(None, gt=0)
    monitor: str | None = None  # checkpoint metric; default val/acc (classification) or val/loss
    limit_batches: int | None = Field(None, ge=1)  # per epoch, for smoke tests


class ComputeSpec(_Strict):
    runner: Literal["local", "ray"] = "local"
    # local: Lightning on this machine
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    devices: int | Literal["auto"] = "auto"
    # ray: Ray Train workers on an embedded Ray (no address) or a cluster
    workers: int = Field(2, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    address: str | None = None  # ray://host:10001, host:6379, or "auto"; default RAY_ADDRESS
    max_failures: int = Field(0, ge=-1)  # worker-group restarts; -1: unlimited

    @model_validator(mode="after")
    def _positive(self) -> ComputeSpec:
        if isinstance(self.devices, int) and self.devices < 1:
            raise ValueError("devices must be at least 1 or 'auto'")
        return self


class TrackingSpec(_Strict):
    uri: str | None = None  # default: MLFLOW_TRACKING_URI, else MLflow's own default
    experiment: str | None = None  # default: the pipeline name
    run_name: str | None = None
    system_metrics: bool = True


class ExportSpec(_Strict):
    onnx: bool = True
    register_as: str | None = None
    parity_tolerance: float = Field(1e-4, gt=0)
    parity_samples: int = Field(256, ge=1)
    opset: int | None = Field(None, ge=17)


class PipelineSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    data: PluginRef
    model: PluginRef
    train: TrainSpec = Field(default_factory=TrainSpec)
    compute: ComputeSpec = Field(default_factory=ComputeSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    export: ExportSpec = Field(default_factory=ExportSpec)

    def data_config(self) -> PluginConfig:
        return datasets.get(self.data.plugin).Config(**self.data.params)

    def model_config_(self) -> PluginConfig:
        return architectures.get(self.model.plugin).Config(**self.model.params)

    def task(self) -> str:
        return datasets.create(self.data.plugin).task(self.data_config())

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# --------------------------------------------------------------------------- loading


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError([("", f"cannot read pipeline: {exc.strerror}")], str(path)) from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        msg = f"malformed YAML at {where}: {exc.problem or exc.context}"
        raise ConfigError([("", msg)], str(path)) from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([("", f"a pipeline is a mapping, not {type(raw).__name__}")], str(path))
    return raw


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """`train.max_epochs=2`, `model.params.channels=[16,32]`: values are parsed as YAML."""
    problems: list[tuple[str, str]] = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            problems.append((item, "an override is key.path=value"))
            continue
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        node = raw
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                problems.append((key, f"cannot set a key under '{where}', which is not a mapping"))
                break
            node = child
        else:
            node[parts[-1]] = value
    if problems:
        raise ConfigError(problems, "overrides")
    return raw


def _loc(loc: Iterable[Any]) -> str:
    return ".".join(str(p) for p in loc)


def _pydantic_problems(exc: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    out = []
    for err in exc.errors():
        path = _loc((*([prefix] if prefix else []), *err["loc"]))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        out.append((path, msg))
    return out


def _check_plugin(
    registry: Registry,
    ref: Any,
    where: str,
    problems: list[tuple[str, str]],
    context: dict[str, Any],
) -> tuple[type | None, PluginConfig | None]:
    if not isinstance(ref, Mapping) or not isinstance(ref.get("plugin"), str):
        return None, None
    try:
        cls = registry.get(ref["plugin"])
    except PluginError as exc:
        problems.append((f"{where}.plugin", str(exc)))
        return None, None
    params = ref.get("params") or {}
    if not isinstance(params, Mapping):
        return cls, None  # the schema reports it
    try:
        return cls, cls.Config.model_validate(params, context=context)
    except ValidationError as exc:
        for path, msg in _pydantic_problems(exc, f"{where}.params"):
            problems.append((path, f"{msg} ({registry.kind} plugin '{ref['plugin']}')"))
        return cls, None


def validate(
    raw: Mapping[str, Any], source: str = "pipeline", base_dir: Path | None = None
) -> PipelineSpec:
    """Check the whole spec and each plugin's params; raise one ConfigError with all problems.

    Plugins see `base_dir` (the pipeline file's folder) in their validation context, so a
    relative file path in params means the same wherever plexa is started from.
    """
    context = {"base_dir": (base_dir or Path.cwd()).absolute()}
    problems: list[tuple[str, str]] = []
    spec: PipelineSpec | None = None
    try:
        spec = PipelineSpec.model_validate(raw)
    except ValidationError as exc:
        problems += _pydantic_problems(exc)

    data_cls, data_cfg = _check_plugin(datasets, raw.get("data"), "data", problems, context)
    arch_cls, arch_cfg = _check_plugin(architectures, raw.get("model"), "model", problems, context)
    if data_cls is not None and data_cfg is not None and arch_cls is not None:
        task = data_cls().task(data_cfg)
        if task not in arch_cls.tasks:
            supported = ", ".join(sorted(arch_cls.tasks))
            problems.append(
                (
                    "model.plugin",
                    f"architecture '{arch_cls.name}' does not support the {task} task of data "
                    f"'{data_cls.name}' (it supports: {supported})",
                )
            )
    if problems:
        raise ConfigError(problems, source)
    assert spec is not None and data_cfg is not None and arch_cfg is not None
    # store the resolved params (defaults filled in) so the logged pipeline is complete
    spec.data.params = data_cfg.model_dump(mode="json")
    spec.model.params = arch_cfg.model_dump(mode="json")
    return spec


def load_pipeline(path: str | Path, overrides: Iterable[str] = ()) -> PipelineSpec:
    raw = apply_overrides(read_yaml(path), overrides)
    return validate(raw, str(path), Path(path).parent)
