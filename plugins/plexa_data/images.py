"""`images`: image files streamed from disk, decoded one at a time as training reads them.

The files come from a folder of class sub-folders (the ImageFolder convention; class names are
the sub-folder names, sorted) or from a manifest, a CSV or Parquet table with a path column and a
label column (relative paths are taken from the manifest's folder):

    my-images/                      labels.csv
      cat/  001.png  002.jpg ...      path,label
      dog/  001.png ...               photos/001.jpg,cat

    data:
      plugin: images
      params:
        path: my-images             # or  manifest: labels.csv (path_column, label_column)
        size: [32, 32]              # [height, width] every image is resized to
        mode: rgb                   # or grayscale; palette and RGBA images are converted
        augment:                    # training samples only
          crop: {padding: 4}        # or {scale: [0.6, 1.0]}: a random part of the image
          flip: 0.5                 # probability of a horizontal flip
          jitter: {brightness: 0.2, contrast: 0.2, saturation: 0.2}
        normalise: {mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}  # per channel, all splits
      loader: {workers: 4}          # decoding runs in the core's loader workers

Loading lists the files and their labels only; splits are stratified by class from the labels.
Samples are (C, H, W) float32 arrays in [0, 1] before `normalise`. A training sample's
augmentation is drawn from (seed, epoch, index) alone, so a resumed run sees the same batches.
`task: generative` hands the same images (in [0, 1]: no `normalise`) to an image generator.
A file that cannot be decoded is a DataError naming it, raised when training first reads it.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from plexa import DataError
from plexa.plugins import DataPlugin, DataSpec, DataSplits, PluginConfig, Stream
from plexa.splits import SplitConfig, split

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image as PILImage

EXTENSIONS = frozenset({".png", ".jpg", ".jpeg"})
MANIFESTS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as Pillow's RGB -> L


def _classes(root: Path) -> dict[str, list[Path]]:
    """Sub-folder name -> its image files, both sorted (a deterministic order to split)."""
    found = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in EXTENSIONS)
        if files:
            found[folder.name] = files
    return found


def _resolve(value: str, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir", Path.cwd())
    return (Path(base) / value).resolve()


def _manifest_columns(path: Path) -> list[str]:
    """The manifest's column names, from its header (CSV) or schema (Parquet) alone."""
    import pyarrow as pa

    try:
        if MANIFESTS[path.suffix.lower()] == "parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        import pyarrow.csv as pacsv

        with pacsv.open_csv(path) as reader:
            return list(reader.schema.names)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValueError(f"cannot read '{path}' as a manifest ({exc})") from None


# --------------------------------------------------------------------------- config


class Crop(PluginConfig):
    """A random crop: pad by `padding` then cut `size` back out, or (`scale`) resize a random
    part of the image covering that fraction of its area, aspect ratio within `ratio`."""

    padding: int = Field(
        0, ge=0, description="Pad each side by this many pixels, then cut the size back out."
    )
    padding_mode: Literal["constant", "edge", "reflect"] = Field(
        "constant", description="What the padding holds: zeros, or numpy.pad's edge or reflect."
    )
    scale: tuple[float, float] | None = Field(
        None,
        description="Instead of padding: [low, high], the fraction of the image's area a "
        "random part covers before it is resized (0 < low <= high <= 1).",
    )
    ratio: tuple[float, float] = Field(
        (3 / 4, 4 / 3), description="With scale: [low, high] of the part's aspect ratio."
    )

    @model_validator(mode="after")
    def _one_kind(self) -> Crop:
        if (self.padding > 0) == (self.scale is not None):
            raise ValueError("a crop takes either padding (> 0) or scale, not both or neither")
        if self.scale is not None and not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError("crop scale is [low, high] with 0 < low <= high <= 1")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError("crop ratio is [low, high] with 0 < low <= high")
        return self


class Jitter(PluginConfig):
    """Colour jitter: each factor drawn from [max(0, 1 - v), 1 + v]; saturation needs rgb."""

    brightness: float = Field(
        0.0,
        ge=0,
        description="v: the brightness factor is drawn from [max(0, 1 - v), 1 + v]; 0: none.",
    )
    contrast: float = Field(
        0.0,
        ge=0,
        description="v: the contrast factor is drawn from [max(0, 1 - v), 1 + v]; 0: none.",
    )
    saturation: float = Field(
        0.0,
        ge=0,
        description="v: the saturation factor is drawn from [max(0, 1 - v), 1 + v]; needs "
        "mode: rgb.",
    )


class Augment(PluginConfig):
    """Random changes to training samples, drawn from (seed, epoch, index) alone."""

    crop: Crop | None = Field(None, description="A random crop; absent: none.")
    flip: float = Field(
        0.0, ge=0, le=1, description="Probability of a horizontal flip (true: 0.5)."
    )
    jitter: Jitter | None = Field(None, description="Colour jitter; absent: none.")

    @field_validator("flip", mode="before")
    @classmethod
    def _flag(cls, value: Any) -> Any:
        # `flip: true` means "flip half of them"; read as a number it would flip every one
        return 0.5 if value is True else 0.0 if value is False else value

    @property
    def active(self) -> bool:
        return self.crop is not None or self.flip > 0 or self.jitter is not None


class Normalise(PluginConfig):
    """`x = (pixel - mean) / std` per channel, on pixels in [0, 1]; one value serves all."""

    mean: list[float] = Field(
        min_length=1, max_length=3, description="Per channel, or one value for every channel."
    )
    std: list[float] = Field(
        min_length=1,
        max_length=3,
        description="Per channel, or one value for every channel; each positive.",
    )

    @field_validator("std")
    @classmethod
    def _positive(cls, value: list[float]) -> list[float]:
        if any(s <= 0 for s in value):
            raise ValueError("std values must be positive")
        return value


class Images(DataPlugin):
    class Config(SplitConfig):
        path: str | None = Field(
            None,
            description="A folder of class sub-folders of .png/.jpg/.jpeg files (at least two "
            "classes), relative to the pipeline's folder; give it or manifest.",
        )
        manifest: str | None = Field(
            None,
            description="Or a CSV / Parquet table of image paths (relative: from its own "
            "folder) and labels.",
        )
        path_column: str = Field("path", description="manifest: the column of image paths.")
        label_column: str = Field("label", description="manifest: the column of labels.")
        size: list[int] = Field(
            default_factory=lambda: [16, 16],
            min_length=2,
            max_length=2,
            description="[height, width] every image is resized to.",
        )
        mode: Literal["grayscale", "rgb"] = Field(
            "grayscale", description="Channels: 1 (grayscale) or 3 (rgb); images are converted."
        )
        task: Literal["classification", "generative"] = Field(
            "classification",
            description="generative: the images, in [0, 1], for an image generator to learn.",
        )
        augment: Augment = Field(
            default_factory=Augment, description="Random changes to training samples only."
        )
        normalise: Normalise | None = Field(
            None,
            description="x = (pixel - mean) / std per channel, on pixels in [0, 1], for every "
            "split; absent: pixels as they are.",
        )

        @field_validator("path")
        @classmethod
        def _folder(cls, value: str | None, info: ValidationInfo) -> str | None:
            if value is None:
                return None
            path = _resolve(value, info)
            if not path.is_dir():
                raise ValueError(f"no such folder '{path}'")
            classes = _classes(path)
            if len(classes) < 2:
                raise ValueError(
                    f"'{path}' needs at least two class sub-folders with .png/.jpg/.jpeg files "
                    f"(found {len(classes)}: {', '.join(classes) or 'none'})"
                )
            return str(path)

        @field_validator("manifest")
        @classmethod
        def _table(cls, value: str | None, info: ValidationInfo) -> str | None:
            if value is None:
                return None
            path = _resolve(value, info)
            if path.suffix.lower() not in MANIFESTS:
                raise ValueError(f"'{path}': a manifest is a .csv or .parquet file")
            if not path.is_file():
                raise ValueError(f"no such file '{path}'")
            return str(path)

        @field_validator("size")
        @classmethod
        def _positive(cls, value: list[int]) -> list[int]:
            if any(s < 1 for s in value):
                raise ValueError("size is [height, width], each at least 1")
            return value

        @model_validator(mode="after")
        def _consistent(self) -> Images.Config:
            if (self.path is None) == (self.manifest is None):
                raise ValueError("give either path (a folder of class folders) or manifest")
            if self.manifest is not None:
                columns = _manifest_columns(Path(self.manifest))
                for key in ("path_column", "label_column"):
                    if getattr(self, key) not in columns:
                        raise ValueError(
                            f"{key}: '{self.manifest}' has no column '{getattr(self, key)}' "
                            f"(columns: {', '.join(columns)})"
                        )
            channels = 1 if self.mode == "grayscale" else 3
            jitter = self.augment.jitter
            if jitter is not None and jitter.saturation > 0 and channels == 1:
                raise ValueError("augment.jitter.saturation needs mode: rgb")
            if self.normalise is not None:
                if self.task == "generative":
                    raise ValueError("normalise: a generator learns images in [0, 1] as they are")
                for key in ("mean", "std"):
                    if len(getattr(self.normalise, key)) not in (1, channels):
                        raise ValueError(
                            f"normalise.{key}: one value or {channels} (one per channel of "
                            f"{self.mode} images)"
                        )
            return self

    def task(self, config: Config) -> str:
        return config.task

    def load(self, config: Config, seed: int) -> DataSplits:
        import numpy as np

        if config.manifest is not None:
            source, root, files, labels, names = _from_manifest(config)
        else:
            assert config.path is not None
            source, root = config.path, Path(config.path)
            classes = _classes(root)
            names = tuple(classes)
            files = [str(f.relative_to(root)) for fs in classes.values() for f in fs]
            labels = np.repeat(np.arange(len(names)), [len(fs) for fs in classes.values()])
        counts = np.bincount(labels, minlength=len(names))
        if counts.min() < 3:
            small = [n for n, c in zip(names, counts, strict=True) if c < 3]
            raise DataError(
                f"{source}: class(es) {', '.join(small)} have fewer than 3 images; "
                "each class needs at least 3 to split into train / val / test"
            )
        try:
            parts = split(
                np.arange(len(labels)),
                labels,
                config.val_fraction,
                config.test_fraction,
                config.seed_for_split(seed),
                True,
            )
        except ValueError as exc:  # a split smaller than the number of classes
            raise DataError(
                f"{source}: {len(labels)} images in {len(names)} classes are too few for a "
                f"stratified split with val_fraction {config.val_fraction} and test_fraction "
                f"{config.test_fraction} ({exc})"
            ) from None
        channels = 1 if config.mode == "grayscale" else 3
        streams = [
            Stream(
                ImageFiles(Paths(root, [files[j] for j in part.x]), part.y, config, seed, i == 0),
                part.y,
            )
            for i, part in enumerate(parts)
        ]
        spec = DataSpec(
            task=config.task,
            input_shape=(channels, *config.size),
            num_classes=len(names),
            class_names=names,
            normalisation=_normalisation(config, channels),
        )
        return DataSplits(spec, *streams, source=str(config.manifest or config.path))


def _normalisation(config: Images.Config, channels: int) -> dict[str, Any]:
    """How a raw 0..255 pixel becomes what the model sees: `(raw - mean) / std`. Per-channel
    values are (C, 1, 1) nested lists, which broadcast over (N, C, H, W) requests."""
    raw = f"{config.mode} pixels 0..255"
    if config.normalise is None:
        return {"mean": 0.0, "std": 255.0, "raw": raw}
    norm = config.normalise
    mean = [255 * m for m in norm.mean] * (channels // len(norm.mean))
    std = [255 * s for s in norm.std] * (channels // len(norm.std))
    return {"mean": [[[m]] for m in mean], "std": [[[s]] for s in std], "raw": raw}


def _from_manifest(config: Images.Config) -> tuple[str, Path, list[str], Any, tuple[str, ...]]:
    """(source, root, files, labels, class names) from the manifest; every file must exist."""
    import numpy as np
    import pyarrow as pa

    manifest = Path(config.manifest or "")
    cols = [config.path_column, config.label_column]
    csv = MANIFESTS[manifest.suffix.lower()] == "csv"
    try:
        if csv:
            import pyarrow.csv as pacsv

            options = pacsv.ConvertOptions(
                include_columns=cols,
                column_types={config.path_column: pa.string()},
                strings_can_be_null=True,  # an empty cell is missing, not the folder itself
            )
            table = pacsv.read_csv(manifest, convert_options=options)
        else:
            import pyarrow.parquet as pq

            table = pq.read_table(manifest, columns=cols)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{manifest}: cannot read it as a manifest ({exc})") from None

    def where(row: int) -> str:  # the header is line 1 of a CSV file
        return f"{manifest} line {row + 2}" if csv else f"{manifest} row {row}"

    given = table.column(config.path_column).to_pylist()
    raw = table.column(config.label_column).to_pylist()
    for key, values in ((config.path_column, given), (config.label_column, raw)):
        for row, value in enumerate(values):
            if value is None or (isinstance(value, str) and not value.strip()):
                raise DataError(f"{where(row)}: column '{key}' is empty")
    if not given:
        raise DataError(f"{manifest}: no rows (a header, then one line per image)")
    root = manifest.parent
    files = [str(v) for v in given]
    missing = [r for r, f in enumerate(files) if not os.path.isfile(root / f)]
    if missing:
        more = f" (and {len(missing) - 1} more rows)" if len(missing) > 1 else ""
        raise DataError(
            f"{where(missing[0])}: column '{config.path_column}': no such file "
            f"'{root / files[missing[0]]}'{more}"
        )
    try:
        classes = sorted(set(raw))
    except TypeError:  # mixed types: ordered by their text
        classes = sorted(set(raw), key=str)
    if len(classes) < 2:
        raise DataError(
            f"{manifest}: column '{config.label_column}' needs at least two labels "
            f"(found {len(classes)}: {', '.join(map(str, classes))})"
        )
    index = {c: i for i, c in enumerate(classes)}
    labels = np.asarray([index[v] for v in raw], dtype=np.int64)
    return str(manifest), root, files, labels, tuple(str(c) for c in classes)


# --------------------------------------------------------------------------- the dataset


class Paths:
    """File names as one byte buffer and its offsets: a list of str in a dataset would be
    copied page by page into every loader worker as their reference counts change."""

    def __init__(self, root: Path, names: list[str]) -> None:
        import numpy as np

        self.root = str(root)
        encoded = [n.encode() for n in names]
        self.buffer = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        self.ends = np.cumsum([len(e) for e in encoded], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.ends)

    def __getitem__(self, i: int) -> str:
        start = int(self.ends[i - 1]) if i > 0 else 0
        name = self.buffer[start : int(self.ends[i])].tobytes().decode()
        return os.path.join(self.root, name)


class ImageError(DataError):
    """A file that cannot be decoded, raised inside a loader worker too.

    torch re-raises a worker's exception in the training process as `type(exc)(text)`, the
    text being the worker's whole traceback; this class keeps the original message out of it,
    so the user sees one line naming the file.
    """

    def __init__(self, message: str) -> None:
        marker = f"{ImageError.__module__}.{ImageError.__qualname__}: "
        if message.startswith(f"Caught {ImageError.__name__}") and marker in message:
            message = message.rsplit(marker, 1)[1].strip()
        super().__init__(message)


class ImageFiles:
    """A split's images: each `__getitem__` decodes one file with Pillow, resizes it and, for
    training, augments it from a generator seeded by (seed, epoch, index).

    Plain attributes only (picklable: the core's loader workers get a copy). `epoch` is 0
    unless `set_epoch` is called; without it a sample gets the same augmentation each epoch.
    """

    def __init__(
        self, paths: Paths, labels: Any, config: Images.Config, seed: int, train: bool
    ) -> None:
        import numpy as np

        self.paths, self.labels = paths, np.asarray(labels, dtype=np.int64)
        self.height, self.width = config.size
        self.channels = 1 if config.mode == "grayscale" else 3
        self.augment = config.augment if train and config.augment.active else None
        self.seed, self.epoch = seed % 2**32, 0
        norm = config.normalise
        self.mean = None if norm is None else np.asarray(norm.mean, np.float32)[:, None, None]
        self.std = None if norm is None else np.asarray(norm.std, np.float32)[:, None, None]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.int64]:
        import numpy as np

        rng = None
        if self.augment is not None:  # one stream per (seed, epoch, index), whatever ran before
            rng = random.Random((self.seed << 64) | ((self.epoch % 2**32) << 32) | int(i))
        pixels = self.decode(self.paths[i], rng)
        if rng is not None:
            pixels = self.augmented(pixels, rng)
        if self.mean is not None and self.std is not None:
            pixels = (pixels - self.mean) / self.std
        return np.ascontiguousarray(pixels, dtype=np.float32), self.labels[i]

    def decode(self, path: str, rng: random.Random | None) -> np.ndarray:
        """(C, H, W) in [0, 1]; a random-scale crop is taken here, from the full image."""
        import numpy as np
        from PIL import Image

        crop = self.augment.crop if self.augment is not None else None
        try:
            with Image.open(path) as file:
                # a JPEG is decoded straight at 1/2, 1/4 or 1/8 of its size where that still
                # gives `size` (twice `size` for a random part to be cut from it)
                need = 2 if crop is not None and crop.scale is not None else 1
                file.draft(file.mode, (self.width * need, self.height * need))
                img = _converted(file, "L" if self.channels == 1 else "RGB")
                box = None
                if crop is not None and crop.scale is not None and rng is not None:
                    box = _scale_box(img.size, crop.scale, crop.ratio, rng)
                if box is not None or img.size != (self.width, self.height):
                    img = img.resize((self.width, self.height), Image.Resampling.BILINEAR, box=box)
                pixels = np.asarray(img, dtype=np.float32) / 255.0
        except Exception as exc:  # noqa: BLE001 - whatever Pillow says about this file
            raise ImageError(f"{path}: cannot read it as an image ({exc})") from None
        return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)

    def augmented(self, x: np.ndarray, rng: random.Random) -> np.ndarray:
        aug = self.augment
        assert aug is not None
        if aug.crop is not None and aug.crop.padding > 0:
            span = 2 * aug.crop.padding  # the padded image's extra rows and columns
            x = _padded_crop(x, aug.crop, rng.randint(0, span), rng.randint(0, span))
        if aug.flip > 0 and rng.random() < aug.flip:
            x = x[:, :, ::-1]
        if aug.jitter is not None:
            x = _jittered(x, aug.jitter, rng)
        return x


def _converted(img: PILImage.Image, mode: str) -> PILImage.Image:
    """`img` in `mode` ("L" or "RGB"): transparent pixels over black, 16-bit ones scaled."""
    import numpy as np
    from PIL import Image, ImageOps

    if "exif" in img.info:  # a phone photo the way up it was taken
        ImageOps.exif_transpose(img, in_place=True)
    if img.mode in ("I", "I;16", "I;16B", "I;16L"):  # 16-bit grayscale PNG
        wide = np.asarray(img, dtype=np.float64) / 65535.0
        img = Image.fromarray(np.clip(wide * 255 + 0.5, 0, 255).astype(np.uint8), "L")
    elif img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(black, rgba)
    return img if img.mode == mode else img.convert(mode)


def _padded_crop(x: np.ndarray, crop: Crop, top: int, left: int) -> np.ndarray:
    """`x` padded by `crop.padding` on every side, then cut back to its size at (top, left)."""
    import numpy as np

    p = crop.padding
    if crop.padding_mode != "constant":
        padded = np.pad(x, ((0, 0), (p, p), (p, p)), mode=crop.padding_mode)
        return padded[:, top : top + x.shape[1], left : left + x.shape[2]]
    out = np.zeros_like(x)  # zeros around: only the part of `x` still inside is copied
    _, height, width = x.shape
    dy, dx = top - p, left - p  # where the output's corner lies in `x`
    y0, y1, x0, x1 = max(dy, 0), min(height + dy, height), max(dx, 0), min(width + dx, width)
    if y0 < y1 and x0 < x1:
        out[:, y0 - dy : y1 - dy, x0 - dx : x1 - dx] = x[:, y0:y1, x0:x1]
    return out


def _scale_box(
    size: tuple[int, int],
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rng: random.Random,
) -> tuple[float, float, float, float]:
    """A box covering a random fraction of the image's area at a random aspect ratio; the
    whole image when ten draws do not fit."""
    import math

    width, height = size
    for _ in range(10):
        area = width * height * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = math.sqrt(area * aspect), math.sqrt(area / aspect)
        if w <= width and h <= height:
            left, top = rng.uniform(0, width - w), rng.uniform(0, height - h)
            return (left, top, left + w, top + h)
    return (0.0, 0.0, float(width), float(height))


def _jittered(x: np.ndarray, jitter: Jitter, rng: random.Random) -> np.ndarray:
    """Brightness, contrast then saturation, each clipped to [0, 1] as a photo would be."""
    import numpy as np

    def factor(v: float) -> float:
        return rng.uniform(max(0.0, 1 - v), 1 + v)

    def gray(img: np.ndarray) -> np.ndarray:
        return img if len(img) == 1 else np.tensordot(LUMA, img, axes=1)[None].astype(np.float32)

    if jitter.brightness > 0:
        x = np.clip(x * factor(jitter.brightness), 0, 1)
    if jitter.contrast > 0:
        mean = float(gray(x).mean())
        x = np.clip((x - mean) * factor(jitter.contrast) + mean, 0, 1)
    if jitter.saturation > 0 and len(x) == 3:
        g = gray(x)
        x = np.clip((x - g) * factor(jitter.saturation) + g, 0, 1)
    return x
