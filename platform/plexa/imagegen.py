"""Images from a generative export: a PNG grid of new samples, drawn with ONNX Runtime alone.

A generative ONNX file describes itself in its metadata (`generative`: kind, latent shape, image
shape and, for diffusion, the noise schedule), so `plexa generate` needs nothing but the file.
GAN generators and VAE decoders map a standard-normal latent to images in [0, 1]; a diffusion
denoiser predicts the noise in `x_t` and is run once per step of DDPM's reverse process.

The grid and the sampler are plain numpy, shared with the plugins that log grids while training.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plexa.errors import UserError

if TYPE_CHECKING:
    import numpy as np

METADATA_KEY = "generative"
TIMESTEP_INPUT = "timestep"


class GenerateError(UserError, ValueError):
    """The file is not a generative export plexa can sample from."""


# --------------------------------------------------------------------------- grids


def grid(images: np.ndarray, columns: int | None = None, pad: int = 1) -> np.ndarray:
    """(N, C, H, W) or (N, H, W) values in [0, 1] -> one uint8 image (H', W') or (H', W', 3)."""
    import numpy as np

    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"a grid needs (N, 1|3, H, W) or (N, H, W) images, got {x.shape}")
    n, c, h, w = x.shape
    cols = columns or max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    canvas = np.ones((c, rows * (h + pad) + pad, cols * (w + pad) + pad), dtype=np.float32)
    for i in range(n):
        r, k = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + k * (w + pad)
        canvas[:, top : top + h, left : left + w] = x[i]
    out = (np.clip(canvas, 0, 1) * 255).round().astype(np.uint8)
    return out[0] if c == 1 else out.transpose(1, 2, 0)


def save_png(image: np.ndarray, path: str | Path, scale: int = 4) -> Path:
    """Write a grid, each pixel blown up `scale` times (8x8 digits are tiny otherwise)."""
    import numpy as np
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    big = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)
    Image.fromarray(big).save(path, format="PNG")
    return path


# --------------------------------------------------------------------------- DDPM


def ddpm_sample(
    denoise: Callable[[np.ndarray, np.ndarray], np.ndarray],
    n: int,
    image_shape: tuple[int, ...],
    betas: list[float] | np.ndarray,
    seed: int = 0,
) -> np.ndarray:
    """DDPM ancestral sampling (Ho et al. 2020) with the predicted clean image clipped to
    [-1, 1]; `denoise(x_t, t)` predicts the noise. Returns images in [0, 1]."""
    import numpy as np

    rng = np.random.default_rng(seed)
    beta = np.asarray(betas, dtype=np.float64)
    alpha = 1.0 - beta
    abar = np.cumprod(alpha)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    x = rng.standard_normal((n, *image_shape)).astype(np.float32)
    for t in range(len(beta) - 1, -1, -1):
        eps = denoise(x, np.full((n,), t, dtype=np.float32)).astype(np.float64)
        x0 = np.clip((x - np.sqrt(1 - abar[t]) * eps) / np.sqrt(abar[t]), -1, 1)
        mean = (
            np.sqrt(abar_prev[t]) * beta[t] / (1 - abar[t]) * x0
            + np.sqrt(alpha[t]) * (1 - abar_prev[t]) / (1 - abar[t]) * x
        )
        if t > 0:
            var = beta[t] * (1 - abar_prev[t]) / (1 - abar[t])
            mean = mean + np.sqrt(var) * rng.standard_normal(x.shape)
        x = mean.astype(np.float32)
    return ((np.clip(x, -1, 1) + 1) / 2).astype(np.float32)


# --------------------------------------------------------------------------- exports


def describe(path: str | Path) -> dict[str, Any]:
    """The export's `generative` metadata; a clear error for any other file."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise GenerateError(f"no ONNX file at {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # a truncated or foreign file
        raise GenerateError(f"{path} is not a readable ONNX file: {exc}") from exc
    props = {p.key: p.value for p in model.metadata_props}
    if props.get("task") != "generative" or METADATA_KEY not in props:
        task = props.get("task", "unknown")
        raise GenerateError(f"{path} is not a generative export (its task is {task})")
    return json.loads(props[METADATA_KEY])


def sample(path: str | Path, n: int = 64, seed: int = 0) -> np.ndarray:
    """`n` new images in [0, 1] from a generative export, with ONNX Runtime."""
    import numpy as np
    import onnxruntime as ort

    if n < 1:
        raise GenerateError(f"--n must be at least 1, got {n}")
    meta = describe(path)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    output = session.get_outputs()[0].name
    image_shape = tuple(meta["image_shape"])
    if meta["kind"] == "diffusion":

        def denoise(x: np.ndarray, t: np.ndarray) -> np.ndarray:
            return session.run([output], {names[0]: x, TIMESTEP_INPUT: t})[0]

        return ddpm_sample(denoise, n, image_shape, meta["betas"], seed)
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, *meta["latent_shape"])).astype(np.float32)
    return np.clip(session.run([output], {names[0]: z})[0], 0, 1)


def generate(path: str | Path, out: str | Path, n: int = 64, seed: int = 0) -> Path:
    """Write a PNG grid of `n` new samples from a generative export; returns the PNG's path."""
    return save_png(grid(sample(path, n, seed)), out)
