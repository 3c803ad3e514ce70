"""Pipeline loading and validation: every problem at once, each with its path."""

from __future__ import annotations

from pathlib import Path

import pytest

import plexa
from plexa.config import ConfigError, apply_overrides, load_pipeline, validate
from plexa.plugins import architectures

from .conftest import PIPELINES

BASE = {
    "name": "t",
    "data": {"plugin": "digits"},
    "model": {"plugin": "cnn", "params": {"channels": [8]}},
}


def problems(raw: dict) -> dict[str, str]:
    with pytest.raises(ConfigError) as err:
        validate(raw)
    return dict(err.value.problems)


def test_shipped_pipelines_are_valid() -> None:
    for path in PIPELINES.glob("*.yaml"):
        spec = load_pipeline(path)
        assert spec.name == path.stem


def test_defaults_are_resolved_into_the_spec() -> None:
    spec = validate(BASE)
    assert spec.model.params == {
        "channels": [8],
        "kernel_size": 3,
        "pooling": "max",
        "dropout": 0.0,
        "hidden": 128,
    }
    assert spec.data.params["val_fraction"] == 0.15
    assert "kernel_size: 3" in spec.to_yaml()


def test_every_problem_is_reported_at_once_with_its_path() -> None:
    raw = {
        "name": "bad name!",
        "data": {"plugin": "digits", "params": {"val_fraction": 2, "colour": "red"}},
        "model": {"plugin": "cnn", "params": {"channels": [0], "kernel_size": 4}},
        "train": {"max_epochs": 0, "optimiser": {}},
        "compute": {"runner": "moon"},
        "surprise": 1,
    }
    found = problems(raw)
    assert set(found) == {
        "name",
        "data.params.val_fraction",
        "data.params.colour",
        "model.params.channels",
        "model.params.kernel_size",
        "train.max_epochs",
        "train.optimiser",
        "compute.runner",
        "surprise",
    }
    assert found["surprise"] == "unknown key"
    assert "data plugin 'digits'" in found["data.params.colour"]
    assert "odd" in found["model.params.kernel_size"]


def test_unknown_plugin_lists_the_available_ones() -> None:
    found = problems({**BASE, "model": {"plugin": "resnet"}})
    assert "unknown architecture plugin 'resnet'" in found["model.plugin"]
    assert "cnn" in found["model.plugin"] and "mlp" in found["model.plugin"]


def test_overrides_set_nested_values_parsed_as_yaml() -> None:
    raw = apply_overrides(
        {"train": {"max_epochs": 5}},
        ["train.max_epochs=2", "model.params.channels=[16, 32]", "tracking.uri=sqlite:///x.db"],
    )
    assert raw["train"]["max_epochs"] == 2
    assert raw["model"]["params"]["channels"] == [16, 32]
    assert raw["tracking"]["uri"] == "sqlite:///x.db"


def test_bad_overrides_are_reported_together() -> None:
    with pytest.raises(ConfigError) as err:
        apply_overrides({"name": "x"}, ["noequals", "name.deeper=1"])
    assert [p for p, _ in err.value.problems] == ["noequals", "name.deeper"]


def test_malformed_yaml_reports_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\ndata: {plugin: digits\nmodel: {plugin: cnn}\n")
    with pytest.raises(ConfigError) as err:
        load_pipeline(path)
    assert "line 3, column" in str(err.value)


def test_a_task_the_architecture_does_not_support_is_refused() -> None:
    @plexa.architecture("classifier-only")
    class ClassifierOnly(plexa.Architecture):
        tasks = frozenset({"classification"})

    try:
        found = problems(
            {
                "name": "t",
                "data": {"plugin": "tabular", "params": {"dataset": "diabetes"}},
                "model": {"plugin": "classifier-only"},
            }
        )
    finally:
        architectures.unregister("classifier-only")
    assert "does not support the regression task" in found["model.plugin"]
