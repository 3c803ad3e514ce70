"""`images`: a folder of class sub-folders of PNG / JPEG files (the ImageFolder convention).

    my-images/
      cat/  001.png  002.jpg ...
      dog/  001.png ...

Class names are the sub-folder names, sorted; every image is converted to grayscale or RGB and
resized to `size`, giving (C, H, W) arrays with values in [0, 1]. Splits are stratified by
class. `task: generative` hands the same images to an image generator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from plexa import DataError
from plexa.plugins import DataPlugin, DataSpec, DataSplits
from plexa.splits import SplitConfig, split

EXTENSIONS = frozenset({".png", ".jpg", ".jpeg"})


def _classes(root: Path) -> dict[str, list[Path]]:
    """Sub-folder name -> its image files, both sorted (a deterministic order to split)."""
    found = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in EXTENSIONS)
        if files:
            found[folder.name] = files
    return found


class Images(DataPlugin):
    class Config(SplitConfig):
        path: str  # a relative path is taken from the pipeline file's folder
        size: list[int] = Field(default_factory=lambda: [16, 16], min_length=2, max_length=2)
        mode: Literal["grayscale", "rgb"] = "grayscale"
        task: Literal["classification", "generative"] = "classification"

        @field_validator("path")
        @classmethod
        def _folder(cls, value: str, info: ValidationInfo) -> str:
            base = (info.context or {}).get("base_dir", Path.cwd())
            path = (Path(base) / value).resolve()
            if not path.is_dir():
                raise ValueError(f"no such folder '{path}'")
            classes = _classes(path)
            if len(classes) < 2:
                raise ValueError(
                    f"'{path}' needs at least two class sub-folders with .png/.jpg/.jpeg files "
                    f"(found {len(classes)}: {', '.join(classes) or 'none'})"
                )
            return str(path)

        @field_validator("size")
        @classmethod
        def _positive(cls, value: list[int]) -> list[int]:
            if any(s < 1 for s in value):
                raise ValueError("size is [height, width], each at least 1")
            return value

    def task(self, config: Config) -> str:
        return config.task

    def load(self, config: Config, seed: int) -> DataSplits:
        import numpy as np
        from PIL import Image, UnidentifiedImageError

        classes = _classes(Path(config.path))
        height, width = config.size
        pil_mode = "L" if config.mode == "grayscale" else "RGB"
        xs, ys = [], []
        for label, files in enumerate(classes.values()):
            for file in files:
                try:
                    with Image.open(file) as img:
                        img = img.convert(pil_mode).resize((width, height), Image.BILINEAR)
                        pixels = np.asarray(img, dtype=np.float32) / 255.0
                except (OSError, UnidentifiedImageError) as exc:  # truncated, or not an image
                    raise DataError(f"{file}: cannot read it as an image ({exc})") from None
                xs.append(pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1))
                ys.append(label)
        x, y = np.stack(xs), np.asarray(ys, dtype=np.int64)
        counts = np.bincount(y)
        if counts.min() < 3:
            small = [n for n, c in zip(classes, counts, strict=True) if c < 3]
            raise DataError(
                f"{config.path}: class(es) {', '.join(small)} have fewer than 3 images; "
                "each class needs at least 3 to split into train / val / test"
            )
        train, val, test = split(
            x, y, config.val_fraction, config.test_fraction, config.seed_for_split(seed), True
        )
        spec = DataSpec(
            task=config.task,
            input_shape=tuple(x.shape[1:]),
            num_classes=len(classes),
            class_names=tuple(classes),
            normalisation={"mean": 0.0, "std": 255.0, "raw": f"{config.mode} pixels 0..255"},
        )
        return DataSplits(spec, train, val, test)
