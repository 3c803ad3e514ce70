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
    plugin: str = Field(
        description="The plugin's registered name (`plexa plugins` lists them); an unknown "
        "name is refused with the available ones."
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="The plugin's own keys, checked by its `Config` (listed per plugin below); "
        "unknown keys are an error.",
    )


class LoaderSpec(_Strict):
    """The DataLoader that reads a streaming data plugin's splits (in-memory splits need none)."""

    workers: int = Field(0, ge=0, description="Loader processes; 0 reads in the training process.")
    prefetch: int = Field(
        2, ge=1, description="Batches each worker reads ahead (with `workers` above 0)."
    )
    pin_memory: bool = Field(False, description="Page-locked batches, for faster copies to a GPU.")
    persistent_workers: bool = Field(
        False,
        description="Keep the loader processes between epochs (they then keep the dataset's "
        "state of the first epoch).",
    )


class DataRef(PluginRef):
    loader: LoaderSpec = Field(
        default_factory=LoaderSpec,
        description="How a streamed split is read (in-memory splits ignore it).",
    )


class OptimizerSpec(_Strict):
    name: Literal["adam", "adamw", "sgd"] = Field("adamw", description="The torch optimiser.")
    lr: float = Field(1e-3, gt=0, description="The base learning rate (schedules scale it).")
    weight_decay: float = Field(0.0, ge=0, description="The optimiser's weight decay.")
    momentum: float = Field(0.9, ge=0, lt=1, description="Momentum; sgd only.")


class SchedulerSpec(_Strict):
    """Stepped every optimiser step; `warmup_epochs` ramps the rate linearly from zero."""

    name: Literal["none", "cosine", "step", "onecycle"] = Field(
        "none",
        description="The learning-rate schedule after warm-up: constant, cosine decay to "
        "`min_lr`, a step decay by `gamma` every `step_epochs`, or one-cycle (a rise over 30% "
        "of the steps unless `warmup_epochs` is set, then cosine decay).",
    )
    warmup_epochs: float = Field(
        0.0, ge=0, description="Epochs (fractions allowed) of linear warm-up from zero."
    )
    min_lr: float = Field(0.0, ge=0, description="cosine: the rate it decays to.")
    step_epochs: int = Field(10, ge=1, description="step: decay every this many epochs.")
    gamma: float = Field(0.1, gt=0, le=1, description="step: the decay factor.")


class EarlyStoppingSpec(_Strict):
    monitor: str | None = Field(
        None, description="The metric watched; default: the checkpoint metric (`train.monitor`)."
    )
    patience: int = Field(5, ge=1, description="Epochs without improvement before stopping.")
    min_delta: float = Field(0.0, ge=0, description="The smallest change that counts as one.")


class TrainSpec(_Strict):
    max_epochs: int = Field(10, ge=1, description="Epochs to train (unless stopped early).")
    batch_size: int = Field(64, ge=1, description="Training batch size.")
    eval_batch_size: int | None = Field(
        None,
        ge=1,
        description="Validation and test batch size; default: the training batch size, at "
        "least 1024 for in-memory splits. Metrics are sums over the split, so only speed "
        "depends on it.",
    )
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec, description="The optimiser.")
    scheduler: SchedulerSpec = Field(
        default_factory=SchedulerSpec, description="The learning-rate schedule, per step."
    )
    early_stopping: EarlyStoppingSpec | None = Field(
        None, description="Stop when a metric stops improving; absent: train every epoch."
    )
    seed: int = Field(
        0, description="Seeds weights, shuffling and dropout (per epoch, so a resume matches)."
    )
    precision: Literal["32-true", "16-mixed", "bf16-mixed", "64-true"] = Field(
        "32-true", description="Lightning's numeric precision."
    )
    gradient_clip: float | None = Field(
        None, gt=0, description="Clip the gradients' norm to this; absent: no clipping."
    )
    monitor: str | None = Field(
        None,
        description="The metric that picks the best checkpoint; default: the task's (val/acc "
        "for classification, else val/loss). One ending in `loss` is minimised; any other "
        "keeps the task's direction.",
    )
    limit_batches: int | None = Field(
        None, ge=1, description="Train at most this many batches an epoch (smoke tests)."
    )


class ComputeSpec(_Strict):
    runner: str = Field(
        "local",
        min_length=1,
        description="`local`, `ray`, or a name registered with `plexa.runners.register` or "
        "the `plexa.runners` entry points; a `federated:` or `sweep:` section picks its own.",
    )
    accelerator: Literal["auto", "cpu", "gpu"] = Field(
        "auto", description="local: the device; auto is a CUDA GPU when one is visible."
    )
    devices: int | Literal["auto"] = Field(
        "auto",
        description="local: devices to train on, one process each; 2 or more train with DDP. "
        "auto: one process on CPU, Lightning's choice (every visible GPU) on GPU.",
    )
    workers: int = Field(2, ge=1, description="ray: Ray Train workers.")
    cpus_per_worker: float = Field(1.0, gt=0, description="ray: CPUs each worker reserves.")
    gpus_per_worker: float = Field(
        0.0, ge=0, description="ray: GPUs each worker reserves; above 0 trains on GPU."
    )
    address: str | None = Field(
        None,
        description="ray: the cluster to join (`ray://host:10001`, `host:6379` or `auto`); "
        "default `RAY_ADDRESS`, and without it an embedded Ray in this process.",
    )
    max_failures: int = Field(
        0, ge=-1, description="ray: worker-group restarts after a failure; -1: unlimited."
    )

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
    uri: str | None = Field(
        None,
        description="The MLflow store: `sqlite:///path.db` or an `http(s)://` "
        "server (with failover to a local store); default `MLFLOW_TRACKING_URI`, else "
        "MLflow's own default (`mlflow.db` in the working folder).",
    )
    experiment: str | None = Field(
        None, description="The MLflow experiment; default: the pipeline's name."
    )
    run_name: str | None = Field(None, description="The MLflow run's name; default: MLflow's.")
    system_metrics: bool = Field(
        True, description="Log MLflow's system metrics (CPU, memory, GPU) during the run."
    )


class QuantizeSpec(_Strict):
    """An int8 copy of the ONNX export, kept only when its test metric stays close."""

    mode: Literal["dynamic", "static"] = Field(
        description="dynamic: int8 weights, activations quantized at run time; static: int8 "
        "weights and activations, their ranges calibrated on training samples (QDQ format)."
    )
    calibration_samples: int = Field(
        256,
        ge=1,
        description="static: training samples, drawn with `train.seed`, that calibrate the "
        "activation ranges.",
    )
    max_metric_drop: float = Field(
        0.01,
        ge=0,
        description="The largest loss of the test metric (the task's: accuracy for "
        "classification, else loss) from the float export to the int8 one, both run on ONNX "
        "Runtime; beyond it the run fails.",
    )


class ExportSpec(_Strict):
    onnx: bool = Field(
        True, description="Export the best checkpoint's network to ONNX and check its parity."
    )
    register_as: str | None = Field(
        None, description="Register the ONNX model under this name in MLflow's model registry."
    )
    parity_tolerance: float = Field(
        1e-4,
        gt=0,
        description="The largest absolute difference allowed between ONNX Runtime and "
        "PyTorch on held-out inputs; above it the run fails.",
    )
    parity_samples: int = Field(
        256, ge=1, description="Test inputs the parity check runs (as a batch and row by row)."
    )
    opset: int | None = Field(
        None, ge=17, description="The ONNX opset; default: the torch exporter's."
    )
    quantize: QuantizeSpec | None = Field(
        None,
        description="Also quantize the export to int8 with ONNX Runtime, check its test metric "
        "and log and register it beside the float model; absent: float only.",
    )


# --------------------------------------------------------------------------- federated


class PartitionSpec(_Strict):
    """How the core splits the training set over clients, for any data plugin."""

    scheme: Literal["iid", "dirichlet", "shards"] = Field(
        "iid",
        description="iid: equal random shares; dirichlet: each label's samples spread over "
        "the clients in Dir(alpha) shares; shards: sorted by label, dealt as shards. The label "
        "schemes need a classification task.",
    )
    alpha: float = Field(0.5, gt=0, description="dirichlet: smaller is more skewed by label.")
    labels_per_client: int = Field(
        2,
        ge=1,
        description="shards: shards per client; sorted by label, so most clients hold about "
        "this many labels.",
    )


class PrivacySpec(_Strict):
    """Central differential privacy with fixed clipping of each client's update."""

    noise_multiplier: float = Field(
        ge=0,
        description="Gaussian noise of standard deviation noise_multiplier * clipping_norm / "
        "clients per round is added to the aggregate.",
    )
    clipping_norm: float = Field(
        gt=0, description="Each client's update is clipped to this L2 norm."
    )


class FederatedSpec(_Strict):
    """Flower rounds instead of one training run (`plexa federate`, or `plexa run`)."""

    clients: int = Field(
        10, ge=1, description="Clients: one partition (and, deployed, one SuperNode) each."
    )
    rounds: int = Field(5, ge=1, description="Rounds of local training and aggregation.")
    fraction: float = Field(
        1.0, gt=0, le=1, description="The fraction of the clients sampled each round."
    )
    local_epochs: int = Field(
        1, ge=1, description="Epochs each sampled client trains per round (not train.max_epochs)."
    )
    strategy: Literal["fedavg", "fedprox", "fedadam", "fedyogi", "fedmedian", "krum"] = Field(
        "fedavg", description="The Flower strategy that aggregates the clients' weights."
    )
    proximal_mu: float = Field(0.01, ge=0, description="fedprox: the proximal term's weight.")
    server_lr: float = Field(
        0.01, gt=0, description="fedadam, fedyogi: the server optimiser's learning rate."
    )
    byzantine: int = Field(
        0,
        ge=0,
        description="krum: malicious clients to tolerate (needs more than 2 * byzantine + 2 "
        "clients a round).",
    )
    partition: PartitionSpec = Field(
        default_factory=PartitionSpec,
        description="How the training split is divided over the clients.",
    )
    privacy: PrivacySpec | None = Field(
        None,
        description="Central differential privacy (Flower's server-side fixed clipping); "
        "absent: none.",
    )
    seed: int | None = Field(
        None, description="Seeds partitioning and client sampling; default: train.seed."
    )
    round_timeout: float = Field(
        300.0,
        gt=0,
        description="Seconds the server waits for a round's replies; a client that has not "
        "replied by then counts as failed.",
    )
    cpus_per_client: float = Field(
        1.0, gt=0, description="simulation: the Ray CPUs each client actor reserves."
    )
    gpus_per_client: float = Field(
        0.0, ge=0, description="simulation: the Ray GPUs each client actor reserves."
    )

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

    cpu: float = Field(1.0, gt=0, description="CPUs per trial.")
    gpu: float = Field(0.0, ge=0, description="GPUs per trial; 0.5 lets two trials share one.")


class SweepSpec(_Strict):
    """Architecture (and training hyperparameter) search on Ray Tune; see plexa.runners.sweep.

    `space` maps a dotted pipeline path (`model.params.channels`, `train.optimizer.lr`) to a
    plain-data domain (the format is in plexa.plugins.Architecture.search_space); it is merged
    over the architecture's own `search_space()` unless `default_space` is false, and a path set
    to null is taken out of the search. `objectives` weighs the metric, `latency_ms` (ONNX
    Runtime, batch 1, median) and `params` into one score, `objective`, that Tune follows.
    """

    trials: int = Field(8, ge=1, description="Points of the space to try.")
    search: Literal["random", "optuna", "evolution"] = Field(
        "random",
        description="Tune's random search, Optuna's TPE, or regularised evolution.",
    )
    scheduler: Literal["none", "asha", "pbt"] = Field(
        "none",
        description="none: every trial trains to the end; asha stops weak trials at its "
        "rungs; pbt (with search: random) copies good trials into weak ones and perturbs "
        "their train.* values.",
    )
    space: dict[str, Any] = Field(
        default_factory=dict,
        description="Pipeline path (`model.params.*`, `train.*`) to a domain: `{choice: "
        "[...]}`, `{uniform: [lo, hi]}`, `{loguniform: [lo, hi]}`, `{randint: [lo, hi]}`, "
        "`{each: DOMAIN, length: [min, max]}`; null drops a key of the plugin's own space.",
    )
    default_space: bool = Field(
        True,
        description="Merge `space` over the architecture plugin's `search_space()`; false: "
        "search only `space`.",
    )
    concurrency: int = Field(1, ge=1, description="Trials at a time.")
    resources: SweepResources = Field(
        default_factory=SweepResources, description="What each trial reserves on Ray."
    )
    time_budget_s: float | None = Field(
        None, gt=0, description="Stop starting and running trials after this many seconds."
    )
    metric: str | None = Field(
        None,
        description="The val/* or train/* metric searched on; default: val/acc for "
        "classification, else val/loss.",
    )
    mode: Literal["max", "min"] | None = Field(
        None, description="Maximise or minimise `metric`; default: max for */acc and */r2."
    )
    objectives: dict[str, float] = Field(
        default_factory=dict,
        description="Weights of metrics, `latency_ms` and `params` summed into one score, "
        "`objective`, that Tune follows (a negative weight penalises); empty: `metric` alone.",
    )
    grace_period: int = Field(
        1, ge=1, description="asha: epochs every trial gets before it can be stopped."
    )
    reduction_factor: int = Field(
        2, ge=2, description="asha: keep 1 in this many trials at each rung."
    )
    perturbation_interval: int = Field(
        2, ge=1, description="pbt: epochs between exploit and explore steps."
    )
    population: int = Field(8, ge=2, description="evolution: trials kept in the aging population.")
    tournament: int = Field(3, ge=1, description="evolution: members sampled to pick each parent.")
    latency_runs: int = Field(
        50,
        ge=1,
        description="Timed ONNX Runtime calls per trial (batch 1, one thread); their median "
        "is `latency_ms`.",
    )
    seed: int | None = Field(None, description="Seeds the search; default: train.seed.")

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
    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="The pipeline's name: the default MLflow experiment, and how runs and "
        "jobs are labelled.",
    )
    data: DataRef = Field(description="The data plugin, its params and its loader.")
    model: PluginRef = Field(description="The architecture plugin and its params.")
    train: TrainSpec = Field(
        default_factory=TrainSpec, description="Epochs, batches, optimiser, schedule, seed."
    )
    compute: ComputeSpec = Field(
        default_factory=ComputeSpec,
        description="Where training runs: the runner and its placement.",
    )
    tracking: TrackingSpec = Field(
        default_factory=TrackingSpec, description="The MLflow store, experiment and run."
    )
    export: ExportSpec = Field(
        default_factory=ExportSpec, description="The ONNX export, its parity check, the registry."
    )
    federated: FederatedSpec | None = Field(
        None, description="Flower rounds instead of one training run; see Federated learning."
    )
    sweep: SweepSpec | None = Field(
        None, description="An architecture search on Ray Tune; see Architecture search."
    )

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
    if data_cls is not None and data_cfg is not None:
        problems += _quantize_problems(raw, data_cls().task(data_cfg))
    problems += _sweep_problems(raw, spec, arch_cls, arch_cfg)
    if problems:
        raise ConfigError(problems, source)
    assert spec is not None and data_cfg is not None and arch_cfg is not None
    # store the resolved params (defaults filled in) so the logged pipeline is complete
    spec.data.params = data_cfg.model_dump(mode="json")
    spec.model.params = arch_cfg.model_dump(mode="json")
    return spec


def _quantize_problems(raw: Mapping[str, Any], task: str) -> list[tuple[str, str]]:
    """`export.quantize` compares test metrics, which a generator's export has none of."""
    export = raw.get("export")
    if not isinstance(export, Mapping) or export.get("quantize") is None or task != "generative":
        return []
    return [
        (
            "export.quantize",
            "the generative task has no test metric to check an int8 export against; "
            "remove export.quantize",
        )
    ]


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
