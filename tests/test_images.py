"""The `images` data plugin streaming real PNG and JPEG files from disk: folders and manifests
(CSV, Parquet), every image mode Pillow opens, seeded augmentation, normalisation the server
applies, and a corrupt file reported by name from inside the loader's worker processes."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from plexa import orchestrator
from plexa.config import ConfigError, load_pipeline, validate
from plexa.errors import DataError
from plexa.plugins import DataSplits, Stream, datasets

from .conftest import PIPELINES, plexa

PIPELINE = {"name": "img", "model": {"plugin": "cnn"}}


def config(**params: Any) -> Any:
    return datasets.get("images").Config.model_validate(params)


def load(seed: int = 0, **params: Any) -> DataSplits:
    return datasets.create("images").load(config(**params), seed=seed)


def gradient(width: int, height: int) -> np.ndarray:
    """An RGB image whose red rises left to right and green top to bottom: any flip or crop
    shows in its pixels."""
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    return np.stack([x, y, np.full_like(x, 90)], -1).astype(np.uint8)


def folder(root: Path, per_class: int = 4, size: tuple[int, int] = (12, 12)) -> Path:
    """Two classes of gradients, PNG and JPEG; class `b` is the mirror image of class `a`."""
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            pixels = gradient(*size)
            pixels = pixels if label == "a" else pixels[:, ::-1]
            suffix = "jpg" if i % 2 else "png"
            Image.fromarray(np.ascontiguousarray(pixels)).save(root / label / f"{i}.{suffix}")
    return root


def every(stream: Stream) -> list[tuple[np.ndarray, Any]]:
    return [stream.dataset[i] for i in range(len(stream.dataset))]


def test_images_of_any_size_and_mode_are_listed_at_load_and_decoded_when_read(
    tmp_path: Path,
) -> None:
    root = tmp_path / "imgs"
    shapes = {"wide": (40, 10), "tall": (7, 30), "tiny": (3, 3)}
    for label in ("rgb", "gray"):
        (root / label).mkdir(parents=True)
    for name, size in shapes.items():
        Image.fromarray(gradient(*size)).save(root / "rgb" / f"{name}.jpg", quality=95)
        Image.new("L", size, 200).save(root / "gray" / f"{name}.png")
    red = Image.new("P", (9, 9))
    red.putpalette([255, 0, 0] * 256)
    red.save(root / "rgb" / "palette.png")
    clear = Image.new("RGBA", (6, 8), (0, 255, 0, 0))  # fully transparent green
    clear.paste((0, 0, 255, 255), (0, 0, 3, 8))  # left half opaque blue
    clear.save(root / "rgb" / "rgba.png")
    deep = Image.fromarray(np.full((5, 5), 128 * 257, dtype=np.uint16))  # 16-bit grayscale
    deep.save(root / "gray" / "deep.png")
    Image.new("LA", (4, 4), (255, 255)).save(root / "gray" / "alpha.png")
    (root / "gray" / "notes.txt").write_text("not an image: skipped")

    data = load(path=str(root), size=[6, 8], mode="rgb", val_fraction=0.2, test_fraction=0.2)
    assert data.spec.input_shape == (3, 6, 8) and data.spec.class_names == ("gray", "rgb")
    assert all(isinstance(s, Stream) for s in (data.train, data.val, data.test))
    assert sum(len(s) for s in (data.train, data.val, data.test)) == 10
    decoded: dict[str, np.ndarray] = {}
    for part in (data.train, data.val, data.test):
        assert set(part.labels.tolist()) == {0, 1}  # stratified by class
        for i, (x, y) in enumerate(every(part)):
            assert x.shape == (3, 6, 8) and x.dtype == np.float32 and 0 <= x.min() <= x.max() <= 1
            assert y == part.labels[i]
            decoded[Path(part.dataset.paths[i]).name] = x
    np.testing.assert_allclose(decoded["palette.png"][:, 0, 0], [1, 0, 0])
    rgba = decoded["rgba.png"]  # transparent pixels become black, opaque ones keep colour
    np.testing.assert_allclose(rgba[:, 3, 0], [0, 0, 1])
    np.testing.assert_allclose(rgba[:, 3, -1], [0, 0, 0])
    np.testing.assert_allclose(decoded["deep.png"], 128 / 255, atol=1e-6)
    np.testing.assert_allclose(decoded["alpha.png"], 1.0)
    wide = decoded["wide.jpg"]  # resized whole: red still rises left to right
    assert wide[0, 0, 0] < 0.1 and wide[0, 0, -1] > 0.9

    gray = load(path=str(root), size=[5, 5], mode="grayscale")
    x, _ = gray.train.dataset[0]
    assert gray.spec.input_shape == x.shape == (1, 5, 5)
    assert gray.spec.normalisation == {
        "mean": 0.0, "std": 255.0, "raw": "grayscale pixels 0..255",
    }  # fmt: skip


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_a_manifest_lists_files_and_labels_from_its_own_folder(tmp_path: Path, kind: str) -> None:
    pictures = folder(tmp_path / "pictures", per_class=4)
    files = sorted(pictures.rglob("*.*"))
    rows = [(str(f.relative_to(tmp_path)), f.parent.name.upper()) for f in files]
    rows[0] = (str(files[0]), rows[0][1])  # an absolute path works too
    table = {"file": [r[0] for r in rows], "kind": [r[1] for r in rows], "other": [1] * 8}
    manifest = tmp_path / f"list.{kind}"
    if kind == "csv":
        with manifest.open("w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(table)
            writer.writerows(zip(*table.values(), strict=True))
    else:
        pq.write_table(pa.table(table), manifest)
    pipeline = tmp_path / "sub" / "p.yaml"
    pipeline.parent.mkdir()
    params = f"{{manifest: ../list.{kind}, path_column: file, label_column: kind, size: [12, 12]}}"
    pipeline.write_text(
        f"name: m\ndata: {{plugin: images, params: {params}}}\nmodel: {{plugin: cnn}}\n"
    )

    spec = load_pipeline(pipeline)  # relative to the pipeline, then the manifest's folder
    data = datasets.create("images").load(spec.data_config(), seed=0)
    assert data.spec.class_names == ("A", "B")
    seen = {}
    for part in (data.train, data.val, data.test):
        for i, (x, y) in enumerate(every(part)):
            seen[part.dataset.paths[i]] = (x, int(y))
    assert sorted(seen) == sorted(str(f) for f in files)
    for path, (x, y) in seen.items():
        assert y == (0 if Path(path).parent.name == "a" else 1)
        with Image.open(path) as img:  # the sample is the file's pixels, as they are
            np.testing.assert_allclose(x[0], np.asarray(img.convert("L")) / 255, atol=1e-6)


def test_bad_sources_are_named_at_validation_or_load(tmp_path: Path) -> None:
    def refused(params: dict[str, Any]) -> str:
        with pytest.raises(ConfigError) as bad:
            validate({**PIPELINE, "data": {"plugin": "images", "params": params}})
        return str(bad.value)

    (tmp_path / "empty" / "cat").mkdir(parents=True)
    assert "at least two class sub-folders" in refused({"path": str(tmp_path / "empty")})
    pictures = folder(tmp_path / "pictures", per_class=3)
    with pytest.raises(DataError, match="6 images in 2 classes are too few for a stratified"):
        load(path=str(pictures))  # a test split of one image cannot hold both classes
    manifest = tmp_path / "list.csv"
    lines = ["path,label", *(f"{f.relative_to(tmp_path)},{f.parent.name}" for f in
             sorted(pictures.rglob("*.*")))]  # fmt: skip
    manifest.write_text("\n".join(lines) + "\n")
    message = refused({"manifest": str(manifest), "label_column": "class"})
    assert f"'{manifest}' has no column 'class' (columns: path, label)" in message
    assert "give either path" in refused({"path": str(pictures), "manifest": str(manifest)})
    assert "no such file" in refused({"manifest": str(tmp_path / "nope.csv")})
    assert "normalise: a generator" in refused(
        {"path": str(pictures), "task": "generative", "normalise": {"mean": [0], "std": [1]}}
    )
    assert "normalise.mean: one value or 3" in refused(
        {"path": str(pictures), "mode": "rgb", "normalise": {"mean": [0, 1], "std": [1]}}
    )

    lines[4] = "pictures/a/9.png,a"  # line 5 of the file
    manifest.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"{manifest} line 5: column 'path': no such file"):
        load(manifest=str(manifest))
    lines[4] = ",a"
    manifest.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"{manifest} line 5: column 'path' is empty"):
        load(manifest=str(manifest))


def test_augmentation_is_seeded_per_sample_and_training_only(tmp_path: Path) -> None:
    root = folder(tmp_path / "pictures", per_class=6, size=(10, 10))
    plain = load(path=str(root), size=[10, 10], mode="rgb")
    flipped = load(path=str(root), size=[10, 10], mode="rgb", augment={"flip": 1.0})
    for a, b in zip(every(plain.train), every(flipped.train), strict=True):
        np.testing.assert_array_equal(b[0], a[0][:, :, ::-1])  # the mirror image, pixel for pixel
    for a, b in zip(every(plain.val), every(flipped.val), strict=True):
        np.testing.assert_array_equal(a[0], b[0])  # validation is never augmented

    augment = {
        "crop": {"padding": 2},
        "flip": True,
        "jitter": {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4},
    }
    params = {"path": str(root), "size": [10, 10], "mode": "rgb", "augment": augment}
    first, again = load(0, **params).train, load(0, **params).train
    other = load(1, split_seed=0, **params).train  # the same split, another augmentation seed
    samples = every(first)
    for i, (x, _) in enumerate(samples):
        np.testing.assert_array_equal(x, again.dataset[i][0])  # same seed and index: same sample
        np.testing.assert_array_equal(x, first.dataset[i][0])  # and read twice
        assert not np.array_equal(x, plain.train.dataset[i][0])
    assert not all(np.array_equal(x, other.dataset[i][0]) for i, (x, _) in enumerate(samples))
    assert len({x.tobytes() for x, _ in samples}) == len(samples)
    first.dataset.set_epoch(1)  # another epoch draws anew, and epoch 0 again as before
    assert not np.array_equal(first.dataset[0][0], samples[0][0])
    first.dataset.set_epoch(0)
    np.testing.assert_array_equal(first.dataset[0][0], samples[0][0])

    assert config(path=str(root), augment={"flip": True}).augment.flip == 0.5  # not 1.0

    scaled = load(
        path=str(root), size=[10, 10], mode="rgb", augment={"crop": {"scale": [0.2, 0.3]}}
    )
    x = scaled.train.dataset[0][0]  # a zoomed-in part: a smaller span of the gradient
    assert np.ptp(x[0]) < 0.8 * np.ptp(plain.train.dataset[0][0][0])


def test_a_corrupt_image_stops_the_run_with_its_name_through_loader_workers(
    tmp_path: Path,
) -> None:
    root = folder(tmp_path / "pictures", per_class=6, size=(8, 8))
    broken = root / "b" / "3.jpg"
    broken.write_bytes(broken.read_bytes()[:40])  # truncated mid-header
    (tmp_path / "p.yaml").write_text(
        "name: corrupt\n"
        "data: {plugin: images, params: {path: pictures, size: [8, 8]}}\n"
        "model: {plugin: cnn, params: {channels: [4], hidden: 8}}\n"
        "train: {max_epochs: 1, batch_size: 4}\n"
        "compute: {accelerator: cpu}\nexport: {onnx: false}\n"
    )
    done = plexa("run", "p.yaml", "data.loader.workers=2", cwd=tmp_path, timeout=120)
    assert done.returncode == 2, done.stderr
    assert f"error: {broken}: cannot read it as an image" in done.stdout
    assert "Traceback" not in done.stderr + done.stdout
    assert "DataLoader worker" not in done.stdout  # torch's wrapping is gone


def test_a_run_trains_on_streamed_augmented_images_and_serves_their_normalisation(
    workdir: Path,
) -> None:
    from plexa.serving.model import load as serve

    root = folder(workdir / "pictures", per_class=10, size=(14, 10))
    spec = load_pipeline(
        PIPELINES / "images-cnn.yaml",
        [
            f"data.params.path={root}",
            "data.params.mode=rgb",
            "data.params.size=[8, 8]",
            "data.params.augment={crop: {padding: 1}, flip: 0.5, jitter: {brightness: 0.2}}",
            "data.params.normalise={mean: [0.5, 0.4, 0.3], std: [0.2, 0.25, 0.3]}",
            "compute.accelerator=cpu",
            "train.max_epochs=1",
            "train.limit_batches=2",
            "tracking.experiment=streamed-images",
        ],
    )
    result = orchestrator.run(spec)
    assert result.status == "FINISHED" and result.export.max_abs_diff <= 1e-4
    model = serve(result.export.path, "images", "test")
    data = datasets.create("images").load(spec.data_config(), seed=0)
    path = data.test.dataset.paths[0]
    with Image.open(path) as img:  # what a client sends: the raw pixels, resized
        raw = np.asarray(img.convert("RGB").resize((8, 8), Image.Resampling.BILINEAR))
    x = model.normalise(raw.transpose(2, 0, 1)[None].astype(np.float64))
    np.testing.assert_allclose(x[0], data.test.dataset[0][0], atol=1e-5)


def test_a_generator_learns_from_streamed_images(workdir: Path) -> None:
    root = folder(workdir / "pictures", per_class=6, size=(8, 8))
    spec = load_pipeline(
        PIPELINES / "digits-vae.yaml",
        [
            "data.plugin=images",
            f"data.params={{path: {root}, size: [8, 8], task: generative}}",
            "compute.accelerator=cpu",
            "train.max_epochs=1",
            "train.limit_batches=2",
            "model.params.sample_every=1",
            "model.params.score_samples=10",
            "export.onnx=false",
        ],
    )
    assert orchestrator.run(spec).status == "FINISHED"


def test_a_padded_crop_is_the_zero_padded_image_cut_at_the_offset() -> None:
    from plexa_data.images import Crop, _padded_crop

    x = np.random.default_rng(0).random((3, 5, 7), dtype=np.float32)
    for pad in (1, 3, 9):  # 9: wider than the image, an offset can leave only zeros
        for top in range(2 * pad + 1):
            for left in range(2 * pad + 1):
                padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
                expected = padded[:, top : top + 5, left : left + 7]
                np.testing.assert_array_equal(
                    _padded_crop(x, Crop(padding=pad), top, left), expected
                )
