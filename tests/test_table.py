"""The `table` data plugin on tables each test writes: text categories, true/false, numbers with
missing values, a missing target; CSV, TSV, Parquet, JSON lines, folders and globs; in memory
and streamed; bad data; and `plexa serve` taking raw rows of a table model."""

from __future__ import annotations

import json
import logging
import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from plexa import DataError, orchestrator
from plexa.config import load_pipeline, validate
from plexa.plugins import Batch, Split, Stream
from plexa.serving import resolve_all
from plexa.serving.app import create_app
from plexa.serving.model import load
from plexa.serving.protocol import encode_rows
from plexa_data.table import Encoder, Table, TableRows

from .conftest import PIPELINES, plexa

SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("island", pa.string()),
        ("bill", pa.float64()),
        ("flipper", pa.int64()),
        ("sex", pa.string()),
        ("tagged", pa.bool_()),
        ("species", pa.string()),
    ]
)
NUMBERS, CATEGORIES = ("id", "bill", "flipper"), ("island", "sex", "tagged")


def _rows(n: int = 150) -> list[dict[str, Any]]:
    """Penguin-like rows: species follows bill and flipper; gaps in island, bill and sex;
    row 5 has no species; twelve islands appear once each (unseen wherever that row is not in
    training)."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        k = i % 3
        rows.append(
            {
                "id": i,
                "island": None
                if i % 11 == 0
                else ["Biscoe", "Dream", "Torgersen"][(k + i % 2) % 3],
                "bill": None if i % 7 == 0 else round(38 + 5 * k + float(rng.normal()), 2),
                "flipper": 180 + 12 * k + int(rng.integers(0, 6)),
                "sex": None if i % 13 == 0 else ["male", "female"][i % 2],
                "tagged": i % 4 == 0,
                "species": None if i == 5 else ["Adelie", "Chinstrap", "Gentoo"][k],
            }
        )
    for j in range(12):
        rows[20 + 9 * j]["island"] = f"Rare{j}"
    return rows


def _write(rows: list[dict[str, Any]], path: Path) -> Path:
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        pcsv.write_csv(table, path)
    elif path.suffix == ".tsv":
        pcsv.write_csv(table, path, pcsv.WriteOptions(delimiter="\t"))
    elif path.suffix == ".parquet":
        pq.write_table(table, path, row_group_size=16)  # several row groups to stream from
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _load(path: Path | str, **params: Any):
    return Table().load(Table.Config(path=str(path), target="species", **params), seed=0)


def _reference(rows: list[dict[str, Any]], train: list[int]) -> Any:
    """The encoding the plugin documents, written out plainly from the training rows."""
    fitted = [rows[i] for i in train]

    def text(v: Any) -> str:
        return ("true" if v else "false") if isinstance(v, bool) else str(v)

    stats = {}
    for c in NUMBERS:
        seen = np.array([r[c] for r in fitted if r[c] is not None], dtype=np.float64)
        missing = any(r[c] is None for r in fitted)
        stats[c] = (seen.mean(), seen.std() or 1.0, missing)
    for c in CATEGORIES:
        vocabulary = sorted({text(r[c]) for r in fitted if r[c] is not None})
        stats[c] = (vocabulary, any(r[c] is None for r in fitted))

    def encode(row: dict[str, Any]) -> list[float]:
        out: list[float] = []
        for c in ("id", "island", "bill", "flipper", "sex", "tagged"):
            v = row[c]
            if c in NUMBERS:
                mean, std, missing = stats[c]
                out.append(0.0 if v is None else (v - mean) / std)
                out += [float(v is None)] if missing else []
            else:
                vocabulary, missing = stats[c]
                slots = [0.0] * (len(vocabulary) + 1 + missing)
                if v is None and missing:
                    slots[-1] = 1.0
                elif v is not None and text(v) in vocabulary:
                    slots[vocabulary.index(text(v))] = 1.0
                else:
                    slots[len(vocabulary)] = 1.0  # unknown
                out += slots
        return out

    return stats, encode


def _ids(split: Split, spec: dict[str, Any]) -> list[int]:
    """Each encoded row's id, from its standardised id feature (the first column)."""
    first = spec["columns"][0]
    return [round(float(v)) for v in split.x[:, 0] * first["std"] + first["mean"]]


def test_everything_is_fitted_on_the_training_rows_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = _rows()
    with caplog.at_level(logging.WARNING):
        data = _load(_write(rows, tmp_path / "penguins.csv"))
    assert "left out 1 row(s) whose target 'species' is missing" in caplog.text
    spec = data.spec
    assert all(isinstance(s, Split) for s in (data.train, data.val, data.test))
    assert spec.task == "classification" and spec.class_names == ("Adelie", "Chinstrap", "Gentoo")
    norm = spec.normalisation
    assert norm["kind"] == "table" and json.loads(json.dumps(norm)) == norm
    ids = [_ids(s, norm) for s in (data.train, data.val, data.test)]
    assert sorted(sum(ids, [])) == [i for i in range(len(rows)) if i != 5]

    stats, encode = _reference(rows, ids[0])
    columns = {c["name"]: c for c in norm["columns"]}
    for c in NUMBERS:
        mean, std, missing = stats[c]
        assert columns[c]["mean"] == pytest.approx(mean) and columns[c]["std"] == pytest.approx(std)
        assert columns[c]["missing"] is missing
    for c in CATEGORIES:
        assert (columns[c]["values"], columns[c]["missing"]) == stats[c]
    assert columns["bill"]["missing"] and not columns["flipper"]["missing"]
    assert "bill:missing" in spec.feature_names and "island:unknown" in spec.feature_names
    unknown = spec.feature_names.index("island:unknown")
    unseen = 0
    for split, split_ids in zip((data.train, data.val, data.test), ids, strict=True):
        expected = np.array([encode(rows[i]) for i in split_ids], dtype=np.float32)
        np.testing.assert_allclose(split.x, expected, rtol=0, atol=1e-5)
        labels = [spec.class_names.index(rows[i]["species"]) for i in split_ids]
        assert split.y.tolist() == labels
        if split is not data.train:
            unseen += int(split.x[:, unknown].sum())
    assert data.train.x[:, unknown].sum() == 0 and unseen >= 1  # Rare* seen only out of training

    # the same table as regression: flipper is the target (standardised), species a category
    regression = Table().load(
        Table.Config(path=str(tmp_path / "penguins.csv"), target="flipper"), 0
    )
    assert regression.spec.task == "regression" and regression.spec.target_names == ("flipper",)
    y = regression.train.y
    assert y.shape == (len(regression.train), 1) and abs(y.mean()) < 1e-6
    assert abs(y.std() - 1) < 1e-5
    assert "species=Gentoo" in regression.spec.feature_names
    assert set(regression.spec.target_normalisation) == {"mean", "std"}


def _same_columns(a: dict[str, Any], b: dict[str, Any]) -> None:
    """The same preprocessing, the statistics equal up to rounding."""
    assert len(a["columns"]) == len(b["columns"])
    for x, y in zip(a["columns"], b["columns"], strict=True):
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(x[key], float):
                assert x[key] == pytest.approx(y[key], rel=1e-12), (x["name"], key)
            else:
                assert x[key] == y[key], (x["name"], key)


def test_formats_folders_and_globs_read_the_same_table(tmp_path: Path) -> None:
    rows = _rows()
    one = _load(_write(rows, tmp_path / "one.csv"))
    _write(rows[:70], tmp_path / "parts" / "a.parquet")
    _write(rows[70:], tmp_path / "parts" / "b.parquet")
    _write(rows[:70], tmp_path / "csvs" / "a.csv")
    _write(rows[70:], tmp_path / "csvs" / "sub" / "b.csv")
    (tmp_path / "csvs" / "notes.txt").write_text("not a table")
    others = {
        "tsv": _load(_write(rows, tmp_path / "one.tsv")),
        "parquet": _load(_write(rows, tmp_path / "one.parquet")),
        "jsonl": _load(_write(rows, tmp_path / "one.jsonl")),
        "folder": _load(tmp_path / "csvs"),
        "glob": _load(tmp_path / "parts" / "*.parquet"),
    }
    for name, other in others.items():
        assert other.spec.feature_names == one.spec.feature_names, name
        _same_columns(other.spec.normalisation, one.spec.normalisation)
        pairs = zip(
            (one.train, one.val, one.test), (other.train, other.val, other.test), strict=True
        )
        for a, b in pairs:
            np.testing.assert_allclose(b.x, a.x, rtol=0, atol=1e-6, err_msg=name)
            assert b.y.tolist() == a.y.tolist(), name


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_a_table_over_its_memory_limit_streams_the_rows_it_would_hold(
    tmp_path: Path, suffix: str
) -> None:
    path = _write(_rows(), tmp_path / f"penguins{suffix}")
    memory = _load(path)
    streamed = _load(path, memory_limit_mb=0.001)
    _same_columns(streamed.spec.normalisation, memory.spec.normalisation)
    assert streamed.spec.feature_names == memory.spec.feature_names
    splits = (memory.train, memory.val, memory.test), (streamed.train, streamed.val, streamed.test)
    for held, stream in zip(*splits, strict=True):
        assert isinstance(stream, Stream) and isinstance(stream.dataset, TableRows)
        assert stream.labels.tolist() == held.y.tolist()
        rows = pickle.loads(pickle.dumps(stream.dataset))  # as a loader worker gets it
        assert rows._sidecars == {}  # nothing opened before a row is asked for
        x = np.stack([rows[i][0] for i in range(len(rows))])
        np.testing.assert_allclose(x, held.x, rtol=0, atol=1e-6)
        assert [int(rows[i][1]) for i in range(len(rows))] == held.y.tolist()
        # a batch read at once (the loaders' batched fetch), in an order crossing row groups
        order = np.random.default_rng(1).permutation(len(rows))
        batch = rows.__getitems__(order.tolist())
        assert isinstance(batch, Batch) and batch.x.dtype == np.float32
        np.testing.assert_array_equal(batch.x, x[order])
        assert batch.y.tolist() == held.y[order].tolist()
        # of each row group read, a split with at most half its rows encoded and kept only
        # those, a larger one the whole group
        metas = [pq.read_metadata(f) for f in rows.files]
        sizes = [m.row_group(i).num_rows for m in metas for i in range(m.num_row_groups)]
        kept = {g: len(x) for g, (x, _) in rows._decoded.items()}
        assert kept
        for g, n in kept.items():
            mine = int(rows.firsts[g + 1] - rows.firsts[g])
            assert n == (sizes[g] if 2 * mine > sizes[g] else mine)
    cache = list((tmp_path / ".plexa-cache").glob("*.parquet"))
    assert len(cache) == (suffix == ".csv")  # Parquet in small row groups is read in place


@pytest.fixture(scope="module")
def streamed_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, list[dict[str, Any]]]:
    """A small model trained on a table streamed from Parquet, exported to ONNX."""
    folder = tmp_path_factory.mktemp("streamed")
    rows = _rows()
    _write(rows, folder / "penguins.parquet")
    raw = {
        "name": "penguins-stream",
        "data": {
            "plugin": "table",
            "params": {"path": "penguins.parquet", "target": "species", "memory_limit_mb": 0.001},
            "loader": {"workers": 0},
        },
        "model": {"plugin": "mlp", "params": {"hidden": [16]}},
        "train": {"max_epochs": 1, "limit_batches": 2, "batch_size": 16},
        "compute": {"accelerator": "cpu"},
    }
    spec = validate(raw, base_dir=folder)
    splits = Table().load(spec.data_config(), spec.train.seed)
    assert all(isinstance(s, Stream) for s in (splits.train, splits.val, splits.test))
    return orchestrator.run(spec), splits, rows


def test_a_streamed_table_trains_and_exports(streamed_run: tuple[Any, Any]) -> None:
    result, _, _ = streamed_run
    assert result.status == "FINISHED" and "test/acc" in result.metrics
    assert result.export.path.exists() and result.export.max_abs_diff <= 1e-4


def _ready(app: TestClient) -> TestClient:
    for _ in range(500):
        if app.get("/v2/health/ready").status_code == 200:
            return app
        time.sleep(0.02)
    raise TimeoutError("app not ready")


def test_predict_takes_raw_rows_of_a_table_model(streamed_run: tuple[Any, Any]) -> None:
    result, splits, rows = streamed_run
    path = result.export.path
    norm = load(path, "m", str(path)).normalisation  # what the server reads from the export
    odd = [
        {"island": "Atlantis", "bill": None, "flipper": 195, "sex": None, "tagged": True},
        {"id": 3, "bill": 41.5},  # the columns left out are missing
    ]
    raw = [*rows, *odd]  # rows hold their species too: the target is ignored
    by_plugin = Encoder(norm)(pa.Table.from_pylist(raw, schema=SCHEMA))
    np.testing.assert_array_equal(encode_rows(norm, raw).astype(np.float32), by_plugin)
    test = splits.test.dataset  # the rows as training read them (row number = id)
    np.testing.assert_array_equal(
        np.stack([test[i][0] for i in range(len(test))]), by_plugin[test.rows]
    )
    features = json.loads(load(path, "m", str(path)).metadata["feature_names"])
    atlantis = dict(zip(features, by_plugin[-2], strict=True))
    assert atlantis["island:unknown"] == atlantis["bill:missing"] == atlantis["sex:missing"] == 1
    assert atlantis["bill"] == 0  # the training mean

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = session.run(["output"], {"input": by_plugin})[0]
    names = json.loads(session.get_modelmeta().custom_metadata_map["class_names"])
    with TestClient(create_app(resolve_all([str(path)]))) as app:
        response = _ready(app).post("/predict", json={"inputs": raw})
        assert response.status_code == 200, response.text
        predictions = response.json()["predictions"]
        assert [p["label"] for p in predictions] == [names[k] for k in logits.argmax(1)]
        for p, row in zip(predictions, logits, strict=True):
            expected = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
            assert p["probabilities"] == pytest.approx(
                dict(zip(names, expected, strict=True)), abs=1e-5
            )
        one = app.post("/predict", json={"inputs": odd[0]}).json()["predictions"]
        encoded = app.post("/predict", json={"inputs": by_plugin[-2:].tolist(), "normalised": True})
        for again, before in (
            (one, predictions[-2:-1]),
            (encoded.json()["predictions"], predictions[-2:]),
        ):
            assert [p["label"] for p in again] == [p["label"] for p in before]
            for p, q in zip(again, before, strict=True):
                assert p["probabilities"] == pytest.approx(q["probabilities"], abs=1e-5)

        for row, phrase in (
            (
                {"bill": "long"},
                "inputs[0].bill: column 'bill' takes a number or null, not a string",
            ),
            ({"island": 3}, "column 'island' takes text or null, not a number"),
            ({"tagged": "yes"}, "column 'tagged' takes true/false or null, not a string"),
            ({"beak": 1.0}, "inputs[0]: unknown column 'beak' (the model takes: id, island, bill"),
        ):
            refused = app.post("/predict", json={"inputs": [row]})
            assert refused.status_code == 400 and phrase in refused.json()["error"], refused.text


def test_the_penguins_pipeline_reads_the_packaged_table() -> None:
    spec = load_pipeline(PIPELINES / "penguins-table.yaml")
    data = Table().load(spec.data_config(), spec.train.seed)
    assert data.spec.class_names == ("Adelie", "Chinstrap", "Gentoo")
    assert len(data.train) + len(data.val) + len(data.test) == 344
    names = data.spec.feature_names
    assert {"island=Biscoe", "island=Dream", "island=Torgersen", "island:unknown"} <= set(names)
    assert {"sex=female", "sex=male", "sex:missing", "bill_length_mm:missing"} <= set(names)
    # the features carry the species: a linear fit on the training split alone separates them
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a busy machine's many threads would only wait on each other
    try:
        torch.manual_seed(0)
        net = torch.nn.Linear(len(names), 3)
        opt = torch.optim.Adam(net.parameters(), lr=0.05)
        x, y = torch.from_numpy(data.train.x), torch.from_numpy(data.train.y)
        for _ in range(150):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
        predicted = net(torch.from_numpy(data.test.x)).argmax(1).numpy()
    finally:
        torch.set_num_threads(threads)
    assert (predicted == data.test.y).mean() >= 0.95


# --------------------------------------------------------------------------- bad data


def _csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _bad_number(d: Path) -> Path:
    lines = ["id,bill,species", *(f"{i},{40 + i},A" for i in range(12))]
    lines[8] = "7,long,A"
    return _csv(d / "t.csv", "\n".join(lines) + "\n\n")


def _bad_json(d: Path) -> Path:
    text = "".join(json.dumps({"bill": 40.0 + i, "species": "A"}) + "\n" for i in range(12))
    return _csv(d / "t.jsonl", text + '\n{"bill": "x", "species": "B"}\n')


def _infinite(d: Path) -> Path:
    table = pa.table({"bill": [1.0] * 11 + [float("inf")], "species": ["A", "B"] * 6})
    pq.write_table(table, d / "t.parquet")
    return d / "t.parquet"


BAD: list[tuple[str, Any, dict[str, Any], str]] = [
    ("missing", lambda d: d / "gone.parquet", {}, "no such Parquet file '"),
    ("empty", lambda d: _csv(d / "t.csv", ""), {}, "t.csv is empty: expected a header row"),
    ("no rows", lambda d: _csv(d / "t.csv", "a,species\n"), {}, "0 data rows; at least 10"),
    (
        "no target",
        lambda d: _write(_rows(), d / "t.parquet"),
        {"target": "kind"},
        "column 'kind': no such column (data.params.target); its columns: id, island, bill,",
    ),
    ("bad number", _bad_number, {}, "t.csv, line 9, column 'bill': expected a number, got 'long'"),
    (
        "bad number, streamed",
        _bad_number,
        {"memory_limit_mb": 1e-6},
        "t.csv, line 9, column 'bill': expected a number, got 'long'",
    ),
    (
        "bad JSON type",
        _bad_json,
        {},
        "t.jsonl, line 14, column 'bill': expected a number (as on line 1), got \"x\"",
    ),
    (
        "bad JSON",
        lambda d: _csv(d / "t.jsonl", '{"bill": 1, "species": "A"}\n{"bill": 2,\n'),
        {},
        "t.jsonl, line 2: not JSON",
    ),
    (
        "short row",
        lambda d: _csv(d / "t.csv", "a,species\n1,A\n2\n"),
        {},
        "t.csv, line 3: 1 values, but the header (line 1) names 2 columns",
    ),
    ("infinite", _infinite, {}, "t.parquet, row 12, column 'bill': expected a finite number"),
    (
        "no targets",
        lambda d: _csv(d / "t.csv", "a,species\n" + "1,\n" * 12),
        {},
        "every row's target 'species' is missing",
    ),
    (
        "too many categories",
        lambda d: _write(_rows(), d / "t.parquet"),
        {"max_categories": 4},
        "column 'island': more than 4 distinct values in the training rows",
    ),
    ("no package", lambda d: "package:no_such_pkg/t.csv", {}, "no installed package 'no_such_pkg'"),
]


@pytest.mark.parametrize(
    ("make", "params", "phrase"), [c[1:] for c in BAD], ids=[c[0] for c in BAD]
)
def test_bad_data_names_the_file_the_line_and_the_column(
    tmp_path: Path, make: Any, params: dict[str, Any], phrase: str
) -> None:
    path = make(tmp_path)
    with pytest.raises(DataError) as caught:
        config = Table.Config(path=str(path), **{"target": "species", **params})
        Table().load(config, seed=0)
    assert phrase in str(caught.value)


def test_the_plexa_command_reports_bad_table_data_in_one_line(tmp_path: Path) -> None:
    _bad_json(tmp_path)
    (tmp_path / "p.yaml").write_text(
        "name: t\ndata: {plugin: table, params: {path: t.jsonl, target: species}}\n"
        "model: {plugin: mlp}\n"
    )
    done = plexa("validate", "p.yaml", cwd=tmp_path, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "t.jsonl, line 14, column 'bill': expected a number (as on line 1), got" in output
    assert len(output.strip().splitlines()) == 1 and "Traceback" not in output
