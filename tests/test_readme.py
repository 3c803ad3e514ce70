"""The README's plugin example runs exactly as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

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
