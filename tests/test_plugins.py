"""The plugin registry: decorators, entry points, discovery without import, clear failures."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import plexa
from plexa.plugins import (
    DuplicatePluginError,
    PluginNotFoundError,
    all_plugins,
    architectures,
    datasets,
)

from .conftest import PIPELINES, REPO
from .conftest import plexa as plexa_cli

FIXTURE = REPO / "tests" / "fixtures" / "plexa-demo-plugins"


def test_decorator_registers_and_a_duplicate_is_refused() -> None:
    @plexa.architecture("twin")
    class Twin(plexa.Architecture):
        pass

    try:
        assert architectures.get("twin") is Twin
        with pytest.raises(DuplicatePluginError, match="'twin' is already registered"):

            @plexa.architecture("twin")
            class Other(plexa.Architecture):
                pass

        @plexa.architecture("twin", override=True)
        class Replacement(plexa.Architecture):
            pass

        assert architectures.get("twin") is Replacement
    finally:
        architectures.unregister("twin")


def test_a_name_taken_by_an_entry_point_is_a_duplicate() -> None:
    with pytest.raises(DuplicatePluginError, match="'mlp' is already registered by 'plexa'"):

        @plexa.architecture("mlp")
        class MyMLP(plexa.Architecture):
            pass


def test_unknown_name_lists_the_available_ones() -> None:
    with pytest.raises(PluginNotFoundError) as err:
        datasets.get("imagenet")
    assert (
        str(err.value)
        == f"unknown data plugin 'imagenet'; available: {', '.join(datasets.names())}"
    )
    assert "digits" in str(err.value)


def test_a_class_that_breaks_the_contract_is_refused() -> None:
    with pytest.raises(TypeError, match="must subclass plexa.DataPlugin"):
        plexa.data("not-a-plugin")(dict)


def test_first_party_plugins_are_listed_and_load() -> None:
    found = {(p.name, p.kind): p for p in all_plugins()}
    for key in [
        ("mlp", "architecture"),
        ("cnn", "architecture"),
        ("digits", "data"),
        ("tabular", "data"),
        ("csv", "data"),
    ]:
        assert found[key].status == "ok"
        assert found[key].distribution == "plexa"


def test_discovery_imports_no_plugin_module() -> None:
    code = (
        "import sys; from plexa.plugins import architectures, datasets;"
        "names = architectures.names() + datasets.names();"
        "assert 'mlp' in names and 'digits' in names, names;"
        "print(sorted(m for m in sys.modules if m.startswith(('plexa_models', 'plexa_data'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_core_never_imports_the_first_party_plugin_packages() -> None:
    for path in (REPO / "platform" / "plexa").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert not name.startswith(("plexa_models", "plexa_data")), f"{path}: {name}"


# ------------------------------------------------------------- a third-party distribution


@pytest.fixture(scope="module")
def demo_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip install` the demo plugin distribution, as a user would, into its own folder."""
    site = tmp_path_factory.mktemp("site")
    # pip builds in the source folder (build/, *.egg-info): a copy, so the checkout stays clean
    source = tmp_path_factory.mktemp("source") / FIXTURE.name
    shutil.copytree(FIXTURE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    return site


def test_plugins_command_reports_a_broken_plugin_and_keeps_the_rest(
    demo_site: Path, workdir: Path
) -> None:
    out = plexa_cli("plugins", cwd=workdir, env={"PYTHONPATH": str(demo_site), "COLUMNS": "300"})
    assert out.returncode == 0, out.stderr
    lines = {line.split("│")[1].strip(): line for line in out.stdout.splitlines() if "│" in line}
    assert "ok" in lines["linear"] and "plexa-demo-plugins" in lines["linear"]
    assert "1.2.3" in lines["linear"]
    assert "ok" in lines["blobs"] and "ok" in lines["cnn"]
    broken = " ".join(lines["broken"].split())
    assert "architecture plugin 'broken' from distribution 'plexa-demo-plugins' failed to load" in (
        broken.replace("│ ", "")
    )
    assert "not-installed-anywhere" in out.stdout


def test_a_pipeline_uses_the_installed_third_party_plugins(demo_site: Path, workdir: Path) -> None:
    pipeline = workdir / "blobs.yaml"
    pipeline.write_text(
        "name: blobs-linear\n"
        "data: {plugin: blobs, params: {samples: 240}}\n"
        "model: {plugin: linear}\n"
        "train: {max_epochs: 3, batch_size: 32, optimizer: {lr: 0.05}}\n"
        "compute: {accelerator: cpu}\n"
    )
    env = {"PYTHONPATH": str(demo_site)}
    out = plexa_cli("run", str(pipeline), cwd=workdir, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "test/acc" in out.stdout and "ONNX parity" in out.stdout

    broken = plexa_cli("run", str(pipeline), "model.plugin=broken", cwd=workdir, env=env)
    assert broken.returncode == 2
    assert "plugin 'broken' from distribution 'plexa-demo-plugins' failed to load" in broken.stdout
    assert "ImportError" in broken.stdout

    # the shipped pipelines still run beside the broken plugin
    ok = plexa_cli("validate", str(PIPELINES / "digits-cnn.yaml"), cwd=workdir, env=env)
    assert ok.returncode == 0, ok.stdout
