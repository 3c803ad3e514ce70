"""The `series` data plugin on real CSV and Parquet files written here: rows sorted by time,
missing values filled linearly in time within each split, splits that follow time, windows,
train-only normalisation, streamed windows, the naive forecast scored in a run, and bad
files refused by the real `plexa` command."""

from __future__ import annotations

import datetime as dt
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from plexa import orchestrator
from plexa.config import validate
from plexa.errors import DataError
from plexa.plugins import Split, Stream
from plexa_data.series import Series

from .conftest import plexa

ROWS = 40  # train rows 0..19, val 20..29, test 30..39 (fractions 0.25 and 0.25)
START = dt.date(2024, 1, 1)
# sorted row -> day: every fifth day is absent, so times are irregular
DAYS = np.array([i + i // 4 for i in range(ROWS)])
LEVEL_GONE = (0, 4, 6, 7, 19, 20)  # sorted rows whose `level` is left empty
TEMP_GONE = (10, 30)


def temp_of(day: float) -> float:
    return float((day % 7) * 1.5 - 2)


def table() -> dict[str, list[Any]]:
    """Columns in file order: `level` = 2 * day + 1 (linear in time, so interpolation is exact),
    `clock` = the day itself, `temp` a weekly pattern; rows shuffled."""
    order = np.random.default_rng(0).permutation(ROWS)
    cols: dict[str, list[Any]] = {"date": [], "level": [], "clock": [], "temp": []}
    for i in order.tolist():
        day = int(DAYS[i])
        cols["date"].append(START + dt.timedelta(days=day))
        cols["level"].append(None if i in LEVEL_GONE else 2.0 * day + 1)
        cols["clock"].append(float(day))
        cols["temp"].append(None if i in TEMP_GONE else temp_of(day))
    return cols


def expected() -> np.ndarray:
    """(ROWS, 3) in time order, filled as the plugin documents, each split on its own."""
    level = 2.0 * DAYS + 1
    level[0] = level[1]  # leading: filled backward
    level[19] = level[18]  # the last train row: held forward, not read from val
    level[20] = level[21]  # the first val row: filled backward, not read from train
    # rows 4, 6 and 7 border the absent days 4 and 9: exact only when linear in *time*
    temp = np.array([temp_of(d) for d in DAYS])
    before, day, after = DAYS[9], DAYS[10], DAYS[11]  # 11, 12, 13: evenly spaced here
    temp[10] = temp_of(before) + (temp_of(after) - temp_of(before)) * (day - before) / (
        after - before
    )
    temp[30] = temp[31]  # the first test row
    return np.stack([level, DAYS.astype(float), temp], axis=1)


def write(folder: Path, kind: str, cols: dict[str, list[Any]] | None = None) -> Path:
    """The table as a CSV (dates as text, empty cells) or Parquet (timestamps, nulls)."""
    cols = table() if cols is None else cols
    if kind == "csv":
        path = folder / "series.csv"
        lines = [",".join(cols)]
        for row in zip(*cols.values(), strict=True):
            lines.append(",".join("" if v is None else str(v) for v in row))
        path.write_text("\n".join(lines) + "\n")
        return path
    path = folder / "series.parquet"
    stamps = [dt.datetime.combine(d, dt.time(12)) for d in cols["date"]]
    arrays = {**cols, "date": pa.array(stamps, pa.timestamp("s"))}
    pq.write_table(pa.table(arrays), path)
    return path


def config(path: Path, **params: Any) -> Series.Config:
    defaults: dict[str, Any] = dict(
        path=str(path),
        time="date",
        targets=["level", "clock"],
        covariates=["temp"],
        window=4,
        horizon=2,
        val_fraction=0.25,
        test_fraction=0.25,
    )
    return Series.Config(**{**defaults, **params})


def raw_inputs(split: Split, norm: dict[str, Any]) -> np.ndarray:
    """The rows a stride-1 split's inputs cover, back in the file's units."""
    rows = np.concatenate([split.x[:, 0], split.x[-1, 1:]])
    return rows * np.array(norm["std"]) + np.array(norm["mean"])


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_rows_are_sorted_filled_in_time_and_split_by_time(kind: str, tmp_path: Path) -> None:
    path = write(tmp_path, kind)
    data = Series().load(config(path), seed=0)
    spec, want = data.spec, expected()
    window, horizon = 4, 2
    bounds = {"train": (0, 20), "val": (20, 30), "test": (30, 40)}
    times: dict[str, np.ndarray] = {}
    for name, (start, end) in bounds.items():
        split = getattr(data, name)
        assert isinstance(split, Split)
        count = end - start - window - horizon + 1  # every window inside the split
        assert split.x.shape == (count, window, 3) and split.y.shape == (count, horizon, 2)
        assert split.x.dtype == np.float32 and split.y.dtype == np.float32
        # sorted, and filled: the inputs cover the split's rows but its last `horizon`
        got = raw_inputs(split, spec.normalisation)
        np.testing.assert_allclose(got, want[start : end - horizon], atol=1e-4)
        # targets are the next `horizon` rows of the target columns, in the inputs' units
        y = split.y * np.array(spec.normalisation["std"][:2]) + spec.normalisation["mean"][:2]
        np.testing.assert_allclose(y[-1], want[end - horizon : end, :2], atol=1e-4)
        x_days = split.x[..., 1] * spec.normalisation["std"][1] + spec.normalisation["mean"][1]
        y_days = split.y[..., 1] * spec.normalisation["std"][1] + spec.normalisation["mean"][1]
        np.testing.assert_allclose(y_days[:, 0], DAYS[start + window : end - 1], atol=1e-3)
        times[name] = np.concatenate([x_days.ravel(), y_days.ravel()])
    # every sample of every window lies in its split's time range; the edges are used
    assert times["train"].max() < times["val"].min() and times["val"].max() < times["test"].min()
    assert times["train"].max() == pytest.approx(DAYS[19], abs=1e-3)
    assert times["val"].min() == pytest.approx(DAYS[20], abs=1e-3)
    assert times["test"].max() == pytest.approx(DAYS[39], abs=1e-3)
    # standardised by the train rows alone; each target's outputs carry its channel's numbers
    train = want[:20]
    assert spec.normalisation["mean"] == pytest.approx(train.mean(0).tolist())
    assert spec.normalisation["std"] == pytest.approx(train.std(0).tolist())
    assert spec.normalisation["mean"][0] < want[:, 0].mean() - 10  # the level rises over time
    assert spec.target_normalisation["mean"] == pytest.approx(horizon * train.mean(0)[:2].tolist())
    assert spec.input_shape == (window, 3) and spec.output_dim == 4
    assert spec.feature_names == ("level", "clock", "temp")
    assert spec.target_names == ("level t+1", "clock t+1", "level t+2", "clock t+2")


def test_ffill_drop_stride_and_a_single_target(tmp_path: Path) -> None:
    path = write(tmp_path, "csv")
    filled = Series().load(config(path, missing="ffill"), seed=0)
    got = raw_inputs(filled.train, filled.spec.normalisation)  # type: ignore[arg-type]
    level = got[:, 0]
    assert level[0] == pytest.approx(2 * DAYS[1] + 1)  # leading: filled backward
    assert level[4] == pytest.approx(2 * DAYS[3] + 1)  # held, not interpolated
    assert level[6] == level[7] == pytest.approx(2 * DAYS[5] + 1)

    dropped = Series().load(config(path, missing="drop", window=3, horizon=1), seed=0)
    kept = [i for i in range(ROWS) if i not in LEVEL_GONE + TEMP_GONE]  # 32 rows: 16, 8, 8
    days = raw_inputs(dropped.train, dropped.spec.normalisation)[:, 1]  # type: ignore[arg-type]
    np.testing.assert_allclose(days, DAYS[kept[:15]], atol=1e-4)

    one = Series().load(config(path, targets=["level"], stride=3), seed=0)
    train = one.train
    assert isinstance(train, Split)
    assert train.x.shape == (5, 4, 2) and train.y.shape == (5, 2)  # starts 0, 3, ..., 12
    assert one.spec.target_names == ("level t+1", "level t+2")
    np.testing.assert_array_equal(train.y[1], train.x[2, 1:3, 0])  # rows 7 and 8


def test_windows_stream_above_the_memory_limit(tmp_path: Path) -> None:
    path = write(tmp_path, "parquet")
    memory = Series().load(config(path), seed=0)
    streamed = Series().load(config(path, memory_limit_mb=0), seed=0)
    assert streamed.spec == memory.spec
    for name in ("train", "val", "test"):
        split, stream = getattr(memory, name), getattr(streamed, name)
        assert isinstance(stream, Stream) and len(stream) == len(split)
        dataset = pickle.loads(pickle.dumps(stream.dataset))  # as a loader worker gets it
        for i in range(len(split)):
            x, y = dataset[i]
            np.testing.assert_array_equal(x, split.x[i])
            np.testing.assert_array_equal(y, split.y[i])
        np.testing.assert_array_equal(stream.labels, split.y)
        with pytest.raises(IndexError):
            dataset[len(split)]


def _run_spec(path: Path, **params: Any) -> Any:
    return validate(
        {
            "name": "series-tiny",
            "data": {
                "plugin": "series",
                "params": {
                    "path": str(path),
                    "time": "date",
                    "window": 4,
                    "horizon": 2,
                    "val_fraction": 0.25,
                    "test_fraction": 0.25,
                    **params,
                },
            },
            "model": {"plugin": "rnn", "params": {"cell": "gru", "hidden": 8}},
            "train": {"max_epochs": 1, "limit_batches": 2, "batch_size": 4},
            "compute": {"accelerator": "cpu"},
            "export": {"onnx": False},
        }
    )


def test_a_run_scores_the_naive_forecast_of_each_target(workdir: Path) -> None:
    """The naive forecast (each target's last input value, held over the horizon) is scored on
    the test windows, each target against its own channel; the windows are streamed."""
    path = write(workdir, "csv")
    spec = _run_spec(path, targets=["level", "temp"], covariates=["clock"], memory_limit_mb=0)
    spec = spec.model_copy(update={"export": spec.export.model_copy(update={"onnx": True})})
    assert isinstance(Series().load(spec.data_config(), 0).test, Stream)
    result = orchestrator.run(spec)
    in_memory = spec.data_config().model_copy(update={"memory_limit_mb": 256.0})
    test = Series().load(in_memory, 0).test
    assert isinstance(test, Split) and test.y.shape[1:] == (2, 2)
    naive = float(((test.x[:, -1, None, :2] - test.y) ** 2).mean())
    channel_0_only = float(((test.x[:, -1, None, :1] - test.y) ** 2).mean())
    assert naive < channel_0_only / 2  # the temperature is not forecast from the level
    m = result.metrics
    assert m["test/naive_mse"] == pytest.approx(naive, rel=1e-5)
    assert m["test/mse_vs_naive"] == pytest.approx(m["test/mse"] / naive, rel=1e-5)

    # served forecasts come back in the targets' own units, named by target and step
    import onnxruntime as ort

    from plexa.serving.model import load

    served = load(result.export.path, "series", str(result.export.path))
    x = np.ascontiguousarray(test.x[:3], dtype=np.float32)
    out = ort.InferenceSession(str(result.export.path)).run(["output"], {"input": x})[0]
    norm = Series().load(in_memory, 0).spec.target_normalisation
    expected = out * np.asarray(norm["std"]) + np.asarray(norm["mean"])
    rows = served.readable(out)
    assert list(rows[0]["values"]) == ["level t+1", "temp t+1", "level t+2", "temp t+2"]
    got = np.array([list(r["values"].values()) for r in rows])
    np.testing.assert_allclose(got, expected, rtol=1e-6)


# ------------------------------------------------------------------ bad files


def _with(cols: dict[str, list[Any]], column: str, row: int, value: Any) -> dict[str, list[Any]]:
    """The table with one cell (file row `row`, from 1) replaced."""
    changed = {k: list(v) for k, v in cols.items()}
    changed[column][row - 1] = value
    return changed


@pytest.mark.parametrize(
    ("make", "params", "message"),
    [
        (lambda d: write(d, "csv"), {"path": "gone.csv"}, "no such file '.*gone.csv'"),
        (
            lambda d: write(d, "parquet"),
            {"covariates": ["temp", "rain"]},
            r"series.parquet: no column 'rain' \(data.params.covariates\); its columns are: "
            "date, level, clock, temp",
        ),
        (
            lambda d: write(d, "csv", _with(table(), "temp", 7, "warm")),
            {},
            r"series.csv, row 7, column 'temp' \(data.params.covariates\): expected a number, "
            "got 'warm'",
        ),
        (
            lambda d: write(d, "csv", _with(table(), "date", 3, "2024/01/05")),
            {},
            "series.csv, row 3, column 'date': cannot read '2024/01/05' as a time like row 1's",
        ),
        (
            lambda d: write(d, "parquet", _with(table(), "date", 9, table()["date"][2])),
            {},
            "series.parquet: rows 3 and 9 have the same time 2024-.*; each time may appear once",
        ),
        (
            lambda d: write(d, "csv"),
            {"window": 9},
            r"the val split has 10 rows \(times 2024-01-26 to 2024-02-06\), fewer than "
            r"window \+ horizon = 11 \(data.params.window, horizon\); the file has 40 rows",
        ),
        (
            lambda d: write(d, "csv", _with(table(), "level", 5, "inf")),
            {},
            "row 5, column 'level': expected a finite number, got inf",
        ),
    ],
    ids=["no-file", "no-column", "not-a-number", "bad-time", "same-time", "too-few", "inf"],
)
def test_bad_files_are_data_errors(make: Any, params: dict, message: str, tmp_path: Path) -> None:
    path = make(tmp_path)
    given = dict(params)
    with pytest.raises(DataError, match=message):
        cfg = config(tmp_path / given.pop("path", path.name), **given)
        Series().load(cfg, seed=0)


def test_the_plexa_command_refuses_bad_files_with_exit_2(tmp_path: Path) -> None:
    """Every value is checked when the pipeline is validated, so `plexa run` stops there,
    before anything trains; `plexa validate` names a missing column with those there are."""
    write(tmp_path, "csv", _with(table(), "temp", 7, "warm"))
    pipeline = tmp_path / "series.yaml"
    pipeline.write_text(
        "name: series-bad\n"
        "data: {plugin: series, params: {path: series.csv, time: date, targets: [level],\n"
        "  covariates: [temp], window: 4, horizon: 2}}\n"
        "model: {plugin: rnn}\ntrain: {max_epochs: 1}\n"
    )
    word = (
        "series.csv, row 7, column 'temp' (data.params.covariates): expected a number, got 'warm'"
    )
    cases = [
        (["run", str(pipeline)], word),
        (
            ["validate", str(pipeline), "data.params.targets=[sales]"],
            "no column 'sales' (data.params.targets); its columns are: date, level, clock, temp",
        ),
    ]
    for args, message in cases:
        done = plexa(*args, cwd=tmp_path)
        output = done.stdout + done.stderr
        assert done.returncode == 2, output
        errors = [line for line in done.stdout.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and message in errors[0], output
        assert "Traceback" not in output
    assert not (tmp_path / "plexa-runs").exists() and not (tmp_path / "mlruns").exists()
