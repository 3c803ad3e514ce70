"""Sequence models: what sparse attention masks let each position see, the rnn and transformer
shapes, refused pairings, the forecasting and language-model metrics, and text sampled from a
language model's ONNX export."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from plexa import orchestrator
from plexa.config import ConfigError, validate
from plexa.errors import DataError
from plexa.plugins import DataSpec, architectures, datasets
from plexa.textgen import TextGenError, encode, generate_text
from plexa_models.attention import allowed, reachable

from .conftest import plexa as plexa_cli


def arch_build(name: str, data: DataSpec, **params: object) -> torch.nn.Module:
    arch = architectures.create(name)
    return arch.build(arch.Config(**params), data).eval()


def positions_seen(net: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    """seen[i, j]: does the hidden state at position i depend on the input at position j?"""
    x = x.clone().requires_grad_(True)
    steps = x.shape[1]
    seen = np.zeros((steps, steps), dtype=bool)
    hidden = net.hidden(x)
    probe = torch.randn(hidden.shape[-1])  # a plain sum of a LayerNorm output is constant
    for i in range(steps):
        (grad,) = torch.autograd.grad(hidden[0, i] @ probe, x, retain_graph=True)
        seen[i] = (grad[0] != 0).any(-1).numpy()
    return seen


# ------------------------------------------------------------------ attention masks


def test_sparse_patterns_are_what_child_et_al_describe() -> None:
    local = allowed("local", 10, window=3)
    for i in range(10):
        assert set(np.flatnonzero(local[i])) == set(range(max(0, i - 2), i + 1))
    strided = allowed("strided", 12, window=2, stride=4)
    assert set(np.flatnonzero(strided[9])) == {1, 5, 8, 9}  # 9 - 1, 9 - 5: multiples of 4
    assert set(np.flatnonzero(strided[3])) == {2, 3}
    assert not np.triu(allowed("causal", 6), 1).any() and allowed("full", 4).all()
    # two strided layers connect every position to every earlier one; local ones do not
    assert (reachable(allowed("strided", 16, 4, 4), 2) == allowed("causal", 16)).all()
    assert not (reachable(allowed("local", 16, 4), 2) == allowed("causal", 16)).all()
    with pytest.raises(ValueError, match="unknown attention pattern 'dense'"):
        allowed("dense", 4)


@pytest.mark.parametrize("pattern", ["full", "causal", "local", "strided"])
@pytest.mark.parametrize("layers", [1, 2])
def test_mask_limits_what_each_position_sees(pattern: str, layers: int) -> None:
    """The gradient of position i's output w.r.t. each input position is exactly zero outside
    what the pattern (composed over the layers) allows, and non-zero inside it."""
    torch.manual_seed(0)
    steps, features = 12, 3
    data = DataSpec(task="sequence", input_shape=(steps, features), output_dim=1)
    net = arch_build(
        "transformer",
        data,
        width=16,
        heads=2,
        layers=layers,
        feedforward=16,
        dropout=0.0,
        attention=pattern,
        window=3,
        stride=4,
    )
    seen = positions_seen(net, torch.randn(1, steps, features))
    assert (seen == reachable(allowed(pattern, steps, 3, 4), layers)).all(), seen.astype(int)


def test_language_model_logits_ignore_later_and_unseen_tokens() -> None:
    torch.manual_seed(0)
    data = DataSpec(task="language-model", input_shape=(16,), input_dtype="int64", num_classes=20)
    net = arch_build(
        "transformer", data, width=16, heads=2, layers=1, dropout=0.0, attention="local", window=4
    )
    ids = torch.randint(0, 20, (1, 16))
    changed = ids.clone()
    changed[0, 10] = (ids[0, 10] + 1) % 20  # position 10: seen by 10..13 only
    with torch.no_grad():
        same = (net(ids) == net(changed)).all(-1)[0]
    assert same.tolist() == [i not in range(10, 14) for i in range(16)]


# ------------------------------------------------------------------ shapes


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_rnn_cells_layers_and_directions(cell: str) -> None:
    digits = DataSpec(task="classification", input_shape=(1, 8, 8), num_classes=10)
    series = DataSpec(task="sequence", input_shape=(20, 2), output_dim=5)
    for bidirectional, layers, pool in ((False, 1, "last"), (True, 2, "mean"), (True, 3, "last")):
        params = dict(
            cell=cell, hidden=8, layers=layers, bidirectional=bidirectional, dropout=0.2, pool=pool
        )
        net = arch_build("rnn", digits, **params)
        assert net.rnn.bidirectional == bidirectional and net.rnn.num_layers == layers
        assert net(torch.rand(4, 1, 8, 8)).shape == (4, 10)
        assert arch_build("rnn", series, **params)(torch.rand(3, 20, 2)).shape == (3, 5)


def test_images_become_rows_or_patches() -> None:
    from plexa_models.seqnets import ToSequence

    image = torch.arange(2 * 64, dtype=torch.float32).reshape(2, 1, 8, 8)
    rows = ToSequence(3, "rows", 2)(image)
    assert rows.shape == (2, 8, 8) and torch.equal(rows[1, 3], image[1, 0, 3])
    patches = ToSequence(3, "patches", 2)(image)
    assert patches.shape == (2, 16, 4)
    assert torch.equal(patches[1, 5], image[1, 0, 2:4, 2:4].flatten())  # patch row 1, column 1
    digits = DataSpec(task="classification", input_shape=(1, 8, 8), num_classes=10)
    net = arch_build("transformer", digits, tokens="patches", patch=2)
    assert net(image).shape == (2, 10) and net.trunk.position.shape[1] == 16
    with pytest.raises(ValueError, match="patch 3 does not divide the image size 8x8"):
        arch_build("transformer", digits, tokens="patches", patch=3)


# ------------------------------------------------------------------ pairings


def pipeline(data: dict, model: dict) -> dict:
    return {"name": "pairing", "data": data, "model": model}


@pytest.mark.parametrize(
    ("data", "model", "message"),
    [
        (
            {"plugin": "text"},
            {"plugin": "mlp"},
            "architecture 'mlp' does not support the language-model task of data 'text'",
        ),
        (
            {"plugin": "text"},
            {"plugin": "rnn"},
            "architecture 'rnn' does not support the language-model task of data 'text'",
        ),
        (
            {"plugin": "text"},
            {"plugin": "transformer", "params": {"attention": "full"}},
            "architecture 'transformer' with these params does not support the language-model "
            "task of data 'text'",
        ),
        (
            {"plugin": "sequences"},
            {"plugin": "cnn"},
            "architecture 'cnn' does not support the sequence task of data 'sequences'",
        ),
    ],
)
def test_wrong_pairings_are_refused_at_validation(data: dict, model: dict, message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        validate(pipeline(data, model))
    assert refused.value.problems[0][0] == "model.plugin"
    assert message in str(refused.value)


def test_right_pairings_and_bad_params_are_reported_with_their_paths() -> None:
    lm = {"plugin": "transformer", "params": {"attention": "strided"}}
    assert validate(pipeline({"plugin": "text"}, lm)).model.params["attention"] == "strided"
    with pytest.raises(ConfigError) as refused:
        validate(
            pipeline(
                {"plugin": "sequences", "params": {"window": 190, "horizon": 20}},
                {"plugin": "rnn", "params": {"cell": "lstm", "heads": 4}},
            )
        )
    problems = dict(refused.value.problems)
    assert "must fit in a series of length 200" in problems["data.params"]
    assert problems["model.params.heads"].startswith("unknown key (architecture plugin 'rnn')")
    with pytest.raises(ConfigError, match="width 30 is not divisible by heads 4"):
        validate(
            pipeline(
                {"plugin": "text"},
                {"plugin": "transformer", "params": lm["params"] | {"width": 30, "heads": 4}},
            )
        )


# ------------------------------------------------------------------ data


def test_text_windows_the_builtin_corpus_and_refuses_bad_files(tmp_path: Path) -> None:
    from plexa_data.text import Text, stdlib_docstrings

    corpus = stdlib_docstrings()
    assert len(corpus) > 100_000 and "Command-line parsing library" in corpus
    data = Text().load(Text.Config(max_chars=20_000, context=32, block=512), seed=0)
    assert data.spec.task == "language-model" and data.spec.input_shape == (32,)
    assert list(data.spec.class_names) == sorted(set(corpus[:20_000]))
    for split in (data.train, data.val, data.test):
        assert split.x.dtype == np.int64 and (split.x[:, 1:] == split.y[:, :-1]).all()
    # val and test windows do not overlap: each character is scored once
    assert data.val.x.size < 20_000 * 0.15

    (tmp_path / "latin1.txt").write_text("cafe", encoding="utf-8")
    bad = {"plugin": "text", "params": {"path": "latin1.txt"}}
    transformer = {"plugin": "transformer", "params": {"attention": "causal"}}
    spec = validate(pipeline(bad, transformer), base_dir=tmp_path)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.txt is not UTF-8 text: byte 3"):
        datasets.create("text").load(spec.data_config(), 0)
    with pytest.raises(DataError, match=r"latin1.txt is not UTF-8 text: byte 3"):
        validate(pipeline(bad, transformer), base_dir=tmp_path)  # found before anything runs
    missing = {"plugin": "text", "params": {"path": "nope.txt"}}
    with pytest.raises(ConfigError) as refused:
        validate(
            pipeline(missing, {"plugin": "transformer", "params": {"attention": "causal"}}),
            base_dir=tmp_path,
        )
    assert dict(refused.value.problems)["data.params.path"].startswith("no such file")


def test_sequences_windows_continue_their_series() -> None:
    from plexa_data.sequences import Sequences, generate

    config = Sequences.Config(series=20, length=60, window=16, horizon=4, stride=8)
    data = Sequences().load(config, seed=0)
    assert data.train.x.shape[1:] == (16, 1) and data.train.y.shape[1:] == (4,)
    starts = len(range(0, 60 - 20 + 1, 8))
    assert len(data.train) + len(data.val) + len(data.test) == 20 * starts
    series = generate(config, np.random.default_rng(config.data_seed))
    window = np.concatenate([data.test.x[0, :, 0], data.test.y[0]])
    assert any(np.array_equal(window, row[:20]) for row in series)  # one series' first window


# ------------------------------------------------------------------ metrics and generation


def test_forecast_metrics_score_the_naive_forecast(workdir: Path) -> None:
    spec = validate(
        {
            "name": "sine-tiny",
            "data": {
                "plugin": "sequences",
                "params": {"series": 30, "length": 40, "window": 16, "horizon": 4},
            },
            "model": {
                "plugin": "rnn",
                "params": {"cell": "rnn", "hidden": 16, "layers": 2, "bidirectional": True},
            },
            "train": {"max_epochs": 1},
            "export": {"onnx": False},  # the shipped pipelines' smoke tests export LSTM and GRU
        }
    )
    result = orchestrator.run(spec)
    test = datasets.create("sequences").load(spec.data_config(), 0).test
    naive = float(((test.x[:, -1, :1] - test.y) ** 2).mean())
    m = result.metrics
    assert m["test/naive_mse"] == pytest.approx(naive, rel=1e-5)
    assert m["test/mse_vs_naive"] == pytest.approx(m["test/mse"] / naive, rel=1e-5)


REPEATED = "abcdefghijklmnopqrstuvwxyz\n" * 60  # each character says which one follows


def continued(prompt: str, n: int) -> str:
    """The prompt and the n characters that follow it in REPEATED."""
    start = REPEATED.index(prompt)
    return REPEATED[start : start + len(prompt) + n]


def test_char_lm_export_generates_text(workdir: Path) -> None:
    """A small transformer learns the alphabet; its ONNX export, sampled through the API and
    through `plexa generate`, continues it, past its 16-character context window too."""
    corpus = workdir / "alphabet.txt"
    corpus.write_text(REPEATED, encoding="utf-8")
    spec = validate(
        {
            "name": "alphabet-lm",
            "data": {
                "plugin": "text",
                "params": {"path": str(corpus), "context": 16, "block": 128, "stride": 8},
            },
            "model": {
                "plugin": "transformer",
                "params": {
                    "width": 32,
                    "heads": 2,
                    "layers": 1,
                    "feedforward": 32,
                    "dropout": 0.0,
                    "attention": "causal",
                },
            },
            "train": {"max_epochs": 4, "batch_size": 16, "optimizer": {"lr": 0.01}},
        }
    )
    result = orchestrator.run(spec)
    data = datasets.create("text").load(spec.data_config(), 0)

    # the unigram baseline is the training split's add-one smoothed frequencies on test tokens
    counts = np.bincount(data.train.y.ravel(), minlength=data.spec.num_classes) + 1.0
    nll = -np.log(counts / counts.sum())[data.test.y.ravel()].mean()
    m = result.metrics
    assert m["test/unigram_perplexity"] == pytest.approx(math.exp(nll), rel=1e-5)
    assert m["test/perplexity"] == pytest.approx(math.exp(m["test/loss"]), rel=1e-5)
    assert m["test/perplexity_vs_unigram"] < 0.5

    path = result.export.path
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["task"] == "language-model"
    assert "".join(json.loads(props["class_names"])) == "".join(sorted(set(REPEATED)))
    greedy = generate_text(path, "cde", max_new_tokens=40, temperature=0)
    assert greedy == continued("cde", 40)
    long_prompt = continued("a", 30)  # longer than the context: its last 16 characters count
    assert generate_text(path, long_prompt, 5, temperature=0) == continued(long_prompt, 5)
    sampled = generate_text(path, "", max_new_tokens=40, temperature=1.0, top_k=3, seed=7)
    assert sampled == generate_text(path, "", 40, 1.0, 3, 7) and len(sampled) == 40
    assert set(sampled) <= set(REPEATED)
    with pytest.raises(TextGenError, match=r"outside the vocabulary .*'Q', 'é'"):
        generate_text(path, "Qé")

    out = plexa_cli(
        "generate",
        str(path),
        "--prompt",
        "xy",
        "--max-new-tokens",
        "6",
        "--temperature",
        "0",
        cwd=workdir,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.rstrip("\n") == continued("xy", 6)
    refused = plexa_cli("generate", str(path), "--prompt", "xyZ", cwd=workdir)
    assert refused.returncode == 2 and "outside the vocabulary" in refused.stderr + refused.stdout


def test_encode_refuses_unknown_characters_by_name() -> None:
    assert encode("ab", ["a", "b"]) == [0, 1]
    assert encode("", ["\n", "a"]) == [0]
    with pytest.raises(TextGenError, match="'c'"):
        encode("abc", ["a", "b"])


def test_generate_refuses_an_export_that_is_not_a_language_model(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["output"])],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [None, 4])],
    )
    model = helper.make_model(graph)
    helper.set_model_props(model, {"task": "classification"})
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    with pytest.raises(TextGenError, match="is a classification export; text generation needs"):
        generate_text(path, "hi")


def test_a_sweep_may_follow_the_sequence_metrics_and_no_others() -> None:
    from plexa.config import load_pipeline

    from .conftest import PIPELINES

    lm = load_pipeline(PIPELINES / "text-charlm.yaml", ["sweep={metric: val/perplexity}"])
    assert lm.sweep is not None and lm.sweep.metric == "val/perplexity"
    with pytest.raises(ConfigError, match="the sequence task logs no 'val/acc'"):
        load_pipeline(PIPELINES / "sine-forecast.yaml", ["sweep={metric: val/acc}"])
