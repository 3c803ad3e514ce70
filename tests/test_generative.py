"""Image generators (gan, vae, diffusion), the digits scorer, the images data plugin and
`plexa generate`, with real training, real MLflow and real ONNX Runtime at tiny sizes.

The quality bars themselves (score >= 6, >= 9 digits covered) take minutes of training each and
are measured by `benchmarks/zoo.py`; here the scorer is shown to tell digits from noise, and
every generator to train, log its grids and score, export and sample.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
import numpy as np
import onnx
import pytest
from PIL import Image

from plexa import imagegen, orchestrator, scoring
from plexa.config import ConfigError, load_pipeline, validate
from plexa.plugins import architectures, datasets

from .conftest import PIPELINES, plexa

REPO = PIPELINES.parent
EXAMPLE = PIPELINES / "data" / "images-example"
GENERATORS = ("gan", "vae", "diffusion")


@pytest.fixture(scope="module")
def scorer_cache() -> Path:
    """The test session's scorer cache (tests/conftest.py): trained once for the session,
    never taken from the user's cache."""
    return Path(os.environ[scoring.CACHE_ENV])


@pytest.fixture
def cache_env(scorer_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(scoring.CACHE_ENV, str(scorer_cache))
    return scorer_cache


def tiny(name: str, *overrides: str):
    """A shipped generative pipeline cut down to seconds."""
    return load_pipeline(
        PIPELINES / f"{name}.yaml",
        [
            "compute.accelerator=cpu",
            "train.max_epochs=2",
            "train.limit_batches=2",
            "model.params.sample_every=1",
            "model.params.score_samples=50",
            *overrides,
        ],
    )


# ------------------------------------------------------------------ the score


def test_score_is_ten_for_sharp_balanced_classes_and_one_for_a_collapse() -> None:
    sharp = np.eye(10)[np.arange(200) % 10]
    assert scoring.from_probabilities(sharp).score == pytest.approx(10, rel=1e-6)
    assert scoring.from_probabilities(sharp).classes_covered == 10
    collapsed = np.eye(10)[np.zeros(200, dtype=int)]
    result = scoring.from_probabilities(collapsed)
    assert result.score == pytest.approx(1, rel=1e-6) and result.classes_covered == 1
    assert scoring.from_probabilities(np.full((50, 10), 0.1)).score == pytest.approx(1)


def test_scorer_rates_real_digits_far_above_noise(cache_env: Path) -> None:
    from sklearn.datasets import load_digits

    scorer = scoring.digits_scorer(seed=0)
    assert list(cache_env.glob("digits-scorer-*-seed0.pt"))  # cached for the next run
    digits = (load_digits().images / 16.0).astype(np.float32)[:, None]
    real = scoring.score(digits, scorer)
    rng = np.random.default_rng(0)
    noise = scoring.score(rng.random((len(digits), 1, 8, 8), dtype=np.float32), scorer)
    blank = scoring.score(np.zeros((100, 1, 8, 8), np.float32), scorer)
    assert real.score > 8.5 and real.classes_covered == 10 and real.confidence > 0.9
    assert noise.score < 3 and blank.score < 1.5
    with pytest.raises(ValueError, match=r"\(N, 1, 8, 8\)"):
        scoring.score(np.zeros((4, 1, 16, 16), np.float32), scorer)


def test_a_cached_scorer_leaves_the_callers_random_streams_alone(cache_env: Path) -> None:
    import torch

    scoring.digits_scorer(seed=0)  # trained or cached: both must not move the streams
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    scoring.digits_scorer(seed=0)
    assert torch.equal(torch.rand(3), expected)


# ------------------------------------------------------------------ generators


@pytest.mark.parametrize("family", GENERATORS)
def test_generator_trains_logs_grids_and_score_and_exports(
    family: str, workdir: Path, cache_env: Path
) -> None:
    overrides = ("model.params.steps=10",) if family == "diffusion" else ()
    result = orchestrator.run(tiny(f"digits-{family}", *overrides))
    assert result.status == "FINISHED"
    for key in ("test/score", "test/confidence", "test/classes_covered"):
        assert key in result.metrics
    assert 1 <= result.metrics["test/score"] <= 10

    client = mlflow.MlflowClient()
    run = client.get_run(result.run_id)
    assert run.data.metrics["test/score"] == pytest.approx(result.metrics["test/score"])
    grids = {a.path for a in client.list_artifacts(result.run_id, "samples")}
    assert {"samples/samples_epoch001.png", "samples/samples_epoch002.png"} <= grids
    if family == "vae":
        assert "samples/reconstructions_epoch002.png" in grids

    # the export is what generates, and describes itself
    model = onnx.load(str(result.export.path))
    props = {p.key: p.value for p in model.metadata_props}
    meta = json.loads(props["generative"])
    assert props["task"] == "generative" and meta["kind"] == family
    assert meta["image_shape"] == [1, 8, 8]
    inputs = [i.name for i in model.graph.input]
    if family == "diffusion":
        assert inputs == ["input", "timestep"] and len(meta["betas"]) == 10
    else:
        assert inputs == ["input"] and meta["latent_shape"]
    assert result.export.max_abs_diff <= 1e-4

    images = imagegen.sample(result.export.path, n=9, seed=1)
    assert images.shape == (9, 1, 8, 8) and images.min() >= 0 and images.max() <= 1
    if family == "gan":
        check_plexa_generate(result, workdir)


def check_plexa_generate(result, workdir: Path) -> None:
    """`plexa generate` writes a PNG grid from an export file and, the same, from a run id."""
    done = plexa("generate", str(result.export.path), "--out", "grid.png", "--n", "16", cwd=workdir)
    assert done.returncode == 0, done.stderr
    with Image.open(workdir / "grid.png") as png:
        assert png.format == "PNG" and png.size == (4 * (4 * 9 + 1),) * 2  # 4x4 of 8x8, pad 1
        first = np.asarray(png)
    assert first.std() > 0  # not a blank canvas
    done = plexa("generate", result.run_id, "--out", "again.png", "--n", "16", cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert np.array_equal(np.asarray(Image.open(workdir / "again.png")), first)
    other = imagegen.generate(result.export.path, workdir / "other.png", n=16, seed=3)
    assert not np.array_equal(np.asarray(Image.open(other)), first)


def test_plexa_generate_refuses_what_it_cannot_sample(workdir: Path) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["output"])],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 4])],
    )
    model = helper.make_model(graph)
    helper.set_model_props(model, {"task": "classification"})
    onnx.save(model, workdir / "classifier.onnx")
    done = plexa("generate", "classifier.onnx", cwd=workdir)
    assert done.returncode == 2 and "classification export" in done.stdout
    done = plexa("generate", "missing.onnx", cwd=workdir)
    assert done.returncode == 2 and "no ONNX file" in done.stdout
    done = plexa("generate", "0123456789abcdef", cwd=workdir)
    assert done.returncode == 2 and "neither an ONNX file nor a run" in done.stdout


# ------------------------------------------------------------------ images data


def test_images_plugin_reads_the_shipped_example_folder() -> None:
    spec = load_pipeline(PIPELINES / "images-cnn.yaml")
    assert Path(spec.data.params["path"]) == EXAMPLE.resolve()
    data = datasets.create("images").load(spec.data_config(), seed=0)
    assert data.spec.class_names == ("circle", "square", "triangle")
    assert data.spec.input_shape == (1, 24, 24) and data.spec.task == "classification"
    total = len(data.train) + len(data.val) + len(data.test)
    assert total == 120 and len(data.test) == 24
    x = np.stack([data.test.dataset[i][0] for i in range(len(data.test))])  # decoded as read
    assert x.dtype == np.float32 and x.shape == (24, 1, 24, 24) and 0 <= x.min() <= x.max() <= 1
    # every class in every split (stratified), and PNG and JPEG files both read
    for part in (data.train, data.val, data.test):
        assert set(part.labels.tolist()) == {0, 1, 2}
    suffixes = {p.suffix for p in EXAMPLE.rglob("*.*")}
    assert {".png", ".jpg"} <= suffixes


def test_images_plugin_resizes_to_rgb_and_refuses_a_bad_folder(tmp_path: Path) -> None:
    cfg = datasets.get("images").Config.model_validate(
        {"path": str(EXAMPLE), "size": [12, 20], "mode": "rgb"}
    )
    data = datasets.create("images").load(cfg, seed=0)
    assert data.spec.input_shape == (3, 12, 20)

    (tmp_path / "only").mkdir()
    Image.new("L", (4, 4)).save(tmp_path / "only" / "a.png")
    base = {"name": "x", "model": {"plugin": "cnn"}}
    with pytest.raises(ConfigError) as bad:
        validate({**base, "data": {"plugin": "images", "params": {"path": str(tmp_path)}}})
    assert "data.params.path" in str(bad.value) and "at least two class" in str(bad.value)
    with pytest.raises(ConfigError, match="no such folder"):
        validate({**base, "data": {"plugin": "images", "params": {"path": "nope"}}})


def test_the_example_folder_is_what_the_script_makes(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = REPO / "scripts" / "make-images-example"
    done = subprocess.run(
        [sys.executable, str(script), "--out", str(tmp_path / "ex")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    made = sorted(p.relative_to(tmp_path / "ex") for p in (tmp_path / "ex").rglob("*.*"))
    shipped = sorted(p.relative_to(EXAMPLE) for p in EXAMPLE.rglob("*.*"))
    assert made == shipped
    for rel in made[:10]:
        assert (tmp_path / "ex" / rel).read_bytes() == (EXAMPLE / rel).read_bytes()


# ------------------------------------------------------------------ contracts


@pytest.mark.parametrize("family", GENERATORS)
def test_generators_declare_tasks_and_a_plain_data_search_space(family: str) -> None:
    cls = architectures.get(family)
    assert cls.tasks == frozenset({"generative"})
    space = cls().search_space()
    json.dumps(space)  # plain data
    assert space and set(space) <= set(cls.Config.model_fields)


def test_wrong_pairings_are_refused_at_validation() -> None:
    digits = {"plugin": "digits", "params": {}}
    with pytest.raises(ConfigError) as bad:
        validate({"name": "x", "data": digits, "model": {"plugin": "gan"}})
    message = str(bad.value)
    assert "model.plugin" in message and "does not support the classification task" in message
    with pytest.raises(ConfigError, match="supports: generative"):
        validate({"name": "x", "data": {"plugin": "tabular"}, "model": {"plugin": "vae"}})
    generative = {"plugin": "digits", "params": {"task": "generative"}}
    with pytest.raises(ConfigError, match="does not support the generative task"):
        validate({"name": "x", "data": generative, "model": {"plugin": "cnn"}})
    validate({"name": "x", "data": generative, "model": {"plugin": "diffusion"}})
