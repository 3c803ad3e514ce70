"""Plugin contracts, the two registries, and entry-point discovery.

Discovery reads entry-point metadata only; a plugin's module is imported the first time a
pipeline (or `plexa plugins`) asks for it, so one broken plugin never breaks the others.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any, ClassVar, Generic, NamedTuple, TypeVar

from pydantic import BaseModel, ConfigDict

from plexa.errors import NotFoundError, UserError


class PluginConfig(BaseModel):
    """Base of every plugin's own `Config`: unknown keys are an error, values are checked."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class DataSpec:
    """What a model needs to know about its data, and what an export needs to describe it.

    `normalisation` says how raw inputs were turned into the arrays the model sees
    (`x = (raw - mean) / std`); a server applies it to raw requests.
    """

    task: str
    input_shape: tuple[int, ...]  # one sample, without the batch dimension
    input_dtype: str = "float32"
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None
    output_dim: int | None = None  # regression targets per sample
    feature_names: tuple[str, ...] | None = None
    target_names: tuple[str, ...] | None = None
    normalisation: dict[str, Any] = field(default_factory=dict)
    target_normalisation: dict[str, Any] = field(default_factory=dict)

    @property
    def output_size(self) -> int:
        if self.task in ("classification", "language-model"):  # a class per token
            if not self.num_classes:
                raise ValueError(f"a {self.task} DataSpec needs num_classes")
            return self.num_classes
        return self.output_dim or 1


@dataclass(frozen=True)
class Split:
    """One split held in memory: inputs `x` and targets `y` as numpy arrays."""

    x: Any
    y: Any

    def __len__(self) -> int:
        return len(self.x)


@dataclass(frozen=True)
class RayDataset:
    """A Ray Data dataset as a streamed split's source (`Stream(RayDataset(...))`).

    Its rows are dicts of columns. `features` names the input column (each value is one
    sample's input, of any shape) or several columns whose values are flattened and joined, in
    that order, into one input vector; `label` names the target column. Only these columns are
    read. `shuffle_buffer` shuffles the training split in each epoch within a buffer of that
    many rows (Ray Data's local shuffle, seeded by the run's seed and the epoch); without it
    rows come in Ray Data's order.
    """

    dataset: Any  # a ray.data.Dataset
    features: str | tuple[str, ...]
    label: str
    shuffle_buffer: int | None = None
    # what the core has read of it once (its row count, its label column)
    _cache: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.features or not self.label:
            raise ValueError("a RayDataset names its feature column(s) and its label column")
        if self.label in self.columns[:-1]:
            raise ValueError(f"column '{self.label}' cannot be both a feature and the label")
        if self.shuffle_buffer is not None and self.shuffle_buffer < 1:
            raise ValueError("a RayDataset's shuffle_buffer is a number of rows, at least 1")

    @property
    def columns(self) -> list[str]:
        """The columns read: the features, then the label."""
        features = [self.features] if isinstance(self.features, str) else list(self.features)
        return [*features, self.label]

    def __len__(self) -> int:
        if "rows" not in self._cache:
            self._cache["rows"] = int(self.dataset.count())
        return int(self._cache["rows"])


class Batch(NamedTuple):
    """Samples already stacked: what a map-style streaming dataset's `__getitems__` may return
    instead of a list of `(x, y)` pairs, so a batch read at once is not split up and collated
    again. `x` has the batch first; `y` is one target per sample."""

    x: Any
    y: Any


@dataclass(frozen=True)
class Stream:
    """One split read from storage as training needs it, never held whole in memory.

    `dataset` is a PyTorch dataset whose samples are `(x, y)` pairs: map-style (random access:
    the core shuffles it by index and gives each rank its share) or an `IterableDataset` (the
    core asks it for each reader's share with `shard(index, count)` when it has that method,
    and otherwise keeps every `count`-th sample). A map-style dataset that reads many samples
    at once more cheaply than one by one (rows of one Parquet row group) defines PyTorch's
    batched fetch, `__getitems__(indices)`, and may return a `Batch`; the core's loaders and
    `iter_batches` use it. `labels`, the split's targets alone, lets the
    core partition it (federated clients) without reading a single input.

    `dataset` may also be a `RayDataset`, a Ray Data dataset with its feature and label
    columns; the plugin then says so in `DataPlugin.uses_ray`. On the ray runner each Ray
    Train worker reads its share through Ray Data's streaming split (`get_dataset_shard`; every
    worker gets as many rows, so up to `workers - 1` rows of a split are left out); elsewhere it
    is read whole in the training process, on one device. Ray Data sets the order (see
    `RayDataset.shuffle_buffer`), so a run resumed mid-epoch skips as many batches as it had
    trained on, not the same rows, and `block` does not apply. Without `labels` the core reads
    the label column alone when it needs the targets (the runs' dataset inputs). Federated
    pipelines cannot use it: a Ray Data dataset has no row index to partition by.
    """

    dataset: Any
    labels: Any = None
    # samples that are read together (a Parquet row group, a shard file): a training epoch
    # then shuffles blocks of this many neighbouring indices, and the samples within each
    block: int | None = None

    def __len__(self) -> int:
        if self.labels is not None:
            return len(self.labels)
        return len(self.dataset)


@dataclass(frozen=True)
class DataSplits:
    """A data plugin's splits: each in memory (`Split`, the fast path) or streamed (`Stream`,
    over a PyTorch dataset or a `RayDataset`)."""

    spec: DataSpec
    train: Split | Stream
    val: Split | Stream
    test: Split | Stream
    source: str | None = None  # the file, folder or URI read: the runs' dataset inputs name it


class Plugin:
    """Common base: a name given at registration and a `Config` the plugin owns."""

    name: ClassVar[str] = ""
    Config: ClassVar[type[PluginConfig]] = PluginConfig


class Architecture(Plugin):
    """A network family.

    `build` returns a plain `nn.Module` (the core wraps it in its task's LightningModule: loss,
    metrics, optimiser) or a full `LightningModule` that brings its own training step.
    """

    tasks: ClassVar[frozenset[str]] = frozenset({"classification", "regression"})

    def build(self, config: Any, data: DataSpec) -> Any:
        raise NotImplementedError

    def supported_tasks(self, config: Any) -> frozenset[str]:
        """The task kinds this configuration can do (validation refuses other pairings)."""
        return self.tasks

    def search_space(self) -> dict[str, Any]:
        """The default architecture-search space as plain data (YAML-able, no Ray objects).

        Keys are this plugin's `Config` fields; a pipeline's `sweep:` searches them as
        `model.params.<key>`, and may narrow, widen or drop each one. A value is one of:

        - `{"choice": [a, b, ...]}`: one of the values; values may be lists
          (`{"choice": [[16, 32], [32, 64]]}` picks a whole channel list);
        - `{"uniform": [low, high]}` or `{"loguniform": [low, high]}`: a float (log: low > 0);
        - `{"randint": [low, high]}`: an integer, both ends included;
        - a list of domains or constants, searched item by item (fixed depth, per-layer widths:
          `[{"choice": [16, 32]}, {"choice": [32, 64]}]`);
        - `{"each": DOMAIN, "length": [min, max]}`: a list of min..max items, each drawn from
          DOMAIN (searched depth and per-layer widths);
        - anything else is a constant.

        Every choice and both ends of every range must pass this plugin's `Config`: validation
        checks them and refuses the pipeline otherwise. Return {} when there is nothing to
        search. Example: {"hidden": {"each": {"choice": [64, 128]}, "length": [1, 3]},
        "dropout": {"uniform": [0.0, 0.5]}}. See plexa.sweep.space.
        """
        return {}

    def export_module(self, model: Any) -> Any:
        """The part of a trained model that goes to ONNX (a generator, a decoder, the whole net)."""
        return model


class DataPlugin(Plugin):
    """A data set. `task` must be cheap: validation calls it without loading anything."""

    def task(self, config: Any) -> str:
        raise NotImplementedError

    def uses_ray(self, config: Any) -> bool:
        """True when `load` returns Ray Data splits (`RayDataset`) for this configuration.
        Cheap, like `task`: a runner asks before loading, to start (or join) Ray first and,
        on the ray runner, to hand the datasets to Ray Train."""
        return False

    def load(self, config: Any, seed: int) -> DataSplits:
        raise NotImplementedError


# --------------------------------------------------------------------------- errors


class PluginError(UserError):
    """Any problem with a plugin; the message names the plugin."""


class PluginNotFoundError(PluginError, NotFoundError, KeyError):
    def __init__(self, kind: str, name: str, available: list[str]) -> None:
        self.kind, self.name, self.available = kind, name, available
        listed = ", ".join(available) or "none"
        super().__init__(f"unknown {kind} plugin '{name}'; available: {listed}")

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class DuplicatePluginError(PluginError):
    pass


class PluginLoadError(PluginError):
    """A plugin that failed to import or breaks the contract (flake8's FailedToLoadPlugin)."""

    def __init__(self, kind: str, name: str, distribution: str, cause: BaseException) -> None:
        self.kind, self.name, self.distribution, self.cause = kind, name, distribution, cause
        super().__init__(
            f"{kind} plugin '{name}' from distribution '{distribution}' failed to load: "
            f"{type(cause).__name__}: {cause}"
        )


# --------------------------------------------------------------------------- registry

# a registry's base (Architecture, DataPlugin); covariant: a registry only hands classes out,
# and register() takes any plugin class and checks it at run time
P_co = TypeVar("P_co", bound=Plugin, covariant=True)
C = TypeVar("C", bound=Plugin)  # the class being registered


@dataclass
class PluginInfo:
    name: str
    kind: str
    distribution: str
    version: str
    status: str  # "ok" or the load error


@dataclass
class _Entry(Generic[P_co]):
    name: str
    distribution: str
    version: str
    entry_point: EntryPoint | None = None
    cls: type[P_co] | None = None


def _dist_of(ep: EntryPoint) -> tuple[str, str]:
    dist = ep.dist
    return (dist.metadata["Name"], dist.version) if dist is not None else ("unknown", "")


class Registry(Generic[P_co]):
    """Name -> plugin class for one kind, fed by decorators and by an entry-point group."""

    def __init__(self, kind: str, group: str, base: type[P_co]) -> None:
        self.kind, self.group, self.base = kind, group, base
        self._entries: dict[str, _Entry[P_co]] = {}
        self._duplicates: dict[str, list[str]] = {}
        self._discovered = False

    # discovery reads metadata only: no plugin module is imported here
    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        for ep in entry_points(group=self.group):
            dist, version = _dist_of(ep)
            known = self._entries.get(ep.name)
            if known is None:
                self._entries[ep.name] = _Entry(ep.name, dist, version, entry_point=ep)
            elif known.entry_point is not None and known.entry_point.value == ep.value:
                continue  # the same distribution seen twice on sys.path
            else:
                self._duplicates.setdefault(ep.name, [known.distribution]).append(dist)

    def register(
        self, name: str, cls: type[C], *, override: bool = False, distribution: str = "__main__"
    ) -> type[C]:
        self._discover()
        checked = self._check_contract(name, cls)
        known = self._entries.get(name)
        if known is not None and not override and not self._same(known, cls):
            raise DuplicatePluginError(
                f"{self.kind} plugin '{name}' is already registered by '{known.distribution}'; "
                "pass override=True to replace it"
            )
        if known is not None and self._same(known, cls):
            distribution, version = known.distribution, known.version
        else:
            version = ""
        cls.name = name
        self._entries[name] = _Entry(name, distribution, version, cls=checked)
        self._duplicates.pop(name, None)
        return cls

    @staticmethod
    def _same(entry: _Entry[Any], cls: type) -> bool:
        """A plugin module that decorates itself and is also named by its entry point."""
        if entry.cls is cls:
            return True
        ep = entry.entry_point
        return ep is not None and ep.value == f"{cls.__module__}:{cls.__qualname__}"

    def _check_contract(self, name: str, cls: Any) -> type[P_co]:
        """`cls` itself, once it is known to be a plugin of this registry's kind."""
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise TypeError(f"{self.kind} plugin '{name}' must subclass plexa.{self.base.__name__}")
        config = getattr(cls, "Config", None)
        if not (isinstance(config, type) and issubclass(config, PluginConfig)):
            raise TypeError(f"{self.kind} plugin '{name}' needs a Config subclassing PluginConfig")
        return cls

    def names(self) -> list[str]:
        self._discover()
        return sorted(self._entries)

    def get(self, name: str) -> type[P_co]:
        self._discover()
        if name in self._duplicates:
            dists = ", ".join(sorted(self._duplicates[name]))
            raise DuplicatePluginError(
                f"{self.kind} plugin '{name}' is provided by more than one distribution ({dists}); "
                "uninstall one of them"
            )
        entry = self._entries.get(name)
        if entry is None:
            raise PluginNotFoundError(self.kind, name, self.names())
        if entry.cls is None:
            assert entry.entry_point is not None
            try:
                cls = self._check_contract(name, entry.entry_point.load())
            except Exception as exc:  # any failure inside a third-party module
                raise PluginLoadError(self.kind, name, entry.distribution, exc) from exc
            cls.name = name
            entry.cls = cls
        return entry.cls

    def source(self, name: str) -> tuple[str, str]:
        """(distribution, version) a plugin comes from; a decorated one names its module."""
        self.get(name)
        entry = self._entries[name]
        return entry.distribution, entry.version or "unknown"

    def create(self, name: str) -> P_co:
        return self.get(name)()

    def info(self) -> Iterator[PluginInfo]:
        """Load every plugin to report its status; a failure is reported, never raised."""
        for name in self.names():
            entry = self._entries[name]
            try:
                self.get(name)
                status = "ok"
            except PluginError as exc:
                status = str(exc)
            yield PluginInfo(name, self.kind, entry.distribution, entry.version, status)

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)


architectures = Registry("architecture", "plexa.architectures", Architecture)
datasets = Registry("data", "plexa.data", DataPlugin)


def _decorator(registry: Registry[Any], name: str, override: bool) -> Callable[[type[C]], type[C]]:
    def register(cls: type[C]) -> type[C]:
        return registry.register(name, cls, override=override, distribution=cls.__module__)

    return register


def architecture(name: str, *, override: bool = False) -> Callable[[type[C]], type[C]]:
    """Class decorator: `@plexa.architecture("my-cnn")`."""
    return _decorator(architectures, name, override)


def data(name: str, *, override: bool = False) -> Callable[[type[C]], type[C]]:
    """Class decorator: `@plexa.data("my-data")`."""
    return _decorator(datasets, name, override)


def all_plugins() -> list[PluginInfo]:
    return [*architectures.info(), *datasets.info()]
