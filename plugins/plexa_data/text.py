"""`text`: a UTF-8 text for a language model, as characters or as byte-level BPE tokens.

With no `path`, the corpus is the docstrings of a fixed list of pure-Python standard-library
modules, read from their source files with `ast` (nothing imported, nothing downloaded), in
sorted module order and capped: the same text on every machine with the same Python version.

The text is cut into blocks of `block` characters that go, by a fixed seeded draw, to train /
val / test, so every split mixes all parts of the text. A sample is `context` token ids; its
target is the same window shifted by one token. Validation and test windows do not overlap
(each token is scored once); training windows start every `stride` tokens.

`tokenizer: char` (the default) makes a token of each character and holds the windows in
memory. `tokenizer: bpe` trains a byte-level BPE (Hugging Face `tokenizers`, `pip install
'plexa[text]'`) of `vocab_size` tokens on the training blocks alone, so any UTF-8 text
round-trips and val/test text never shapes the vocabulary. The corpus is tokenized once, block
by block, into a memory-mapped token file cached under `cache_dir` (default: `.plexa-cache`
beside the file; for the built-in corpus `$PLEXA_RUNS_DIR/.plexa-cache`, else
`~/.cache/plexa`), in a folder named by a hash of the text, the tokenizer and the split; later
loads read it back without tokenizing, and training reads its windows from the file. The
tokenizer travels in the export's metadata (`normalisation.tokenizer`), where `plexa generate`
finds it, and is logged with the run as `data/tokenizer.json`.

    data:
      plugin: text
      params: {path: corpus.txt, tokenizer: bpe, vocab_size: 2048, context: 128}
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import importlib.util
import json
import os
import shutil
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from plexa import DataError, artifacts
from plexa.plugins import DataPlugin, DataSpec, DataSplits, PluginConfig, Split, Stream

if TYPE_CHECKING:
    import numpy as np
    from tokenizers import Tokenizer

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
DEFAULT_VOCAB = 512
CACHE_FORMAT = 1  # bump when the files below change: old caches are then never read
TOKENS_FILE = "tokens.bin"  # every block's token ids, one after the other (uint16 or uint32)
OFFSETS_FILE = "offsets.npy"  # block b's tokens are tokens[offsets[b] : offsets[b + 1]]
TOKENIZER_FILE = "tokenizer.json"
META_FILE = "meta.json"  # written last: a folder without it is not a cache
TOKENIZER_ARTIFACT = "data/tokenizer.json"
INSTALL = "pip install 'plexa[text]'"


class Text(DataPlugin):
    class Config(PluginConfig):
        path: str | None = Field(
            None,
            description="A UTF-8 file (relative: from the pipeline's folder); default: the "
            "docstrings of a fixed list of standard-library modules.",
        )
        max_chars: int = Field(
            400_000, ge=100, description="The text is cut to its first max_chars characters."
        )
        context: int = Field(
            64,
            ge=2,
            description="Tokens a sample holds; its target is the same window shifted by one.",
        )
        stride: int | None = Field(
            None,
            ge=1,
            description="Tokens between training windows' starts; default: context (val and "
            "test windows never overlap).",
        )
        block: int = Field(
            2048,
            ge=16,
            description="Characters per block dealt to train, val and test by a fixed draw; "
            "longer than context.",
        )
        val_fraction: float = Field(
            0.1, gt=0, lt=1, description="The share of the blocks for validation."
        )
        test_fraction: float = Field(
            0.1, gt=0, lt=1, description="The share of the blocks for testing."
        )
        tokenizer: Literal["char", "bpe"] = Field(
            "char",
            description="char: a token per character, held in memory; bpe: a byte-level BPE "
            "trained on the training blocks (needs `plexa[text]`), read from a cached "
            "memory-mapped token file.",
        )
        vocab_size: int | None = Field(
            None, ge=256, le=1 << 20, description="bpe: the vocabulary's size; default 512."
        )
        cache_dir: str | None = Field(
            None,
            description="bpe: where the token files are cached (relative: from the pipeline's "
            "folder); default `.plexa-cache` beside the file, for the built-in corpus "
            "`$PLEXA_RUNS_DIR/.plexa-cache`, else `~/.cache/plexa`.",
        )

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

        @field_validator("cache_dir")
        @classmethod
        def _absolute(cls, value: str | None, info: ValidationInfo) -> str | None:
            if value is None:
                return None
            base = (info.context or {}).get("base_dir", Path.cwd())
            return str((Path(base) / Path(value).expanduser()).resolve())

        @model_validator(mode="after")
        def _room(self) -> Text.Config:
            if self.val_fraction + self.test_fraction >= 0.9:
                raise ValueError("val_fraction + test_fraction must leave at least 10% to train")
            if self.block <= self.context:
                raise ValueError(f"block ({self.block}) must be longer than context")
            if self.tokenizer == "char" and self.vocab_size is not None:
                raise ValueError("vocab_size is for tokenizer: bpe (char's vocabulary is the text)")
            if self.tokenizer == "bpe" and importlib.util.find_spec("tokenizers") is None:
                raise ValueError(f"tokenizer: bpe needs the `tokenizers` package: {INSTALL}")
            if self.path is not None:  # a file that is not UTF-8: found by `plexa validate`
                read_text(self.path, self.max_chars)
            return self

    def task(self, config: Config) -> str:
        return "language-model"

    def load(self, config: Config, seed: int) -> DataSplits:
        text = read_text(config.path, config.max_chars)
        splits = _load_bpe(config, text) if config.tokenizer == "bpe" else _load_chars(config, text)
        return dataclasses.replace(splits, source=config.path)  # None: the built-in corpus


def _load_chars(config: Text.Config, text: str) -> DataSplits:
    import numpy as np

    vocabulary = sorted(set(text))
    index = {ch: i for i, ch in enumerate(vocabulary)}
    ids = np.fromiter((index[ch] for ch in text), dtype=np.int64, count=len(text))
    blocks = [ids[i : i + config.block] for i in range(0, len(ids), config.block)]
    picks = deal(len(blocks), config, len(text))
    stride = config.stride or config.context
    train, val, test = (
        windows([blocks[i] for i in p], config.context, s)
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


def deal(n: int, config: Text.Config, chars: int) -> tuple[list[int], list[int], list[int]]:
    """Block indices of train, val and test (each sorted): a fixed draw, the same for any seed."""
    import numpy as np

    n_test = max(1, round(n * config.test_fraction))
    n_val = max(1, round(n * config.val_fraction))
    if n - n_test - n_val < 1:
        source = config.path or BUILTIN_CORPUS
        raise DataError(
            f"{source}: {chars} characters make {n} blocks of {config.block}; "
            "too few to split into train, val and test (lower `block`)"
        )
    order = np.random.default_rng(0).permutation(n)
    picks = (order[n_test + n_val :], order[n_test : n_test + n_val], order[:n_test])
    train, val, test = (sorted(int(i) for i in p) for p in picks)
    return train, val, test


# --------------------------------------------------------------------------- bpe


def _load_bpe(config: Text.Config, text: str) -> DataSplits:
    chunks = [text[i : i + config.block] for i in range(0, len(text), config.block)]
    picks = deal(len(chunks), config, len(text))
    corpus = TokenCorpus.open_or_build(config, text, chunks, picks[0])
    tokenizer = corpus.tokenizer()
    stride = config.stride or config.context
    train, val, test = (
        corpus.windows(p, config.context, s)
        for p, s in zip(picks, (stride, config.context, config.context), strict=True)
    )
    # the core's unigram baseline counts the training targets (val and test need no labels)
    train = Stream(train.dataset, corpus.targets(train.dataset))
    vocab = tokenizer.get_vocab_size()
    spec = DataSpec(
        task="language-model",
        input_shape=(config.context,),
        input_dtype="int64",
        num_classes=vocab,
        class_names=tuple(tokenizer.id_to_token(i) or "" for i in range(vocab)),
        # how raw text becomes the ids the model sees; `plexa generate` reads it from the export
        normalisation={"tokenizer": json.loads(tokenizer.to_str())},
    )
    artifacts.log_text(tokenizer.to_str(pretty=True), TOKENIZER_ARTIFACT)
    return DataSplits(spec, train, val, test)


def train_bpe(texts: Iterator[str] | list[str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE: every byte is in the base alphabet, so any UTF-8 text round-trips."""
    tokenizers = _tokenizers()
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tokenizer = tokenizers.Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def _tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError:  # validation said so already, unless it was uninstalled since
        raise DataError(f"data.params.tokenizer: bpe needs `tokenizers`: {INSTALL}") from None
    return tokenizers


class TokenCorpus:
    """The tokenized corpus in its cache folder: a token file, block offsets, the tokenizer."""

    def __init__(self, folder: Path) -> None:
        import numpy as np

        self.folder = folder
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
        self.dtype: str = meta["dtype"]
        self.offsets = np.load(folder / OFFSETS_FILE)
        size = (folder / TOKENS_FILE).stat().st_size
        if size != int(self.offsets[-1]) * np.dtype(self.dtype).itemsize:
            raise ValueError(f"{folder / TOKENS_FILE} holds {size} bytes, not the tokens listed")

    @classmethod
    def open_or_build(
        cls, config: Text.Config, text: str, chunks: list[str], train: list[int]
    ) -> TokenCorpus:
        """The cached corpus for this text, tokenizer and split; tokenized here when absent."""
        folder = cache_root(config) / f"text-bpe-{cache_key(config, text)}"
        if (folder / META_FILE).is_file():
            try:
                return cls(folder)
            except (OSError, ValueError, KeyError):
                shutil.rmtree(folder, ignore_errors=True)  # a damaged cache: build it again
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f"{folder.name}.", dir=folder.parent))
        except OSError as exc:
            raise DataError(
                f"cannot write the token cache under {folder.parent}: {exc.strerror}; "
                "set data.params.cache_dir to a writable folder"
            ) from None
        try:
            _build(staging, chunks, train, config.vocab_size or DEFAULT_VOCAB, config.path)
            try:
                staging.rename(folder)  # whole or not at all; a concurrent load may win
            except OSError:
                if not (folder / META_FILE).is_file():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return cls(folder)

    def tokenizer(self) -> Tokenizer:
        return _tokenizers().Tokenizer.from_file(str(self.folder / TOKENIZER_FILE))

    def windows(self, blocks: list[int], context: int, stride: int) -> Stream:
        """Windows of `context` ids inside each of `blocks`, read from the token file."""
        import numpy as np

        starts = [
            self.offsets[b] + np.arange(0, self.offsets[b + 1] - self.offsets[b] - context, stride)
            for b in blocks
        ]
        found = np.concatenate(starts) if starts else np.empty(0, dtype=np.int64)
        if not len(found):
            raise DataError(
                f"no block holds more than the context ({context} tokens); raise `block` "
                "or lower `context`"
            )
        path = str(self.folder / TOKENS_FILE)
        return Stream(TokenWindows(path, self.dtype, found.astype(np.int64), context))

    def targets(self, windows: TokenWindows) -> np.ndarray:
        """Every window's targets (int32: what torch counts), gathered in chunks."""
        import numpy as np

        out = np.empty((len(windows), windows.context), dtype=np.int32)
        for i in range(0, len(windows), 16_384):
            out[i : i + 16_384] = windows.gather(windows.starts[i : i + 16_384])[:, 1:]
        return out


def _build(folder: Path, chunks: list[str], train: list[int], vocab: int, path: str | None) -> None:
    import numpy as np

    tokenizers = _tokenizers()
    tokenizer = train_bpe([chunks[i] for i in train], vocab)
    dtype = np.dtype(np.uint16 if tokenizer.get_vocab_size() <= 1 << 16 else np.uint32)
    lengths = []
    with open(folder / TOKENS_FILE, "wb") as out:
        for i in range(0, len(chunks), 1024):  # block by block: no token crosses a block's end
            for encoding in tokenizer.encode_batch(chunks[i : i + 1024]):
                out.write(np.asarray(encoding.ids, dtype=dtype).tobytes())
                lengths.append(len(encoding.ids))
    np.save(folder / OFFSETS_FILE, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
    tokenizer.save(str(folder / TOKENIZER_FILE))
    meta = {
        "format": CACHE_FORMAT,
        "source": path or BUILTIN_CORPUS,
        "dtype": dtype.name,
        "tokens": int(sum(lengths)),
        "blocks": len(chunks),
        "vocab_size": tokenizer.get_vocab_size(),
        "tokenizers": tokenizers.__version__,
    }
    (folder / META_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")


def cache_root(config: Text.Config) -> Path:
    """Where token caches go: never the checkout a built-in-corpus pipeline runs from."""
    if config.cache_dir:
        return Path(config.cache_dir)
    if config.path:
        return Path(config.path).parent / ".plexa-cache"
    runs = os.environ.get("PLEXA_RUNS_DIR")
    if runs:
        return Path(runs).absolute() / ".plexa-cache"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "plexa"


def cache_key(config: Text.Config, text: str) -> str:
    """What the token file depends on: the text, the tokenizer, and which blocks train it."""
    tokenizers = _tokenizers()
    recipe = {
        "format": CACHE_FORMAT,
        "text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "tokenizer": {
            "kind": "byte-level-bpe",
            "vocab_size": config.vocab_size or DEFAULT_VOCAB,
            "tokenizers": tokenizers.__version__,
        },
        "split": {
            "block": config.block,
            "val_fraction": config.val_fraction,
            "test_fraction": config.test_fraction,
        },
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:20]


class TokenWindows:
    """A map-style dataset of `(ids[s : s + context], ids[s + 1 : s + context + 1])` over the
    token file; the file is opened (memory-mapped) on first read, in each loader worker."""

    def __init__(self, path: str, dtype: str, starts: np.ndarray, context: int) -> None:
        self.path, self.dtype, self.starts, self.context = path, dtype, starts, context
        self._tokens: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.starts)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tokens": None}  # a worker maps the file itself

    def gather(self, starts: np.ndarray) -> np.ndarray:
        """(len(starts), context + 1) int64 ids, one window and its next token per row."""
        import numpy as np

        if self._tokens is None:
            self._tokens = np.memmap(self.path, dtype=self.dtype, mode="r")
        rows = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(self.context + 1)
        return self._tokens[rows].astype(np.int64)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        window = self.gather(self.starts[[i]])[0]
        return window[:-1], window[1:]

    def __getitems__(self, indices: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
        """A whole batch in one read (the DataLoader asks for it this way)."""
        rows = self.gather(self.starts[indices])
        return [(row[:-1], row[1:]) for row in rows]


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
