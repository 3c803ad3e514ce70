"""Ray Data splits: a data plugin that reads Parquet files with `ray.data.read_parquet` trains
on the ray runner (each Ray Train worker reads its own streaming split, the workers' parts
disjoint and together the whole training split) and on the local runner, unchanged; what
cannot work with it (federated clients, workers that leave Ray Data no CPU) is refused before
anything starts."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import lightning as L
import mlflow
import numpy as np
import pytest

from plexa import orchestrator
from plexa.config import PipelineSpec, load_pipeline
from plexa.errors import UserError
from plexa.plugins import DataPlugin, DataSpec, DataSplits, PluginConfig, RayDataset, Stream, data

from .conftest import PIPELINES

pytestmark = pytest.mark.slow

ROWS = {"train": 1200, "val": 300, "test": 300}  # even: two workers get every training row
FEATURES = tuple(f"f{i}" for i in range(6))
CLASSES = 3


def write_parquet(folder: Path) -> dict[bytes, int]:
    """Three blobs in six dimensions, one Parquet file per split with an `id` column; returns
    each row's inputs (as the model sees them, float32 bytes) -> its id."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    total = sum(ROWS.values())
    centres = rng.normal(0, 3, (CLASSES, len(FEATURES)))
    y = rng.integers(0, CLASSES, total)
    x = (centres[y] + rng.normal(0, 1, (total, len(FEATURES)))).astype(np.float32)
    start = 0
    for stage, rows in ROWS.items():
        part = slice(start, start + rows)
        columns = {"id": np.arange(start, start + rows), "y": y[part]}
        columns |= {name: x[part, i] for i, name in enumerate(FEATURES)}
        pq.write_table(pa.table(columns), folder / f"{stage}.parquet")
        start += rows
    return {row.tobytes(): i for i, row in enumerate(x)}


@data("blobs-parquet", override=True)
class BlobsParquet(DataPlugin):
    """Splits read from Parquet files by Ray Data, never loaded whole."""

    class Config(PluginConfig):
        folder: str

    def task(self, config: Config) -> str:
        return "classification"

    def uses_ray(self, config: Config) -> bool:
        return True

    def load(self, config: Config, seed: int) -> DataSplits:
        import ray.data

        splits = [
            Stream(
                RayDataset(
                    ray.data.read_parquet(str(Path(config.folder) / f"{stage}.parquet")),
                    features=FEATURES,
                    label="y",
                    shuffle_buffer=256,
                )
            )
            for stage in ROWS
        ]
        spec = DataSpec("classification", input_shape=(len(FEATURES),), num_classes=CLASSES)
        return DataSplits(spec, *splits, source=config.folder)


class TrainedRows(L.Callback):
    """Writes the ids of the rows each rank trained on, per epoch, to `folder` (a Ray Train
    worker is a process of its own): `rank-R-epoch-E.json`."""

    def __init__(self, folder: Path, ids: dict[bytes, int]) -> None:
        self.folder, self.ids = folder, ids
        self.seen: list[int] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.seen = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, idx: int):
        x, _ = batch
        self.seen += [self.ids[row.tobytes()] for row in x.cpu().numpy()]

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        name = f"rank-{trainer.global_rank}-epoch-{trainer.current_epoch}.json"
        (self.folder / name).write_text(json.dumps(self.seen))


def spec_for(folder: Path, *overrides: str) -> PipelineSpec:
    return load_pipeline(
        PIPELINES / "digits-mlp.yaml",
        [
            "data.plugin=blobs-parquet",
            f"data.params={{folder: {folder}}}",
            "model.params.hidden=[32]",
            "train.optimizer.lr=0.02",
            "train.max_epochs=2",
            "export.register_as=null",
            *overrides,
        ],
    )


def read_rows(folder: Path, rank: int, epoch: int) -> list[int]:
    return json.loads((folder / f"rank-{rank}-epoch-{epoch}.json").read_text())


def test_two_ray_workers_each_read_their_own_streaming_split(workdir: Path) -> None:
    ids = write_parquet(workdir)
    seen = workdir / "seen"
    seen.mkdir()
    spec = spec_for(
        workdir,
        "compute.runner=ray",
        "compute.workers=2",
        "compute.cpus_per_worker=0.5",  # of the 2 CPUs Ray starts with, 1 for Ray Data's reads
    )
    result = orchestrator.run(spec, callbacks=[TrainedRows(seen, ids)])

    assert result.status == "FINISHED"
    train_ids = set(range(ROWS["train"]))
    for epoch in (0, 1):
        ranks = [read_rows(seen, rank, epoch) for rank in (0, 1)]
        assert [len(r) for r in ranks] == [ROWS["train"] // 2] * 2
        assert all(len(set(r)) == len(r) for r in ranks)  # no row twice in an epoch
        assert not set(ranks[0]) & set(ranks[1])  # disjoint parts
        assert set(ranks[0]) | set(ranks[1]) == train_ids  # the whole training split
    assert result.metrics["test/acc"] > 0.8  # the label column is the one trained on
    assert result.export is not None and result.export.max_abs_diff <= 1e-4
    assert result.export.path.exists()
    # the run's dataset inputs: each split's rows, counted and labels read from Ray Data
    run = mlflow.MlflowClient().get_run(result.run_id)
    rows = {
        json.loads(i.dataset.profile)["num_rows"]
        for i in run.inputs.dataset_inputs
        if i.dataset.name.startswith("blobs-parquet-")
    }
    assert rows == set(ROWS.values())
    assert run.data.params["data.train_size"] == str(ROWS["train"])
    artifacts = [a.path for a in mlflow.MlflowClient().list_artifacts(result.run_id, "plots")]
    assert "plots/confusion_matrix.png" in artifacts


def test_the_same_plugin_trains_on_the_local_runner(workdir: Path) -> None:
    import ray

    ids = write_parquet(workdir)
    seen = workdir / "seen"
    seen.mkdir()
    spec = spec_for(workdir, "compute.accelerator=cpu", "export.onnx=false")
    result = orchestrator.run(spec, callbacks=[TrainedRows(seen, ids)])

    assert result.status == "FINISHED"
    assert result.metrics["test/acc"] > 0.8
    first, second = read_rows(seen, 0, 0), read_rows(seen, 0, 1)
    assert sorted(first) == sorted(second) == list(range(ROWS["train"]))
    assert first != second  # each epoch shuffled anew
    assert not ray.is_initialized()  # the run stopped the Ray it started


def test_a_federated_pipeline_on_ray_data_is_refused_before_anything_starts(
    workdir: Path,
) -> None:
    import ray

    spec = load_pipeline(
        PIPELINES / "digits-federated.yaml",
        ["data.plugin=blobs-parquet", f"data.params={{folder: {workdir}}}"],
    )
    with pytest.raises(UserError, match="cannot be partitioned between federated clients"):
        orchestrator.run(spec)
    assert not ray.is_initialized()  # refused before the plugin loaded anything


def test_ray_workers_that_leave_ray_data_no_cpu_are_refused_before_anything_starts(
    workdir: Path,
) -> None:
    import ray

    spec = spec_for(workdir, "compute.runner=ray", f"compute.workers={os.cpu_count()}")
    with pytest.raises(UserError, match="lower compute.cpus_per_worker or compute.workers"):
        orchestrator.run(spec)  # Ray Data's reads would wait for a CPU for ever
    assert not ray.is_initialized()
