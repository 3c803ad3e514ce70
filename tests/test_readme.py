"""The README's plugin example runs exactly as written; `make demo` leaves what the README says
and `make clean` removes it. (The blocks of docs/ are run by tests/test_docs.py.)"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import BIN, PIPELINES, REPO

pytestmark = pytest.mark.slow


def readme_block(marker: str) -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(rf"<!-- tested: {marker} -->\n```python\n(.*?)```", text, re.S)
    assert match, f"no python block marked '{marker}' in README.md"
    return match.group(1)


def test_plugin_example_runs_as_written(workdir: Path) -> None:
    script = workdir / "example.py"
    script.write_text(readme_block("plugin-example"))
    out = subprocess.run(
        [sys.executable, str(script)],
        cwd=workdir,
        env={**os.environ},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    accuracy, path = re.search(r"test accuracy (\S+), ONNX at (\S+)", out.stdout).groups()
    assert float(accuracy) > 0.85
    assert Path(path).is_file()


def test_demo_outputs_are_what_the_readme_lists_and_make_clean_removes_them(tmp_path: Path) -> None:
    """The demo's command (one short epoch) in a fresh folder, with MLflow's defaults as a user has
    them; then the Makefile's `clean` in that folder."""
    text = (REPO / "README.md").read_text()
    paragraph = text.split("<!-- tested: demo-outputs -->\n", 1)[1].split("\n\n", 1)[0]
    listed = set(re.findall(r"`([\w.-]+)/?`\s+\(", paragraph))
    assert listed == {"mlflow.db", "mlruns", "plexa-runs"}, paragraph
    makefile = (REPO / "Makefile").read_text()
    demo = re.search(r"^demo: .*\n\t\$\(BIN\)/(plexa run \S+)$", makefile, re.M)
    assert demo, "no demo target running plexa"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PLEXA_"))}
    pipeline = str(PIPELINES / demo.group(1).split()[-1].removeprefix("pipelines/"))
    done = subprocess.run(
        [str(BIN / "plexa"), "run", pipeline, "train.max_epochs=1", "train.limit_batches=2",
         "export.register_as=null"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert {p.name for p in tmp_path.iterdir()} == listed
    (tmp_path / ".venv").mkdir()  # `clean` removes the venv too
    cleaned = subprocess.run(
        ["make", "-f", str(REPO / "Makefile"), "clean"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert cleaned.returncode == 0, cleaned.stderr
    assert not list(tmp_path.iterdir()), sorted(p.name for p in tmp_path.iterdir())
