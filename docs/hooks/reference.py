"""What the documentation takes from the repository when it is built, so it cannot drift.

A MkDocs hook (`hooks:` in mkdocs.yml) that replaces markers in a page:

- `<!-- reference: pipeline -->`, `<!-- reference: architectures -->`, `<!-- reference: data -->`:
  tables of every key of the pydantic pipeline schema (`plexa.config.PipelineSpec`) and of
  every registered plugin's `Config`: its path, type, default, allowed values and description.
  `tests/test_docs.py` calls `undescribed()`, which lists the fields without a description.
- `<!-- results: benchmarks/results/NAME.md -->`: that results file as the benchmark wrote it,
  its title left out and its headings one level down, under the page's own.
- `<!-- date: benchmarks/results/NAME.md -->`: the first date the results file states.

It also puts the figures of `benchmarks/results/` (`*.png`) into the site beside the benchmark
pages, as `benchmarks/NAME.png`.
"""

from __future__ import annotations

import inspect
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, NamedTuple, Union, get_args, get_origin

REPO = Path(__file__).resolve().parents[2]
# document this checkout's code, whichever plexa the environment has installed
for folder in ("plugins", "platform"):
    if str(REPO / folder) not in sys.path:
        sys.path.insert(0, str(REPO / folder))

from pydantic import BaseModel  # noqa: E402
from pydantic.fields import FieldInfo  # noqa: E402

MARKERS = {
    "<!-- reference: pipeline -->": "pipeline",
    "<!-- reference: architectures -->": "architectures",
    "<!-- reference: data -->": "data",
}
_SCALARS = {int: "integer", float: "number", str: "string", bool: "boolean"}
_BOUNDS = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}


class Row(NamedTuple):
    key: str
    type: str
    default: str
    allowed: str
    description: str | None


# --------------------------------------------------------------------------- one model


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation holds (`Spec`, `Spec | None`)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if get_origin(annotation) in (Union, types.UnionType):
        return [m for arg in get_args(annotation) for m in _models(arg)]
    return []


def type_name(annotation: Any) -> str:
    """A YAML reader's name for a type: integer, list of integer, string or null, mapping."""
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is type(None):
        return "null"
    if annotation is Any:
        return "any"
    if origin is Literal:
        kinds = {_SCALARS.get(type(value), type(value).__name__) for value in args}
        return " or ".join(sorted(kinds))
    if origin in (Union, types.UnionType):
        names = dict.fromkeys(type_name(arg) for arg in args)  # ordered, without repeats
        return " or ".join(names)
    if origin is list:
        return f"list of {type_name(args[0])}"
    if origin is tuple:
        return "[" + ", ".join(type_name(arg) for arg in args) + "]"
    if origin is dict:
        return (
            "mapping"
            if args[1] is Any
            else f"mapping of {type_name(args[0])} to {type_name(args[1])}"
        )
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping"
    return _SCALARS.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _literals(annotation: Any) -> list[Any]:
    if get_origin(annotation) is Literal:
        return list(get_args(annotation))
    if get_origin(annotation) in (Union, types.UnionType):
        return [value for arg in get_args(annotation) for value in _literals(arg)]
    return []


def value_text(value: Any) -> str:
    """A value as it is written in YAML."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, BaseModel):
        return "{}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(value_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {value_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, float):
        return repr(value) if len(repr(value)) <= 8 else f"{value:.4g}"
    if isinstance(value, str):
        return value if value.strip() == value and value else repr(value)
    return str(value)


def allowed_text(field: FieldInfo) -> str:
    parts = [f"`{value_text(v)}`" for v in _literals(field.annotation)]
    low = high = None
    for item in field.metadata:
        for attr, sign in _BOUNDS.items():
            bound = getattr(item, attr, None)
            if bound is not None:
                parts.append(f"{sign} {value_text(bound)}")
        low = getattr(item, "min_length", None) if low is None else low
        high = getattr(item, "max_length", None) if high is None else high
        pattern = getattr(item, "pattern", None)
        if pattern is not None:
            parts.append(f"matches `{pattern}`")
    if low is not None or high is not None:
        parts.append(_length(low, high, "character" if field.annotation is str else "item"))
    return ", ".join(parts)


def _length(low: int | None, high: int | None, unit: str) -> str:
    def count(n: int) -> str:
        return f"{n} {unit}" + ("" if n == 1 else "s")

    if low == high and low is not None:
        return f"exactly {count(low)}"
    if high is None:
        return f"at least {count(low or 0)}"
    if low is None:
        return f"at most {count(high)}"
    return f"{low} to {count(high)}"


def default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        return f"`{value_text(field.default_factory())}`"  # type: ignore[call-arg]
    return f"`{value_text(field.default)}`"


def rows(model: type[BaseModel], prefix: str = "") -> Iterator[Row]:
    """Every key of `model`, nested models' keys after their own row, with its full path."""
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        yield Row(
            key,
            type_name(field.annotation),
            default_text(field),
            allowed_text(field),
            field.description,
        )
        for nested in _models(field.annotation):
            yield from rows(nested, f"{key}.")


def table(found: list[Row]) -> str:
    lines = ["| key | type | default | allowed | description |", "|---|---|---|---|---|"]
    for row in found:
        cells = [f"`{row.key}`", row.type, row.default, row.allowed, row.description or ""]
        lines.append(
            "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- the pages


def _summary(obj: Any) -> str:
    """The first paragraph of a plugin's module docstring (its class's when that is empty)."""
    doc = inspect.getdoc(sys.modules[obj.__module__]) or inspect.getdoc(obj) or ""
    return " ".join(doc.split("\n\n")[0].split())


def pipeline_page() -> str:
    from plexa.config import PipelineSpec

    out = []
    top = [
        r
        for r in rows(PipelineSpec)
        if "." not in r.key and not _models(PipelineSpec.model_fields[r.key].annotation)
    ]
    out += ["### Top level", "", table(top), ""]
    for name, field in PipelineSpec.model_fields.items():
        nested = _models(field.annotation)
        if not nested:
            continue
        out += [f"### `{name}`", "", field.description or "", ""]
        out += [table(list(rows(nested[0], f"{name}."))), ""]
    return "\n".join(out)


def _plugins(kind: str) -> Iterator[tuple[str, type]]:
    """plexa's own plugins of a kind (`architectures`, `data`), by name: the ones its
    distribution declares, not whatever else the environment has installed."""
    from importlib.metadata import entry_points

    from plexa.plugins import architectures, datasets

    registry = architectures if kind == "architectures" else datasets
    own = {
        ep.name for ep in entry_points(group=registry.group) if ep.dist and ep.dist.name == "plexa"
    }
    for name in sorted(own):
        yield name, registry.get(name)


def plugin_page(kind: str) -> str:
    where = "model" if kind == "architectures" else "data"
    plugins = list(_plugins(kind))
    # plugins sharing one Config (`csv` is `table` by its first name) are listed once, under
    # the plugin that defines it
    owner: dict[type, str] = {}
    for name, cls in plugins:
        defines = cls.Config.__qualname__.startswith(f"{cls.__qualname__}.")
        if defines or cls.Config not in owner:
            owner[cls.Config] = name
    out: list[str] = []
    for name, cls in plugins:
        out += [f"### `{name}`", "", _summary(cls), ""]
        if kind == "architectures":
            out += ["Tasks: " + ", ".join(f"`{t}`" for t in sorted(cls.tasks)) + ".", ""]
        if owner[cls.Config] != name:
            out += [f"The keys of [`{owner[cls.Config]}`](#{owner[cls.Config]}).", ""]
            continue
        found = list(rows(cls.Config, f"{where}.params."))
        out += [table(found) if found else "No keys of its own.", ""]
    return "\n".join(out)


def generate(what: str) -> str:
    return pipeline_page() if what == "pipeline" else plugin_page(what)


def undescribed() -> list[str]:
    """Every key of the pipeline schema and of plexa's plugins' Configs without a description."""
    from plexa.config import PipelineSpec

    found = [r.key for r in rows(PipelineSpec) if not r.description]
    for kind, where in (("architectures", "model"), ("data", "data")):
        for name, cls in _plugins(kind):
            found += [
                f"{r.key} ({name})"
                for r in rows(cls.Config, f"{where}.params.")
                if not r.description
            ]
    return found


# --------------------------------------------------------------------------- benchmark results

RESULTS = re.compile(r"<!-- results: (\S+) -->")
DATE = re.compile(r"<!-- date: (\S+) -->")
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


def results(path: str) -> str:
    """A results file under the page's headings: its `# title` dropped, `##` made `###`."""
    lines = (REPO / path).read_text().splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    return "\n".join(f"#{line}" if line.startswith("#") else line for line in lines).strip()


def measured_on(path: str) -> str:
    found = _DAY.search((REPO / path).read_text())
    if found is None:
        raise ValueError(f"{path} states no date (YYYY-MM-DD)")
    return found.group(0)


def on_files(files: Any, config: Any, **_: Any) -> Any:
    """The MkDocs hook: the benchmarks' figures, served from where the benchmarks wrote them."""
    from mkdocs.structure.files import File

    for figure in sorted((REPO / "benchmarks" / "results").glob("*.png")):
        uri = f"benchmarks/{figure.name}"
        files.append(File.generated(config, uri, abs_src_path=str(figure)))
    return files


def on_page_markdown(markdown: str, **_: Any) -> str:
    """The MkDocs hook: each marker becomes what it names."""
    for marker, what in MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, generate(what))
    markdown = RESULTS.sub(lambda m: results(m.group(1)), markdown)
    return DATE.sub(lambda m: measured_on(m.group(1)), markdown)
