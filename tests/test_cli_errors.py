"""Every user error ends the real `plexa` command the same way: one `error:` line saying what
to fix, exit 2, no traceback (`--debug` adds it). Nothing here trains: each case fails before."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import PIPELINES, plexa

WINE = str(PIPELINES / "wine-mlp.yaml")


def _free_port() -> int:
    """A loopback port nothing listens on: a connection to it is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _csv(folder: Path, rows: list[str], name: str = "table.csv") -> str:
    """A CSV plus a pipeline reading it; returns the pipeline's path."""
    (folder / name).write_text("\n".join(rows) + "\n")
    pipeline = folder / "table.yaml"
    pipeline.write_text(
        f"name: table\ndata: {{plugin: csv, params: {{path: {name}, target: label}}}}\n"
        "model: {plugin: mlp}\ntrain: {max_epochs: 1}\n"
    )
    return str(pipeline)


def _table(text_at: int | None = None) -> list[str]:
    rows = ["a,b,label", *(f"{i},{i * 2},{'xy'[i % 2]}" for i in range(12))]
    if text_at is not None:
        rows[text_at] = "4,abc,y"  # list index = line number - 1
    return rows


def _write(folder: Path, name: str, text: str) -> str:
    (folder / name).write_text(text)
    return str(folder / name)


# (id, the arguments, built in the test's folder, and the phrases the message must hold)
Case = tuple[str, Callable[[Path], list[str]], *tuple[str, ...]]
CASES: list[Case] = [
    (
        "missing pipeline",
        lambda d: ["validate", "nosuch.yaml"],
        "nosuch.yaml: 1 problem",
        "cannot read pipeline: No such file or directory",
    ),
    ("pipeline is a folder", lambda d: ["run", str(d)], "cannot read pipeline: Is a directory"),
    (
        "YAML syntax",
        lambda d: ["validate", _write(d, "bad.yaml", "name: x\ndata: [unclosed\n")],
        "malformed YAML at line 3, column 1",
    ),
    ("unknown top-level key", lambda d: ["validate", WINE, "bogus=1"], "bogus: unknown key"),
    (
        "bad value type",
        lambda d: ["run", WINE, "train.max_epochs=abc"],
        "train.max_epochs: Input should be a valid integer",
    ),
    (
        "unknown plugin",
        lambda d: ["validate", WINE, "model.plugin=nosuch"],
        "unknown architecture plugin 'nosuch'; available: ",
        "mlp",
    ),
    (
        "bad plugin param",
        lambda d: ["validate", WINE, "model.params.dropout=2"],
        "model.params.dropout: Input should be less than 1",
    ),
    (
        "override syntax",
        lambda d: ["validate", WINE, "train.max_epochs"],
        "an override is key.path=value",
    ),
    (
        "CSV text column",
        lambda d: ["run", _csv(d, _table(text_at=5))],
        "table.csv, line 6, column 'b': expected a number, got 'abc'",
        "data.params.features",
    ),
    (
        "CSV without the target",
        lambda d: ["run", _csv(d, ["a,b,kind", "1,2,x"])],
        "column 'label': no such column (data.params.target); the header names: a, b, kind",
    ),
    ("CSV empty", lambda d: ["validate", _csv(d, [""])], "table.csv is empty"),
    (
        "CSV missing",
        lambda d: ["run", _csv(d, _table()), "data.params.path=gone.csv"],
        "no such CSV file",
    ),
    ("export unknown run", lambda d: ["export", "NOSUCHRUN"], "no MLflow run 'NOSUCHRUN'"),
    (
        "resume unknown run",
        lambda d: ["run", WINE, "--resume", "NOSUCHRUN"],
        "no MLflow run 'NOSUCHRUN'",
    ),
    (
        "MLflow server unreachable",
        lambda d: ["runs", "--tracking-uri", f"http://127.0.0.1:{_free_port()}"],
        "did not answer",
    ),
    ("serve missing file", lambda d: ["serve", "missing.onnx"], "missing.onnx: no such file"),
    (
        "serve replicas without Ray",
        lambda d: ["serve", _write(d, "x.onnx", ""), "--replicas", "2"],
        "--replicas needs --ray",
    ),
    ("generate missing file", lambda d: ["generate", "nosuch.onnx"], "no ONNX file at nosuch.onnx"),
    (
        "Ray cluster unreachable",
        lambda d: ["jobs", "--address", f"http://127.0.0.1:{_free_port()}"],
        "cannot reach the Ray jobs API",
    ),
    (
        "sync from a missing store",
        lambda d: ["sync", "--from", str(d / "none.db")],
        "none.db: no such store",
    ),
]


@pytest.mark.parametrize(
    ("args", "phrases"), [(c[1], c[2:]) for c in CASES], ids=[c[0] for c in CASES]
)
def test_a_user_error_is_one_message_and_exit_2(
    args: Callable[[Path], list[str]], phrases: tuple[str, ...], workdir: Path
) -> None:
    done = plexa(*args(workdir), cwd=workdir, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert any(line.startswith("error: ") for line in done.stdout.splitlines()), output
    for phrase in phrases:
        assert phrase in done.stdout, output
    assert "Traceback" not in output
    assert not (workdir / "plexa-runs").exists()  # nothing was started


def test_debug_shows_the_traceback_and_keeps_the_exit_code(workdir: Path) -> None:
    done = plexa("--debug", "export", "NOSUCHRUN", cwd=workdir, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" in done.stderr and "RunNotFoundError" in done.stderr
    assert "error: no MLflow run 'NOSUCHRUN'" in done.stdout


def _invoke(*args: str):  # -> click.testing.Result
    from typer.testing import CliRunner

    from plexa.cli import app

    return CliRunner().invoke(app, list(args))


@pytest.mark.parametrize(
    ("raised", "code", "shown"),
    [(KeyboardInterrupt(), 130, "interrupted"), (ZeroDivisionError("a bug"), 1, "")],
    ids=["ctrl-c", "bug"],
)
def test_ctrl_c_is_130_and_a_bug_keeps_its_traceback(
    raised: BaseException, code: int, shown: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def load(*_: object) -> None:
        raise raised

    monkeypatch.setattr("plexa.config.load_pipeline", load)
    done = _invoke("validate", WINE)
    assert done.exit_code == code and shown in done.output, done.output
    if isinstance(raised, ZeroDivisionError):  # not turned into a message: Python prints it
        assert done.exception is raised and "error:" not in done.output


def test_a_plexa_error_from_a_ray_worker_is_reported_as_itself() -> None:
    """Ray Train raises a WorkerGroupError holding each worker's error (RayTaskError keeps the
    original in `cause`); a DataError there is the user's, not a bug."""
    from plexa.cli import _wrapped
    from plexa.errors import DataError

    data = DataError("x.txt is not UTF-8 text: byte 3 cannot be decoded")

    class RayTaskError(Exception):
        cause = data

    class WorkerGroupError(RuntimeError):
        worker_failures = {0: RayTaskError(), 1: ValueError("other")}

    assert _wrapped(WorkerGroupError()) is data
    assert _wrapped(RuntimeError("no workers")) is None


def test_an_unreadable_image_is_a_data_error_naming_it(tmp_path: Path) -> None:
    from PIL import Image

    from plexa.errors import DataError
    from plexa_data.images import Images

    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        for i in range(4):
            Image.new("L", (4, 4)).save(tmp_path / label / f"{i}.png")
    broken = tmp_path / "dog" / "3.png"
    broken.write_bytes(b"not a png")
    data = Images().load(Images.Config(path=str(tmp_path)), seed=0)  # lists files, reads none
    with pytest.raises(DataError, match=rf"{broken}: cannot read it as an image"):
        for part in (data.train, data.val, data.test):
            for i in range(len(part)):
                part.dataset[i]


def test_refused_mlflow_credentials_are_unreachable_not_a_missing_run() -> None:
    from mlflow.exceptions import MlflowException, get_error_code

    from plexa.errors import UnreachableError
    from plexa.tracking import raise_if_refused

    # what MLflow's REST client raises for an HTTP status
    raise_if_refused(MlflowException("no run", get_error_code(404)), "http://x")
    for status in (401, 403):
        with pytest.raises(UnreachableError, match="x refused the credentials .*MLFLOW_TRACKING_"):
            raise_if_refused(MlflowException(str(status), get_error_code(status)), "http://x")
