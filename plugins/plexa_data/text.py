"""`text`: characters of a UTF-8 text for a character language model.

With no `path`, the corpus is the docstrings of a fixed list of pure-Python standard-library
modules, read from their source files with `ast` (nothing imported, nothing downloaded), in
sorted module order and capped: the same text on every machine with the same Python version.

The text is cut into blocks that go, by a fixed seeded draw, to train / val / test, so every
split mixes all parts of the text. A sample is `context` token ids; its target is the same
window shifted by one character. Validation and test windows do not overlap (each character
is scored once); training windows start every `stride` characters.
"""

from __future__ import annotations

import ast
import functools
import sysconfig
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field, ValidationInfo, field_validator, model_validator

from plexa import DataError
from plexa.plugins import DataPlugin, DataSpec, DataSplits, PluginConfig, Split

if TYPE_CHECKING:
    import numpy as np

#: the built-in corpus: pure-Python standard-library modules, in this (sorted) order
STDLIB_MODULES: tuple[str, ...] = tuple(
    sorted(
        (
            "argparse", "ast", "base64", "bisect", "calendar", "cmd", "codecs", "collections",
            "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal",
            "difflib", "email.message", "enum", "filecmp", "fileinput", "fnmatch", "fractions",
            "ftplib", "functools", "gettext", "glob", "gzip", "heapq", "hmac", "html.parser",
            "http.client", "http.cookiejar", "imaplib", "inspect", "ipaddress", "json",
            "logging", "mailbox", "mimetypes", "ntpath", "numbers", "optparse", "os",
            "pathlib", "pickle", "pkgutil", "platform", "plistlib", "poplib", "posixpath",
            "pprint", "pydoc", "queue", "quopri", "random", "re", "sched", "secrets",
            "selectors", "shlex", "shutil", "smtplib", "socket", "socketserver", "statistics",
            "string", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "timeit",
            "tokenize", "trace", "traceback", "turtle", "typing", "unittest.case", "urllib.parse",
            "urllib.request", "uuid", "warnings", "wave", "weakref", "webbrowser", "zipfile",
        )
    )
)  # fmt: skip
BUILTIN_CORPUS = "stdlib-docstrings"


class Text(DataPlugin):
    class Config(PluginConfig):
        path: str | None = None  # a UTF-8 file; relative paths are from the pipeline's folder
        max_chars: int = Field(400_000, ge=100)  # the text is cut to its first max_chars
        context: int = Field(64, ge=2)  # characters a sample holds
        stride: int | None = Field(None, ge=1)  # between training windows; default: context
        block: int = Field(2048, ge=16)  # characters per block dealt to the splits
        val_fraction: float = Field(0.1, gt=0, lt=1)
        test_fraction: float = Field(0.1, gt=0, lt=1)

        @field_validator("path")
        @classmethod
        def _readable(cls, value: str | None, info: ValidationInfo) -> str | None:
            if value is None:
                return None
            base = (info.context or {}).get("base_dir", Path.cwd())
            path = (Path(base) / Path(value).expanduser()).resolve()
            if not path.is_file():
                raise ValueError(f"no such file '{path}'")
            return str(path)

        @model_validator(mode="after")
        def _room(self) -> Text.Config:
            if self.val_fraction + self.test_fraction >= 0.9:
                raise ValueError("val_fraction + test_fraction must leave at least 10% to train")
            if self.block <= self.context:
                raise ValueError(f"block ({self.block}) must be longer than context")
            return self

    def task(self, config: Config) -> str:
        return "language-model"

    def load(self, config: Config, seed: int) -> DataSplits:
        import numpy as np

        text = read_text(config.path, config.max_chars)
        vocabulary = sorted(set(text))
        index = {ch: i for i, ch in enumerate(vocabulary)}
        ids = np.fromiter((index[ch] for ch in text), dtype=np.int64, count=len(text))
        blocks = [ids[i : i + config.block] for i in range(0, len(ids), config.block)]
        n = len(blocks)
        n_test = max(1, round(n * config.test_fraction))
        n_val = max(1, round(n * config.val_fraction))
        if n - n_test - n_val < 1:
            source = config.path or BUILTIN_CORPUS
            raise DataError(
                f"{source}: {len(text)} characters make {n} blocks of {config.block}; "
                "too few to split into train, val and test (lower `block`)"
            )
        order = np.random.default_rng(0).permutation(n)  # fixed: the same split for any seed
        picks = (order[n_test + n_val :], order[n_test : n_test + n_val], order[:n_test])
        stride = config.stride or config.context
        train, val, test = (
            windows([blocks[i] for i in sorted(p)], config.context, s)
            for p, s in zip(picks, (stride, config.context, config.context), strict=True)
        )
        spec = DataSpec(
            task="language-model",
            input_shape=(config.context,),
            input_dtype="int64",
            num_classes=len(vocabulary),
            class_names=tuple(vocabulary),  # token id -> character; what generation decodes
        )
        return DataSplits(spec, train, val, test)


def windows(blocks: list[np.ndarray], context: int, stride: int) -> Split:
    """Windows of `context` ids inside each block, and the next ids as targets."""
    import numpy as np

    xs, ys = [], []
    for ids in blocks:
        starts = np.arange(0, len(ids) - context, stride)
        if len(starts):
            idx = starts[:, None] + np.arange(context)[None, :]
            xs.append(ids[idx])
            ys.append(ids[idx + 1])
    if not xs:
        raise DataError(f"no block is longer than the context ({context} characters)")
    return Split(np.concatenate(xs), np.concatenate(ys))


def read_text(path: str | None, max_chars: int) -> str:
    """The user's file, or the built-in corpus, cut to `max_chars` characters."""
    if path is None:
        text = stdlib_docstrings()
        if not text:
            raise DataError(
                f"the built-in corpus is empty: no source files of {STDLIB_MODULES[0]} ... "
                f"under {sysconfig.get_paths()['stdlib']}; give data.params.path instead"
            )
        return text[:max_chars]
    try:
        with open(path, "rb") as f:
            raw = f.read(4 * max_chars)  # a UTF-8 character is at most 4 bytes
            cut = bool(f.read(1))
    except OSError as exc:
        raise DataError(f"cannot read the text file {path}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        if not (cut and exc.reason == "unexpected end of data"):
            raise DataError(
                f"{path} is not UTF-8 text: byte {exc.start} cannot be decoded ({exc.reason})"
            ) from None
        text = raw[: exc.start].decode("utf-8")  # the read ended inside a character
    if not text:
        raise DataError(f"{path} is empty: expected UTF-8 text")
    return text[:max_chars]


@functools.cache
def stdlib_docstrings() -> str:
    """Every docstring (module, classes, functions, in source order) of STDLIB_MODULES."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts: list[str] = []
    for name in STDLIB_MODULES:
        rel = Path(*name.split("."))
        for candidate in (rel.with_suffix(".py"), rel / "__init__.py"):
            source = root / candidate
            if source.is_file():
                break
        else:
            continue  # a trimmed installation: leave the module out
        parts += _docstrings(ast.parse(source.read_text(encoding="utf-8"), str(source)))
    return "\n\n".join(parts)


def _docstrings(node: ast.AST) -> list[str]:
    """Docstrings of a node and everything defined in it, depth first in source order."""
    out: list[str] = []
    if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
        doc = ast.get_docstring(node, clean=True)
        if doc:
            out.append(doc)
    for child in ast.iter_child_nodes(node):
        out += _docstrings(child)
    return out
