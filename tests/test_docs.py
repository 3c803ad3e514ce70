"""The documentation: the site builds with `mkdocs build --strict` (no broken link, no missing
reference), the pipeline reference it generates covers every key with a description, and every
code block in the docs and the README is run by a test or says why it is not."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from .conftest import BIN, PIPELINES, REPO

DOCS = REPO / "docs"
TESTS = REPO / "tests"
# a marker comment on the line before a fenced block says how the block is checked:
#   tested: NAME ...     a test reads the block by NAME and runs (or validates) it as written
#   exercised: tests/FILE.py[::TEST] ...   that test does what the block does, another way
#   not run here: WHY    it needs what the tests do not have; WHY names what checks it instead
#   test: NAME (...)     deploy/README.md's form, checked by tests/test_deploy.py
KINDS = ("tested", "exercised", "not run here", "test")
INCLUDE = re.compile(r'^--8<-- "([^"]+)"$', re.M)
MARKER = re.compile(r"<!-- (.+?) -->")


# --------------------------------------------------------------------------- reading the docs


def hooks() -> ModuleType:
    """The MkDocs hook that generates the reference, imported as MkDocs imports it."""
    module = sys.modules.get("plexa_docs_hooks")
    if module is None:
        spec = importlib.util.spec_from_file_location(
            "plexa_docs_hooks", DOCS / "hooks/reference.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return module


def pages() -> list[Path]:
    """Every page of the site, the README, and the files pages include."""
    found = [*sorted(DOCS.rglob("*.md")), REPO / "README.md"]
    for page in list(found):
        found += [REPO / name for name in INCLUDE.findall(page.read_text())]
    return found


def blocks(path: Path) -> list[tuple[str | None, str, str]]:
    """(marker, language, body) of every fenced block; marker: the comment on the line above."""
    lines = path.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        if lines[i].startswith("```"):
            before = lines[i - 1] if i else ""
            marker = MARKER.fullmatch(before.strip())
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            body = "\n".join(lines[i + 1 : end]) + "\n"
            found.append((marker.group(1) if marker else None, lines[i][3:].strip(), body))
            i = end
        i += 1
    return found


def doc_blocks(name: str, page: str) -> list[tuple[str, str]]:
    """(the rest of the marker after NAME, body) of the blocks marked `tested: NAME` on a page."""
    found = []
    for marker, _, body in blocks(REPO / page):
        kind, _, rest = (marker or "").partition(": ")
        if kind == "tested" and (rest == name or rest.startswith(f"{name} ")):
            found.append((rest.removeprefix(name).strip(), body))
    assert found, f"{page} has no block marked 'tested: {name}'"
    return found


def doc_block(name: str, page: str) -> str:
    found = doc_blocks(name, page)
    assert len(found) == 1, f"{page} has {len(found)} blocks marked 'tested: {name}'"
    return found[0][1]


# --------------------------------------------------------------------------- the reference


def test_every_pipeline_and_plugin_key_has_a_description() -> None:
    missing = hooks().undescribed()
    assert not missing, "keys without Field(description=...): " + ", ".join(missing)


def test_a_key_without_a_description_is_found() -> None:
    from pydantic import BaseModel, Field

    class Inner(BaseModel):
        bare: int = 1

    class Outer(BaseModel):
        inner: Inner = Field(default_factory=Inner, description="a section")

    rows = {row.key: row for row in hooks().rows(Outer)}
    assert rows["inner"].description == "a section"
    assert rows["inner.bare"].description is None


def test_the_reference_has_every_key_with_its_type_default_and_allowed_values() -> None:
    from plexa.config import PipelineSpec

    ref = hooks()
    pipeline = ref.generate("pipeline")
    for row in ref.rows(PipelineSpec):  # a row each, a heading for the top-level sections
        assert f"| `{row.key}` |" in pipeline or f"### `{row.key}`" in pipeline, row.key
    optimizer = next(line for line in pipeline.splitlines() if "`train.optimizer.name`" in line)
    assert "| string | `adamw` | `adam`, `adamw`, `sgd` |" in optimizer
    devices = next(line for line in pipeline.splitlines() if "`compute.devices`" in line)
    assert "integer or string | `auto` | `auto` |" in devices
    assert "| `federated.privacy.clipping_norm` | number | required | > 0 |" in pipeline
    models, data = ref.generate("architectures"), ref.generate("data")
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]
    for kind, page in (("architectures", models), ("data", data)):
        own = [name for name, _ in ref._plugins(kind)]
        assert own == sorted(declared[f"plexa.{kind}"]), own  # plexa's own, every one of them
        for name in own:
            assert f"### `{name}`" in page
    assert "| `model.params.kernel_size` | integer | `3` | ≥ 1 |" in models
    assert "| `data.params.augment.crop.padding` | integer | `0` | ≥ 0 |" in data
    assert "The keys of [`table`](#table)." in data  # csv is table under its first name


# --------------------------------------------------------------------------- the site


def test_the_site_builds_strict_with_the_generated_pages(tmp_path: Path) -> None:
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [str(BIN / "mkdocs"), "build", "--strict", "--site-dir", str(site)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WARNING" not in done.stderr, done.stderr
    reference = (site / "pipelines/index.html").read_text()
    assert "train.optimizer.lr" in reference and "data.params.augment.jitter" in reference
    assert "<!-- reference" not in reference
    overhead = (site / "benchmarks/overhead/index.html").read_text()
    results = (REPO / "benchmarks/results/overhead.md").read_text()
    first_row = next(line for line in results.splitlines() if line.startswith("| plain"))
    assert first_row.split("|")[2].strip() in overhead  # the results file's own figure
    assert (site / "benchmarks/nas_pareto.png").is_file()
    assert "From a laptop to a shared stack" in (site / "deploying/index.html").read_text()
    assert "load_pipeline" in (site / "api/index.html").read_text()


def test_every_benchmark_page_states_command_machine_and_date() -> None:
    for page in sorted((DOCS / "benchmarks").glob("*.md")):
        if page.name == "index.md":
            continue
        text = page.read_text()
        included = re.findall(r"<!-- results: (\S+) -->", text)
        assert len(included) == 1, page.name
        assert f"<!-- date: {included[0]} -->" in text, page.name
        assert re.search(r"^\| command \| .*`\.venv/bin/python benchmarks/", text, re.M), page.name
        assert re.search(r"^\| machine \| \w", text, re.M), page.name
        assert hooks().measured_on(included[0]), page.name


def test_every_code_block_is_run_by_a_test_or_says_why_not() -> None:
    sources = {p.name: p.read_text() for p in TESTS.glob("test_*.py")}
    checked = 0
    for page in pages():
        for marker, _, body in blocks(page):
            where = f"{page.relative_to(REPO)}: block starting {body.splitlines()[0]!r}"
            assert marker, f"{where} has no marker comment"
            kind, _, rest = marker.partition(": ")
            assert kind in KINDS and rest.strip(), f"{where}: marker {marker!r}"
            if kind in ("tested", "test"):
                name = rest.split()[0]
                readers = [f for f, text in sources.items() if f'"{name}"' in text]
                assert readers, f"{where}: no test reads the block named {name!r}"
            elif kind == "exercised":
                file, _, test = rest.split()[0].partition("::")
                assert (REPO / file).is_file(), f"{where}: no {file}"
                assert not test or f"def {test}(" in (REPO / file).read_text(), f"{where}: {test}"
            checked += 1
    assert checked >= 40, checked


def test_the_docs_cite_tests_that_exist() -> None:
    for page in pages():
        for file, test in re.findall(r"(tests/test_\w+\.py)(?:::(\w+))?", page.read_text()):
            assert (REPO / file).is_file(), f"{page.name} cites {file}"
            if test:
                assert f"def {test}(" in (REPO / file).read_text(), f"{page.name}: {file}::{test}"


# --------------------------------------------------------------------------- the blocks


def _fragment_pipeline(fragment: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "fragment",
        "data": {"plugin": "digits"},
        "model": {"plugin": "cnn"},
        **fragment,
    }


def test_the_pipeline_blocks_are_valid_pipelines() -> None:
    from plexa.config import validate

    validate(yaml.safe_load(doc_block("pipeline-example", "docs/pipelines.md")), base_dir=PIPELINES)
    fragments = [
        body
        for page in ("docs/training.md", "docs/federated.md", "docs/search.md", "docs/export.md")
        for _, body in doc_blocks("pipeline-fragment", page)
    ]
    assert len(fragments) >= 4
    for body in fragments:
        fragment = yaml.safe_load(body)
        assert isinstance(fragment, dict) and len(fragment) == 1, body
        validate(_fragment_pipeline(fragment), base_dir=PIPELINES)


def test_the_readme_tour_shows_the_shipped_pipeline() -> None:
    shown = yaml.safe_load(doc_block("tour-pipeline", "README.md"))
    assert shown == yaml.safe_load((PIPELINES / "digits-cnn.yaml").read_text())


def _shell(script: str, cwd: Path, env: dict[str, str] | None = None):
    path = f"{BIN}{os.pathsep}{os.environ['PATH']}"
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd, env={**os.environ, "PATH": path, "COLUMNS": "200", **(env or {})},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_the_validate_commands_run_as_written() -> None:
    done = _shell(doc_block("validate-commands", "docs/get-started.md"), cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "max_epochs: 3" in done.stdout and "cnn" in done.stdout and "digits" in done.stdout


def test_the_invalid_pipeline_prints_what_the_docs_show() -> None:
    lines = doc_block("invalid-pipeline", "docs/troubleshooting.md").splitlines()
    command, shown = lines[0].removeprefix("$ "), lines[1:]
    assert lines[0].startswith("$ ") and shown
    done = _shell(command, cwd=REPO)
    assert done.returncode == 2, done.stdout + done.stderr
    printed = [" ".join(line.split()) for line in (done.stdout + done.stderr).splitlines()]
    assert [" ".join(line.split()) for line in shown] == [p for p in printed if p]


@pytest.mark.slow
def test_the_streaming_example_runs_as_written(workdir: Path) -> None:
    script = workdir / "streaming.py"
    script.write_text(doc_block("streaming-example", "docs/writing-plugins.md"))
    out = subprocess.run(
        [sys.executable, str(script)], cwd=workdir, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout + out.stderr
    accuracy = float(re.search(r"test accuracy (\S+)", out.stdout).group(1))
    assert accuracy > 0.8
    assert (workdir / "digits.npy").is_file()


@pytest.mark.slow
def test_the_plugin_package_installs_and_trains(workdir: Path, tmp_path_factory) -> None:
    """The package's files as the page shows them, installed with pip (into a folder of its
    own, so the environment stays as it was), then the page's commands after `pip install`."""
    source = tmp_path_factory.mktemp("source")
    files = doc_blocks("package", "docs/writing-plugins.md")
    for name, body in files:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text(body)
    assert {name for name, _ in files} >= {"my-plugins/pyproject.toml", "my-plugins/pipeline.yaml"}
    site = tmp_path_factory.mktemp("site")
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
    done = subprocess.run(
        [*pip, "--target", str(site), str(source / "my-plugins")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    shutil.copytree(source / "my-plugins", workdir / "my-plugins")

    commands = doc_block("package-commands", "docs/writing-plugins.md").splitlines()
    assert commands[0].startswith("pip install ./my-plugins"), commands
    env = {"PYTHONPATH": f"{site}{os.pathsep}{os.environ['PYTHONPATH']}"}
    listed = _shell(commands[1], cwd=workdir, env=env)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    rows = [line for line in listed.stdout.splitlines() if "my-plugins" in line]
    assert len(rows) == 2 and all("ok" in row and "0.1.0" in row for row in rows), listed.stdout
    trained = _shell(commands[2], cwd=workdir, env=env)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    accuracy = float(re.search(r"test/acc\s*│\s*(\S+)", trained.stdout).group(1))
    assert accuracy > 0.85, trained.stdout
    assert "ONNX parity" in trained.stdout
