"""Reading one sample as a sequence of feature vectors: the shapes, shared by the rnn and
transformer plugins (the torch module doing it is `plexa_models.seqnets.ToSequence`).

A (T, F) sample (a window of a series) is already a sequence. An image (C, H, W) or (H, W)
becomes its rows (H steps of C*W features) or its non-overlapping p x p patches
((H/p)(W/p) steps of C*p*p features, row-major). The reshape lives in the model, so the
digits data plugin serves images unchanged and the ONNX export takes images.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from plexa.plugins import PluginConfig

Tokens = Literal["rows", "patches"]


class SequenceInput(PluginConfig):
    """Base Config of a model that reads images as sequences."""

    tokens: Tokens = Field(
        "rows",
        description="How an image becomes a sequence: its rows, or its non-overlapping "
        "patches; (steps, features) inputs are used as they are.",
    )
    patch: int = Field(
        2, ge=1, description="tokens: patches: the patch side; it must divide the image size."
    )


def sequence_shape(input_shape: tuple[int, ...], tokens: str, patch: int) -> tuple[int, int]:
    """(steps, features per step) for one sample of `input_shape`."""
    if len(input_shape) == 2:
        if tokens == "rows":
            return input_shape[0], input_shape[1]
        input_shape = (1, *input_shape)
    if len(input_shape) != 3:
        raise ValueError(
            f"a sequence model needs (steps, features) or image (C, H, W) inputs, "
            f"got shape {input_shape}"
        )
    c, h, w = input_shape
    if tokens == "rows":
        return h, c * w
    if h % patch or w % patch:
        raise ValueError(f"patch {patch} does not divide the image size {h}x{w}")
    return (h // patch) * (w // patch), c * patch * patch
