"""Search spaces as plain data: checking them, turning them into Ray Tune domains, and turning a
sampled point back into pipeline values.

The format (also documented on `plexa.Architecture.search_space`) maps a parameter to one of:

- `{choice: [a, b, ...]}`: one of the values; a value may be any plain data, lists included;
- `{uniform: [low, high]}`, `{loguniform: [low, high]}`: a float (loguniform: low > 0);
- `{randint: [low, high]}`: an integer, both ends included;
- a list whose items are domains or constants: searched item by item (per-layer widths);
- `{each: DOMAIN, length: [min, max]}`: a list of min..max items, each drawn from DOMAIN;
- anything else (a number, a string, a list of constants): a constant.

Tune sees a flat space: `model.params.channels[1]` for an item of a list, `...#length` for
the length of an `each` list; a choice between non-scalar values is sampled as an index.
Nothing heavy is imported at module level: validation runs inside `plexa validate`.
"""

from __future__ import annotations

from collections.abc import Mapping
from copy import deepcopy
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from plexa.errors import UserError

if TYPE_CHECKING:
    from plexa.config import PipelineSpec
    from plexa.plugins import Architecture

RANGES = ("uniform", "loguniform", "randint")
KINDS = ("choice", *RANGES)
SEARCHABLE = ("model.params.", "train.")


class SpaceError(UserError, ValueError):
    """A space that cannot be searched; `problems` are (path, message) pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{p}: {m}" for p, m in problems))


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def _is_domain(node: Any) -> bool:
    return isinstance(node, Mapping) and (
        (len(node) == 1 and next(iter(node)) in KINDS) or set(node) == {"each", "length"}
    )


def is_searched(node: Any) -> bool:
    """True when the node holds at least one domain (a constant is not searched)."""
    if _is_domain(node):
        return True
    return isinstance(node, list) and any(is_searched(item) for item in node)


def structure_problems(node: Any, path: str) -> list[tuple[str, str]]:
    """Everything wrong with the shape of one node, each with its path."""
    if isinstance(node, list):
        return [p for i, item in enumerate(node) for p in structure_problems(item, f"{path}[{i}]")]
    if not isinstance(node, Mapping):
        return []
    if set(node) == {"each", "length"}:
        length = node["length"]
        if not (
            isinstance(length, list)
            and len(length) == 2
            and all(isinstance(n, int) and not isinstance(n, bool) for n in length)
            and 1 <= length[0] <= length[1]
        ):
            return [(f"{path}.length", "length is [min, max] with integers 1 <= min <= max")]
        return structure_problems(node["each"], f"{path}.each")
    if len(node) != 1 or next(iter(node)) not in KINDS:
        keys = ", ".join(map(str, node)) or "nothing"
        return [
            (
                path,
                f"unknown domain ({keys}); use one of {{choice: [...]}}, {{uniform: [lo, hi]}}, "
                "{loguniform: [lo, hi]}, {randint: [lo, hi]}, {each: ..., length: [min, max]}",
            )
        ]
    kind, args = next(iter(node.items()))
    where = f"{path}.{kind}"
    if kind == "choice":
        if not isinstance(args, list) or not args:
            return [(where, "choice needs a non-empty list of values")]
        return []
    if not (isinstance(args, list) and len(args) == 2 and all(_number(a) for a in args)):
        return [(where, f"{kind} needs [low, high], two numbers")]
    low, high = args
    if kind == "randint":
        if not all(isinstance(a, int) for a in args):
            return [(where, "randint needs two integers")]
        if low > high:
            return [(where, f"low {low} is above high {high}")]
        return []
    if low >= high:
        return [(where, f"low {low} must be below high {high}")]
    if kind == "loguniform" and low <= 0:
        return [(where, f"loguniform needs low > 0, got {low}")]
    return []


def candidates(node: Any) -> list[Any]:
    """Values that stand for the node's range (every choice, both ends of a range), for
    checking a space against the plugin's Config without training anything."""
    if isinstance(node, list):
        per_item = [candidates(item) for item in node]
        return [[c[0] for c in per_item], [c[-1] for c in per_item]]
    if not isinstance(node, Mapping) or not _is_domain(node):
        return [node]
    if set(node) == {"each", "length"}:
        inner = candidates(node["each"])
        low, high = node["length"]
        return [[inner[0]] * low, [inner[-1]] * high]
    kind, args = next(iter(node.items()))
    return list(args)


def merged(
    spec: PipelineSpec, arch_cls: type[Architecture]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the space to search, the plugin's default space keyed by path): the plugin's
    `search_space()` under `model.params.`, then the pipeline's `sweep.space` over it (null
    removes a path). Under PBT the architecture is fixed, so the default space is left out."""
    sweep = spec.sweep
    assert sweep is not None
    defaults = {f"model.params.{k}": v for k, v in arch_cls().search_space().items()}
    space = dict(defaults) if sweep.default_space and sweep.scheduler != "pbt" else {}
    for path, node in sweep.space.items():
        if node is None:
            space.pop(path, None)
        else:
            space[path] = node
    return space, defaults


def _set(tree: dict[str, Any], path: str, value: Any) -> None:
    """Set a dotted path inside a pipeline dump; KeyError names the first missing part."""
    parts = path.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.get(part) if isinstance(node, dict) else None
        if not isinstance(child, dict):
            raise KeyError(".".join(parts[: i + 1]))
        node = child
    node[parts[-1]] = deepcopy(value)


# what plexa's own task modules log per epoch (a plugin's own LightningModule may log more)
TASK_METRICS = {
    "classification": {"loss", "acc"},
    "regression": {"loss", "mae", "r2"},
    "sequence": {"loss", "mae", "r2", "mse", "naive_mse", "mse_vs_naive"},  # tasks.ForecastTask
    "language-model": {"loss", "acc", "perplexity", "unigram_perplexity", "perplexity_vs_unigram"},
}


def _metric_problems(spec: PipelineSpec) -> list[tuple[str, str]]:
    """A metric the task never logs would fail every trial: refuse it before anything runs."""
    sweep = spec.sweep
    assert sweep is not None
    known = TASK_METRICS.get(spec.task())
    if known is None:
        return []
    named = [("sweep.metric", sweep.metric)] if sweep.metric else []
    named += [(f"sweep.objectives.{k}", k) for k in sweep.objectives if "/" in k]
    return [
        (
            where,
            f"the {spec.task()} task logs no '{name}' (it logs "
            + ", ".join(f"val/{m}" for m in sorted(known))
            + ")",
        )
        for where, name in named
        if name.partition("/")[2] not in known
    ]


def space_problems(spec: PipelineSpec, arch_cls: type[Architecture]) -> list[tuple[str, str]]:
    """Every problem of the merged space: its shape, paths that are not searchable, and values
    the plugin's Config (or the training schema) refuses."""
    from plexa.problems import pydantic_problems

    sweep = spec.sweep
    assert sweep is not None
    space, defaults = merged(spec, arch_cls)
    problems: list[tuple[str, str]] = _metric_problems(spec)
    if not any(is_searched(node) for node in space.values()):
        problems.append(("sweep.space", "nothing to search: the space has no domain"))
    base = spec.model_dump(mode="json")
    for path, node in space.items():
        where = f"sweep.space.{path}"
        origin = (
            f" (from architecture '{arch_cls.name}' search_space())"
            if path not in sweep.space and path in defaults
            else ""
        )
        if not path.startswith(SEARCHABLE):
            problems.append((where, "only model.params.* and train.* can be searched"))
            continue
        if sweep.scheduler == "pbt" and not path.startswith("train."):
            problems.append(
                (where, "scheduler pbt mutates training hyperparameters only (train.*)")
            )
            continue
        if sweep.scheduler == "pbt" and not (_is_domain(node) and next(iter(node)) in KINDS):
            problems.append((where, "scheduler pbt needs a choice or range here"))
            continue
        shape = structure_problems(node, where)
        if shape:
            problems += [(p, m + origin) for p, m in shape]
            continue
        for value in candidates(node):
            tree = deepcopy(base)
            try:
                _set(tree, path, value)
            except KeyError as exc:
                problems.append((where, f"{exc.args[0]} is not set in the pipeline"))
                break
            try:
                if path.startswith("model.params."):
                    arch_cls.Config.model_validate(tree["model"]["params"])
                else:
                    type(spec.train).model_validate(tree["train"])
            except ValidationError as exc:
                for _, msg in pydantic_problems(exc):
                    problems.append((where, f"value {value!r}: {msg}{origin}"))
                break
    return problems


# --------------------------------------------------------------------------- Tune


def _encoded(node: Mapping[str, Any]) -> bool:
    """A choice Tune samples as an index, because its values are not scalars."""
    return "choice" in node and not all(_scalar(v) for v in node["choice"])


def flat_domains(space: Mapping[str, Any]) -> dict[str, Any]:
    """The flat Ray Tune param space: one domain per searched leaf."""
    from ray import tune

    out: dict[str, Any] = {}

    def walk(node: Any, key: str) -> None:
        if isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{key}[{i}]")
        elif _is_domain(node):
            if set(node) == {"each", "length"}:
                low, high = node["length"]
                out[f"{key}#length"] = tune.randint(low, high + 1)
                for i in range(high):
                    walk(node["each"], f"{key}[{i}]")
                return
            kind, args = next(iter(node.items()))
            if kind == "choice":
                out[key] = tune.choice(list(range(len(args))) if _encoded(node) else list(args))
            elif kind == "uniform":
                out[key] = tune.uniform(*args)
            elif kind == "loguniform":
                out[key] = tune.loguniform(*args)
            else:
                out[key] = tune.randint(args[0], args[1] + 1)

    for path, node in space.items():
        walk(node, path)
    return out


def decode(space: Mapping[str, Any], point: Mapping[str, Any]) -> dict[str, Any]:
    """A sampled flat point back to {pipeline path: value}."""

    def value(node: Any, key: str) -> Any:
        if isinstance(node, list):
            return [value(item, f"{key}[{i}]") for i, item in enumerate(node)]
        if not _is_domain(node):
            return node
        if set(node) == {"each", "length"}:
            return [value(node["each"], f"{key}[{i}]") for i in range(int(point[f"{key}#length"]))]
        kind, args = next(iter(node.items()))
        sampled = point[key]
        if kind == "choice":  # the option itself, not the numpy scalar Tune may hand back
            return args[int(sampled)] if _encoded(node) else next(a for a in args if a == sampled)
        return int(sampled) if kind == "randint" else float(sampled)

    return {path: value(node, path) for path, node in space.items()}


def apply(spec: PipelineSpec, values: Mapping[str, Any]) -> PipelineSpec:
    """The pipeline with the sampled values set, validated again (a point the plugin refuses
    raises SpaceError, which fails that trial only)."""
    from plexa.plugins import architectures

    tree = spec.model_dump(mode="json")
    for path, v in values.items():
        _set(tree, path, v)
    tree["sweep"] = None
    try:
        out = type(spec).model_validate(tree)
        config = architectures.get(out.model.plugin).Config.model_validate(out.model.params)
    except ValidationError as exc:
        from plexa.problems import pydantic_problems

        raise SpaceError(pydantic_problems(exc)) from None
    out.model.params = config.model_dump(mode="json")
    return out
