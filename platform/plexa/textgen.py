"""Text from a language-model export, sampled with ONNX Runtime alone.

A plexa language-model ONNX file says what it is in its metadata: `task` is `language-model`,
`class_names` is the vocabulary (token id -> character, or -> BPE token) and `input` gives the
context window (the graph reads a fixed number of token ids). A model trained on BPE tokens
also carries its tokenizer (`normalisation.tokenizer`, a Hugging Face `tokenizers` JSON), which
encodes the prompt and decodes what follows it. A prompt shorter than the window is padded on
the right: the model is causal, so the logits at the prompt's last position do not depend on
the padding. A longer text keeps its last `context` tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plexa.errors import UserError

if TYPE_CHECKING:
    import numpy as np

TASK = "language-model"


class TextGenError(UserError, ValueError):
    """The file is not a language model plexa can sample from, or the request is invalid."""


def generate_text(
    onnx_path: str | Path,
    prompt: str,
    max_new_tokens: int = 200,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
) -> str:
    """The prompt followed by `max_new_tokens` sampled tokens (characters, or BPE tokens).

    `temperature` 0 picks the likeliest token every time; `top_k` (None or 0: all) samples
    among the k likeliest only. The same file, prompt and seed give the same text.
    """
    import numpy as np
    import onnxruntime as ort

    if max_new_tokens < 0:
        raise TextGenError(f"max_new_tokens must be at least 0, not {max_new_tokens}")
    if not temperature >= 0:
        raise TextGenError(f"temperature must be at least 0, not {temperature}")
    if top_k is not None and top_k < 0:
        raise TextGenError(f"top_k must be at least 1 (or 0 / None for all), not {top_k}")
    path = Path(onnx_path)
    if not path.is_file():
        raise TextGenError(f"no ONNX file at {path}")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    codec, context = _describe(session.get_modelmeta().custom_metadata_map, path)
    ids = codec.encode(prompt, path)
    start = len(ids)

    rng = np.random.default_rng(seed)
    input_name = session.get_inputs()[0].name
    window = np.zeros((1, context), dtype=np.int64)
    for _ in range(max_new_tokens):
        recent = ids[-context:]
        window[0, : len(recent)] = recent
        window[0, len(recent) :] = 0
        logits = session.run(None, {input_name: window})[0][0, len(recent) - 1]
        ids.append(sample(logits, temperature, top_k, rng))
    return prompt + codec.decode(ids[start:])


@dataclass(frozen=True)
class Codec:
    """Text <-> token ids: the characters of `vocabulary`, or a BPE `tokenizer`."""

    vocabulary: list[str]
    tokenizer: Any = None  # a tokenizers.Tokenizer

    def encode(self, prompt: str, path: Path | str = "the model") -> list[int]:
        if self.tokenizer is None:
            return encode(prompt, self.vocabulary, path)
        # byte-level: every text has ids; an empty prompt starts from a line break
        ids: list[int] = self.tokenizer.encode(prompt or "\n").ids
        return ids or [0]

    def decode(self, ids: list[int]) -> str:
        if self.tokenizer is None:
            return "".join(self.vocabulary[i] for i in ids)
        return str(self.tokenizer.decode(ids, skip_special_tokens=False))


def _describe(meta: dict[str, str], path: Path) -> tuple[Codec, int]:
    """(how text becomes ids, context window) from a plexa export's metadata."""
    task = meta.get("task")
    if task != TASK:
        what = f"a {task}" if task else "not a plexa"
        raise TextGenError(f"{path} is {what} export; text generation needs a {TASK} export")
    try:
        vocabulary = json.loads(meta["class_names"])
        context = int(json.loads(meta["input"])["shape"][1])
        tokenizer = json.loads(meta.get("normalisation") or "{}").get("tokenizer")
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise TextGenError(f"{path}: metadata lacks the vocabulary or context ({exc})") from exc
    if tokenizer is None:
        return Codec(vocabulary), context
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise TextGenError(
            f"{path} was trained on BPE tokens; its tokenizer needs the `tokenizers` package: "
            "pip install 'plexa[text]'"
        ) from None
    try:
        return Codec(vocabulary, Tokenizer.from_str(json.dumps(tokenizer))), context
    except Exception as exc:  # tokenizers raises its own Exception for a JSON it cannot read
        raise TextGenError(f"{path}: the tokenizer in its metadata is unreadable ({exc})") from exc


def encode(prompt: str, vocabulary: list[str], path: Path | str = "the model") -> list[int]:
    """Token ids of `prompt`; characters the model never saw are refused, by name."""
    index = {ch: i for i, ch in enumerate(vocabulary)}
    unknown = sorted({ch for ch in prompt if ch not in index})
    if unknown:
        shown = ", ".join(repr(ch) for ch in unknown)
        raise TextGenError(f"the prompt has characters outside the vocabulary of {path}: {shown}")
    if not prompt:  # start from a line break when there is one, else from the first token
        return [index.get("\n", 0)]
    return [index[ch] for ch in prompt]


def sample(
    logits: np.ndarray, temperature: float, top_k: int | None, rng: np.random.Generator
) -> int:
    """One token id from next-token logits."""
    import numpy as np

    logits = np.asarray(logits, dtype=np.float64)
    if temperature == 0:
        return int(np.argmax(logits))
    logits = logits / temperature
    if top_k and top_k < len(logits):
        cutoff = np.partition(logits, -top_k)[-top_k]
        logits = np.where(logits >= cutoff, logits, -np.inf)
    p = np.exp(logits - logits.max())
    return int(rng.choice(len(p), p=p / p.sum()))
