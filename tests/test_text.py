"""The `text` plugin's byte-level BPE: a tokenizer that learns from the training blocks alone
and round-trips any UTF-8, one token file per (text, tokenizer, split) cached and read back
without tokenizing, windows read from that file, and `plexa generate` on a BPE export."""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path

import numpy as np
import onnx
import pytest
from tokenizers import Tokenizer

from plexa import orchestrator
from plexa.config import ConfigError, validate
from plexa.errors import DataError
from plexa.plugins import DataSplits, Stream
from plexa.streaming import iter_batches
from plexa.textgen import Codec
from plexa_data.text import TOKENS_FILE, Text, TokenWindows, cache_root, deal

from .conftest import plexa

FILLER = "the quick brown fox jumps over the lazy dog; "
UNICODE = "naïve café, Grüße, 日本語のテキスト, emoji 🎉🦀, ﷽, e\u0301, \x00\t\r\n"


def tokenizer_of(data: DataSplits) -> Tokenizer:
    return Tokenizer.from_str(json.dumps(data.spec.normalisation["tokenizer"]))


def corpus(tmp_path: Path, blocks: int = 30, block: int = 256) -> tuple[Path, str]:
    """A corpus of `blocks` blocks mixing ASCII and Unicode text, each `block` characters."""
    rng = random.Random(0)
    words = [*FILLER.split(), *UNICODE.split(", ")]
    text = ""
    while len(text) < blocks * block:
        text += " ".join(rng.choice(words) for _ in range(12)) + "\n"
    path = tmp_path / "corpus.txt"
    path.write_text(text[: blocks * block], encoding="utf-8")
    return path, text[: blocks * block]


def bpe(path: Path, **params: object) -> Text.Config:
    return Text.Config(path=str(path), tokenizer="bpe", **params)


# ------------------------------------------------------------------ the tokenizer


def test_the_tokenizer_learns_from_training_blocks_only(tmp_path: Path) -> None:
    """A string frequent in the test blocks alone never becomes a token; one as frequent in
    the training blocks does (so the vocabulary is big enough to show it)."""
    block, n = 256, 20
    train, val, test = deal(n, Text.Config(block=block, context=16), n * block)
    fill = {
        **{b: "wvkp " * 26 + FILLER for b in train},
        **{b: FILLER for b in val},
        **{b: "zqxj " * 52 for b in test},
    }
    text = "".join((fill[b] * 8)[:block] for b in range(n))
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    data = Text().load(bpe(tmp_path / "t.txt", block=block, context=16, vocab_size=300), 0)
    tokenizer = tokenizer_of(data)
    vocab = list(tokenizer.get_vocab())
    assert any("wvkp" in token for token in vocab)
    assert not any(pair in token for token in vocab for pair in ("zq", "qx", "xj"))
    assert len(tokenizer.encode("zqxj").ids) == 4  # one byte each
    size = tokenizer.get_vocab_size()  # at most vocab_size: this text runs out of pairs
    assert data.spec.num_classes == size <= 300
    assert data.spec.class_names == tuple(tokenizer.id_to_token(i) for i in range(size))


def test_any_utf8_text_round_trips(tmp_path: Path) -> None:
    path, _ = corpus(tmp_path)
    data = Text().load(bpe(path, context=16, vocab_size=400), 0)
    tokenizer = tokenizer_of(data)
    codec = Codec(list(data.spec.class_names or ()), tokenizer)  # what `plexa generate` uses
    rng = random.Random(1)
    planes = [(0x0, 0x7F), (0x80, 0x7FF), (0x800, 0xD7FF), (0xE000, 0xFFFD), (0x10000, 0x10FFFF)]
    samples = [UNICODE, "  leading and trailing  ", "\n\n\r\n", "Ġ ĉ", "a" * 500]
    for _ in range(300):
        samples.append(
            "".join(chr(rng.randint(*rng.choice(planes))) for _ in range(rng.randint(1, 40)))
        )
    for text in samples:
        ids = tokenizer.encode(text).ids
        assert max(ids) < 400 and tokenizer.decode(ids) == text, repr(text)
        assert codec.decode(codec.encode(text)) == text, repr(text)


# ------------------------------------------------------------------ the token file


def test_the_token_file_is_cached_and_read_back_without_tokenizing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = corpus(tmp_path)
    root = tmp_path / ".plexa-cache"  # beside the corpus by default
    first = Text().load(bpe(path, context=16, vocab_size=300), 0)
    (folder,) = root.iterdir()
    tokens = folder / TOKENS_FILE
    stamp = tokens.stat().st_mtime_ns, (folder / "tokenizer.json").stat().st_mtime_ns

    # context and stride only choose windows: the same file, untouched
    again = Text().load(bpe(path, context=8, stride=3, vocab_size=300), 0)
    assert list(root.iterdir()) == [folder]
    assert (tokens.stat().st_mtime_ns, (folder / "tokenizer.json").stat().st_mtime_ns) == stamp
    assert again.spec.normalisation == first.spec.normalisation
    assert again.train.dataset.path == first.train.dataset.path == str(tokens)

    # another vocabulary, another split or another text: another folder
    Text().load(bpe(path, context=16, vocab_size=320), 0)
    Text().load(bpe(path, context=16, vocab_size=300, block=512), 0)
    original = path.read_bytes()
    path.write_bytes(original + b"more")
    Text().load(bpe(path, context=16, vocab_size=300), 0)
    assert len(list(root.iterdir())) == 4 and all(
        p.name.startswith("text-bpe-") for p in root.iterdir()
    )

    # a damaged file is noticed and rebuilt, to the same ids
    path.write_bytes(original)
    expected = np.fromfile(tokens, dtype=np.uint16)
    with open(tokens, "r+b") as f:
        f.truncate(10)
    rebuilt = Text().load(bpe(path, context=16, vocab_size=300), 0)
    assert np.array_equal(np.fromfile(tokens, dtype=np.uint16), expected)
    assert rebuilt.spec.normalisation == first.spec.normalisation

    # the built-in corpus caches in the runs folder, else the user's cache: never the checkout
    monkeypatch.setenv("PLEXA_RUNS_DIR", str(tmp_path / "runs"))
    assert cache_root(Text.Config(tokenizer="bpe")) == tmp_path / "runs" / ".plexa-cache"
    monkeypatch.delenv("PLEXA_RUNS_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root(Text.Config(tokenizer="bpe")) == tmp_path / "xdg" / "plexa"
    given = Text.Config.model_validate(
        {"tokenizer": "bpe", "cache_dir": "tokens"}, context={"base_dir": tmp_path}
    )
    assert cache_root(given) == tmp_path / "tokens"


def test_windows_read_from_the_token_file_are_slices_of_the_tokenized_blocks(
    tmp_path: Path,
) -> None:
    path, text = corpus(tmp_path, blocks=12)
    config = bpe(path, block=256, context=8, stride=5, vocab_size=300)
    data = Text().load(config, 0)
    tokenizer = tokenizer_of(data)
    blocks = [tokenizer.encode(text[i : i + 256]).ids for i in range(0, len(text), 256)]
    picks = deal(len(blocks), config, len(text))
    for split, chosen, stride in zip(
        (data.train, data.val, data.test), picks, (5, 8, 8), strict=True
    ):
        assert isinstance(split, Stream) and isinstance(split.dataset, TokenWindows)
        # a window and its next token, at every `stride` inside each block of the split
        expected = [
            blocks[b][s : s + 9] for b in chosen for s in range(0, len(blocks[b]) - 8, stride)
        ]
        dataset = pickle.loads(pickle.dumps(split.dataset))  # as a loader worker gets it
        assert len(dataset) == len(split) == len(expected) > 0
        x, y = dataset[len(expected) - 1]
        assert x.dtype == y.dtype == np.int64 and x.shape == y.shape == (8,)
        assert x.tolist() == expected[-1][:-1] and y.tolist() == expected[-1][1:]
        batch = dataset.__getitems__(list(range(len(expected))))
        assert [[*bx, by[-1]] for bx, by in batch] == expected
        xs, ys = zip(*iter_batches(split, 7), strict=True)  # the core's in-process reader
        assert np.concatenate(xs).tolist() == [w[:-1] for w in expected]
        assert np.concatenate(ys).tolist() == [w[1:] for w in expected]
        assert isinstance(dataset._tokens, np.memmap) and dataset._tokens.dtype == np.uint16
        if split is data.train:  # its labels are its targets: the core's unigram counts them
            assert split.labels.dtype == np.int32
            assert split.labels.tolist() == [w[1:] for w in expected]
        else:
            assert split.labels is None


# ------------------------------------------------------------------ errors


def test_bad_text_is_refused_by_the_command_before_anything_starts(workdir: Path) -> None:
    (workdir / "latin1.txt").write_bytes("a café au lait".encode("latin-1"))
    (workdir / "p.yaml").write_text(
        "name: bad\ndata: {plugin: text, params: {path: latin1.txt, tokenizer: bpe}}\n"
        "model: {plugin: transformer, params: {attention: causal}}\n"
    )
    for command in ("validate", "run"):
        done = plexa(command, "p.yaml", cwd=workdir, timeout=120)
        output = done.stdout + done.stderr
        assert done.returncode == 2, output
        assert "latin1.txt is not UTF-8 text: byte 5 cannot be decoded" in done.stdout, output
        assert "Traceback" not in output
    assert not (workdir / "plexa-runs").exists()

    # the file changed after validation: loading checks it again
    good = workdir / "good.txt"
    good.write_text("plain text " * 50, encoding="utf-8")
    config = bpe(good, block=64, context=8)
    good.write_bytes(b"plain \xff text " * 50)
    with pytest.raises(DataError, match=r"good.txt is not UTF-8 text: byte 6"):
        Text().load(config, 0)
    good.write_text("ab" * 400, encoding="utf-8")  # compresses to fewer tokens than the context
    with pytest.raises(DataError, match=r"no block holds more than the context \(30 tokens\)"):
        Text().load(bpe(good, block=32, context=30, vocab_size=300), 0)
    with pytest.raises(ConfigError, match="vocab_size is for tokenizer: bpe"):
        validate(
            {
                "name": "x",
                "data": {"plugin": "text", "params": {"vocab_size": 512}},
                "model": {"plugin": "transformer", "params": {"attention": "causal"}},
            }
        )


# ------------------------------------------------------------------ end to end


def test_a_bpe_model_trains_exports_and_generates_through_the_command(workdir: Path) -> None:
    import mlflow

    path, _ = corpus(workdir, blocks=24)
    spec = validate(
        {
            "name": "tiny-bpe",
            "data": {
                "plugin": "text",
                "params": {
                    "path": str(path),
                    "block": 256,
                    "context": 16,
                    "tokenizer": "bpe",
                    "vocab_size": 300,
                },
            },
            "model": {
                "plugin": "transformer",
                "params": {
                    "width": 16,
                    "heads": 2,
                    "layers": 1,
                    "feedforward": 32,
                    "dropout": 0.0,
                    "attention": "causal",
                },
            },
            "train": {"max_epochs": 1, "limit_batches": 2, "batch_size": 8},
        }
    )
    result = orchestrator.run(spec)
    assert result.status == "FINISHED" and result.export is not None
    assert "test/perplexity_vs_unigram" in result.metrics  # the labels fed the baseline

    props = {p.key: p.value for p in onnx.load(str(result.export.path)).metadata_props}
    shipped = json.loads(props["normalisation"])["tokenizer"]
    (folder,) = (workdir / ".plexa-cache").iterdir()
    assert shipped == json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    client = mlflow.MlflowClient()
    logged = client.download_artifacts(result.run_id, "data/tokenizer.json", str(workdir))
    assert json.loads(Path(logged).read_text(encoding="utf-8")) == shipped

    prompt = "naïve 🦀 the"  # a character the corpus lacks too: bytes are tokens
    done = plexa(
        "generate", result.run_id, "--prompt", prompt, "--max-new-tokens", "12", cwd=workdir
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith(prompt) and len(done.stdout.rstrip("\n")) > len(prompt)
