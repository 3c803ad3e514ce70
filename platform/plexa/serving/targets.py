"""What `plexa serve TARGET` means: an .onnx file, a registered model (`models:/name/version`,
`models:/name@alias`), an MLflow run id or one of a run's logged models
(`runs:/RUN_ID/onnx-model`, `runs:/RUN_ID/onnx-model-int8`), resolved to one local ONNX file and
a model name.

A run id alone is its float export; the int8 copy (`export.quantize`) is
`runs:/RUN_ID/onnx-model-int8`, or `models:/name@int8` once registered, the alias plexa moves
to each new int8 version. Only the file named (or the one ONNX file of the model named) is
loaded: nothing is scanned. `NAME=TARGET` serves TARGET under NAME.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from plexa.errors import UserError
from plexa.export import INT8_MODEL_NAME, MLFLOW_MODEL_NAME
from plexa.quantize import QUANTIZED_FILE

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_MODEL_FILE = "model.onnx"
_RUNS_URI = re.compile(r"^runs:/([0-9a-f]{32})/([A-Za-z0-9_.-]+)$")
# a run's logged models and the files of its local export they come from
_LOCAL_FILES = {MLFLOW_MODEL_NAME: _MODEL_FILE, INT8_MODEL_NAME: QUANTIZED_FILE}


class TargetError(UserError, ValueError):
    """A target that names nothing servable; the message says which and why."""


@dataclass(frozen=True)
class Target:
    name: str  # the model's name in URLs ("" until the file's metadata names it)
    path: Path  # a local .onnx file
    source: str  # what the user wrote


def resolve_all(targets: list[str], tracking_uri: str | None = None) -> list[Target]:
    """Resolve every target; report every problem at once; refuse duplicate names."""
    resolved, problems = [], []
    for text in targets:
        try:
            resolved.append(resolve(text, tracking_uri))
        except TargetError as exc:
            problems.append(str(exc))
    seen: dict[str, str] = {}
    for t in resolved:
        if not t.name:
            continue
        if t.name in seen:
            problems.append(
                f"{t.source}: the name '{t.name}' is already used by {seen[t.name]}; "
                f"serve it as OTHER_NAME={t.source}"
            )
        seen[t.name] = t.source
    if not targets:
        problems.append("no target: give an .onnx file, models:/name/version or a run id")
    if problems:
        raise TargetError("\n".join(problems))
    return resolved


def resolve(text: str, tracking_uri: str | None = None) -> Target:
    name, _, rest = text.partition("=")
    if rest and _NAME.match(name) and not text.startswith("models:/"):
        target = resolve(rest, tracking_uri)
        return Target(name, target.path, text)
    if text.startswith("models:/"):
        path, default = _registered(text, tracking_uri)
    elif _RUN_ID.match(text):
        path, default = _run(text, tracking_uri)
    elif text.startswith("runs:/"):
        match = _RUNS_URI.match(text)
        if not match:
            raise TargetError(
                f"{text}: write runs:/RUN_ID/{MLFLOW_MODEL_NAME} or runs:/RUN_ID/{INT8_MODEL_NAME}"
            )
        path, default = _run(match.group(1), tracking_uri, match.group(2))
    else:
        path = Path(text).expanduser()
        if path.suffix != ".onnx":
            raise TargetError(
                f"{text}: not an .onnx file, models:/name/version, models:/name@alias, "
                "runs:/RUN_ID/model or a 32-character MLflow run id"
            )
        if not path.is_file():
            raise TargetError(f"{text}: no such file")
        default = "" if path.stem == _MODEL_FILE.removesuffix(".onnx") else path.stem
    name = _sanitise(default) if default else ""  # "": the export's pipeline name, once loaded
    return Target(name, path.resolve(), text)


def _sanitise(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "-", name).strip("-.") or "model"
    return cleaned[:64]


def _registered(uri: str, tracking_uri: str | None) -> tuple[Path, str]:
    body = uri.removeprefix("models:/")
    match = re.fullmatch(r"([^/@]+)(?:/([0-9]+|latest)|@([A-Za-z0-9_-]+))", body)
    if not match:
        raise TargetError(f"{uri}: write models:/NAME/VERSION or models:/NAME@ALIAS")
    return _download(uri, tracking_uri), match.group(1)


def _run(
    run_id: str, tracking_uri: str | None, model: str = MLFLOW_MODEL_NAME
) -> tuple[Path, str]:
    """The newest logged model of the run named `model` (the float export by default), or the
    matching file of its local export when none was logged."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from plexa.tracking import resolve_uri

    client = MlflowClient(resolve_uri(tracking_uri))
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise TargetError(f"{run_id}: no such MLflow run in {client.tracking_uri}") from exc
    name = run.data.tags.get("plexa.pipeline") or run.info.run_name or run_id
    models = client.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run_id}' AND name = '{model}'",
        order_by=[{"field_name": "creation_time", "ascending": False}],
    )
    if models:
        return _download(f"models:/{models[0].model_id}", tracking_uri), name
    file = _LOCAL_FILES.get(model)
    local = Path(run.data.tags.get("plexa.run_dir", "")) / "export" / (file or _MODEL_FILE)
    if file and run.data.tags.get("plexa.run_dir") and local.is_file():
        return local, name
    if model == INT8_MODEL_NAME:
        raise TargetError(
            f"runs:/{run_id}/{model}: the run has no int8 export (set export.quantize in its "
            "pipeline)"
        )
    if model != MLFLOW_MODEL_NAME:
        raise TargetError(
            f"runs:/{run_id}/{model}: the run logged no model of that name (plexa logs "
            f"{MLFLOW_MODEL_NAME} and {INT8_MODEL_NAME})"
        )
    raise TargetError(f"{run_id}: the run has no ONNX export (run `plexa export {run_id}`)")


def _download(uri: str, tracking_uri: str | None) -> Path:
    import mlflow
    from mlflow.exceptions import MlflowException

    from plexa.tracking import resolve_uri

    dst = tempfile.mkdtemp(prefix="plexa-serve-")
    try:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=uri, dst_path=dst, tracking_uri=resolve_uri(tracking_uri)
        )
    except (MlflowException, OSError) as exc:
        raise TargetError(f"{uri}: cannot fetch it: {exc}") from exc
    path = Path(local) / _MODEL_FILE
    if not path.is_file():
        raise TargetError(f"{uri}: the model has no {_MODEL_FILE}; is it a plexa ONNX export?")
    return path
