"""The pipeline schema: YAML loading, `a.b=c` overrides, and validation that reports every
problem at once, each with its path (`model.params.channels: ...`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from plexa.errors import UserError
from plexa.plugins import (
    Architecture,
    Plugin,
    PluginConfig,
    PluginError,
    Registry,
    architectures,
    datasets,
)
from plexa.problems import pydantic_problems


class ConfigError(UserError, ValueError):
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


class LoaderSpec(_Strict):
    """The DataLoader that reads a streaming data plugin's splits (in-memory splits need none)."""

    workers: int = Field(0, ge=0)  # loader processes; 0 reads in the training process
    prefetch: int = Field(2, ge=1)  # batches each worker reads ahead
    pin_memory: bool = False  # page-locked batches for faster copies to a GPU
    # keep the workers between epochs (they then keep the dataset's state of the first one)
    persistent_workers: bool = False


class DataRef(PluginRef):
    loader: LoaderSpec = Field(default_factory=LoaderSpec)


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
    # local, ray, or the name a runner was registered under (plexa.runners.register); a
    # federated: or sweep: section picks its own runner
    runner: str = Field("local", min_length=1)
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

    @field_validator("runner")
    @classmethod
    def _known_runner(cls, name: str) -> str:
        from plexa import runner_registry

        known = runner_registry.names()
        if name not in known:
            raise ValueError(f"unknown runner '{name}'; known runners: {', '.join(known)}")
        return name


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


# --------------------------------------------------------------------------- federated


class PartitionSpec(_Strict):
    """How the core splits the training set over clients, for any data plugin."""

    scheme: Literal["iid", "dirichlet", "shards"] = "iid"
    alpha: float = Field(0.5, gt=0)  # dirichlet: smaller is more skewed by label
    labels_per_client: int = Field(2, ge=1)  # shards: k labels per client


class PrivacySpec(_Strict):
    """Central differential privacy with fixed clipping of each client's update."""

    noise_multiplier: float = Field(ge=0)
    clipping_norm: float = Field(gt=0)


class FederatedSpec(_Strict):
    """Flower rounds instead of one training run (`plexa federate`, or `plexa run`)."""

    clients: int = Field(10, ge=1)
    rounds: int = Field(5, ge=1)
    fraction: float = Field(1.0, gt=0, le=1)  # of the clients, sampled each round
    local_epochs: int = Field(1, ge=1)
    strategy: Literal["fedavg", "fedprox", "fedadam", "fedyogi", "fedmedian", "krum"] = "fedavg"
    proximal_mu: float = Field(0.01, ge=0)  # fedprox
    server_lr: float = Field(0.01, gt=0)  # fedadam, fedyogi: the server optimiser's rate
    byzantine: int = Field(0, ge=0)  # krum: malicious clients to tolerate
    partition: PartitionSpec = Field(default_factory=PartitionSpec)
    privacy: PrivacySpec | None = None
    seed: int | None = None  # default: train.seed
    round_timeout: float = Field(300.0, gt=0)  # seconds to wait for a round's replies
    cpus_per_client: float = Field(1.0, gt=0)  # simulation: Ray resources per client
    gpus_per_client: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> FederatedSpec:
        sampled = max(1, round(self.fraction * self.clients))
        if self.strategy == "krum" and sampled <= 2 * self.byzantine + 2:
            raise ValueError(
                f"krum needs more than 2 * byzantine + 2 = {2 * self.byzantine + 2} clients per "
                f"round; fraction * clients gives {sampled}"
            )
        return self


# --------------------------------------------------------------------------- sweep


class SweepResources(_Strict):
    """What one trial reserves on the Ray cluster (or the embedded Ray)."""

    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)


class SweepSpec(_Strict):
    """Architecture (and training hyperparameter) search on Ray Tune; see plexa.runners.sweep.

    `space` maps a dotted pipeline path (`model.params.channels`, `train.optimizer.lr`) to a
    plain-data domain (the format is in plexa.plugins.Architecture.search_space); it is merged
    over the architecture's own `search_space()` unless `default_space` is false, and a path set
    to null is taken out of the search. `objectives` weighs the metric, `latency_ms` (ONNX
    Runtime, batch 1, median) and `params` into one score, `objective`, that Tune follows.
    """

    trials: int = Field(8, ge=1)
    search: Literal["random", "optuna", "evolution"] = "random"
    scheduler: Literal["none", "asha", "pbt"] = "none"
    space: dict[str, Any] = Field(default_factory=dict)
    default_space: bool = True
    concurrency: int = Field(1, ge=1)
    resources: SweepResources = Field(default_factory=SweepResources)
    time_budget_s: float | None = Field(None, gt=0)
    metric: str | None = None  # default: val/acc for classification, else val/loss
    mode: Literal["max", "min"] | None = None  # default: max for */acc and */r2, else min
    objectives: dict[str, float] = Field(default_factory=dict)
    grace_period: int = Field(1, ge=1)  # asha: epochs every trial gets before it can be stopped
    reduction_factor: int = Field(2, ge=2)  # asha: keep 1 in this many at each rung
    perturbation_interval: int = Field(2, ge=1)  # pbt: epochs between exploit/explore steps
    population: int = Field(8, ge=2)  # evolution: trials kept in the aging population
    tournament: int = Field(3, ge=1)  # evolution: members sampled to pick each parent
    latency_runs: int = Field(50, ge=1)  # timed ONNX Runtime calls per trial (median)
    seed: int | None = None  # default: train.seed

    @model_validator(mode="after")
    def _consistent(self) -> SweepSpec:
        if self.scheduler == "pbt" and self.search != "random":
            raise ValueError("scheduler pbt mutates a population itself; use search: random")
        if self.tournament > self.population:
            raise ValueError("tournament must not exceed population")
        if self.metric is not None and not self.metric.startswith(("val/", "train/")):
            raise ValueError(f"metric must be a val/* or train/* metric, not '{self.metric}'")
        for key, weight in self.objectives.items():
            if key not in ("latency_ms", "params") and not key.startswith(("val/", "train/")):
                raise ValueError(
                    f"objectives: '{key}' is not a metric; use val/*, train/*, latency_ms, params"
                )
            if weight == 0:
                raise ValueError(f"objectives: the weight of '{key}' is 0")
        return self


class PipelineSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    data: DataRef
    model: PluginRef
    train: TrainSpec = Field(default_factory=TrainSpec)
    compute: ComputeSpec = Field(default_factory=ComputeSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    export: ExportSpec = Field(default_factory=ExportSpec)
    federated: FederatedSpec | None = None  # Flower rounds; see plexa.runners.federated
    sweep: SweepSpec | None = None  # Ray Tune search; see plexa.runners.sweep

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


_P = TypeVar("_P", bound=Plugin)


def _check_plugin(
    registry: Registry[_P],
    ref: Any,
    where: str,
    problems: list[tuple[str, str]],
    context: dict[str, Any],
) -> tuple[type[_P] | None, PluginConfig | None]:
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
        for path, msg in pydantic_problems(exc, f"{where}.params"):
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
        problems += pydantic_problems(exc)

    data_cls, data_cfg = _check_plugin(datasets, raw.get("data"), "data", problems, context)
    arch_cls, arch_cfg = _check_plugin(architectures, raw.get("model"), "model", problems, context)
    if data_cls is not None and data_cfg is not None and arch_cls is not None:
        task = data_cls().task(data_cfg)
        # some settings narrow what a plugin can do (a transformer with full attention sees
        # the future, so it cannot be a language model)
        tasks = arch_cls().supported_tasks(arch_cfg) if arch_cfg is not None else arch_cls.tasks
        if task not in tasks:
            supported = ", ".join(sorted(tasks))
            how = "" if tasks == arch_cls.tasks else " with these params"
            problems.append(
                (
                    "model.plugin",
                    f"architecture '{arch_cls.name}'{how} does not support the {task} task of "
                    f"data '{data_cls.name}' (it supports: {supported})",
                )
            )
    fed = raw.get("federated")
    if isinstance(fed, Mapping) and data_cls is not None and data_cfg is not None:
        part = fed.get("partition")
        scheme = part.get("scheme", "iid") if isinstance(part, Mapping) else "iid"
        task = data_cls().task(data_cfg)
        if scheme in ("dirichlet", "shards") and task != "classification":
            problems.append(
                (
                    "federated.partition.scheme",
                    f"'{scheme}' partitions by label and needs a classification task; data "
                    f"'{data_cls.name}' is {task} (use iid)",
                )
            )
    problems += _sweep_problems(raw, spec, arch_cls, arch_cfg)
    if problems:
        raise ConfigError(problems, source)
    assert spec is not None and data_cfg is not None and arch_cfg is not None
    # store the resolved params (defaults filled in) so the logged pipeline is complete
    spec.data.params = data_cfg.model_dump(mode="json")
    spec.model.params = arch_cfg.model_dump(mode="json")
    return spec


def _sweep_problems(
    raw: Mapping[str, Any],
    spec: PipelineSpec | None,
    arch_cls: type[Architecture] | None,
    arch_cfg: PluginConfig | None,
) -> list[tuple[str, str]]:
    """A `sweep:` excludes `federated:`, and its space must be one the plugin accepts."""
    if raw.get("sweep") is None:
        return []
    problems = []
    if raw.get("federated") is not None:
        problems.append(("sweep", "a pipeline has at most one of federated: and sweep:"))
    if spec is not None and spec.sweep is not None and arch_cls is not None and arch_cfg:
        from plexa.sweep.space import space_problems

        problems += space_problems(spec, arch_cls)
    return problems


def load_pipeline(path: str | Path, overrides: Iterable[str] = ()) -> PipelineSpec:
    raw = apply_overrides(read_yaml(path), overrides)
    return validate(raw, str(path), Path(path).parent)
