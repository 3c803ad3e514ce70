"""`plexa --help` and every command's `--help`: a summary and a description, help for every
argument and option, and an `Examples:` section whose commands parse with the real parser (and
whose pipelines, overrides included, load)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import typer.main
from typer.testing import CliRunner

from plexa.cli import app
from plexa.config import load_pipeline

from .conftest import BIN, REPO

ROOT = typer.main.get_command(app)  # the click command `plexa` runs, built as `app()` builds it
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _walk(
    command: click.Command, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    """`plexa` itself, then every command under it, nested groups' commands too."""
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            yield from _walk(sub, (*path, name))


COMMANDS = list(_walk(ROOT))
IDS = [" ".join(("plexa", *path)) for path, _ in COMMANDS]


def _help(path: tuple[str, ...]) -> str:
    """What `plexa PATH --help` prints in an 80-column terminal."""
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    return ANSI.sub("", result.output)


def _examples(text: str) -> list[str]:
    """The lines after `Examples:`, up to the first blank one."""
    lines = [line.strip() for line in text.splitlines()]
    assert "Examples:" in lines, text
    examples = []
    for line in lines[lines.index("Examples:") + 1 :]:
        if not line:
            break
        examples.append(line)
    return examples


def _parse(args: list[str]) -> click.Context:
    """Parse `plexa ARGS` as the command does, invoking nothing; the innermost context."""
    command: click.Command = ROOT
    ctx = command.make_context("plexa", list(args))
    while isinstance(command, click.Group):
        # what Group.invoke resolves: the command name and the arguments after it
        name, sub, rest = command.resolve_command(ctx, [*ctx._protected_args, *ctx.args])
        assert name is not None and sub is not None
        command = sub
        ctx = command.make_context(name, rest, parent=ctx)
    return ctx


def test_the_walk_reaches_every_command() -> None:
    names = {path[0] for path, _ in COMMANDS if path}
    assert {"validate", "run", "serve", "submit", "jobs", "logs", "sync"} <= names


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=IDS)
def test_every_command_has_a_summary_and_a_description(
    path: tuple[str, ...], command: click.Command
) -> None:
    paragraphs = [p.strip() for p in (command.help or "").split("\n\n")]
    assert len(paragraphs) >= 2 and all(paragraphs), f"plexa {' '.join(path)}: {command.help!r}"
    summary = paragraphs[0]
    assert len(summary) <= 100 and "\n" not in summary, summary
    # the text --help shows (its first words: the terminal wraps the rest)
    assert " ".join(summary.split()[:4]) in " ".join(_help(path).split())


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=IDS)
def test_every_argument_and_option_has_help(path: tuple[str, ...], command: click.Command) -> None:
    ctx = click.Context(command, info_name="plexa")
    for param in command.get_params(ctx):
        if param.name == "help":
            continue
        help_text = getattr(param, "help", None)
        assert help_text and help_text.strip(), f"plexa {' '.join(path)}: {param.name} has no help"
        if isinstance(param, click.Option) and param.default not in (None, False, "", ()):
            assert param.show_default is not False, f"{param.name}: its default is hidden"


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=IDS)
def test_every_help_ends_with_examples_that_parse(
    path: tuple[str, ...], command: click.Command
) -> None:
    examples = _examples(_help(path))
    for line in examples:  # one command a line: a wrapped one would not start with `plexa`
        assert line.startswith("plexa "), f"{line!r} in the help of plexa {' '.join(path)}"
    words = [shlex.split(line) for line in examples]
    assert any(w[1 : 1 + len(path)] == list(path) for w in words), examples
    for line, argv in zip(examples, words, strict=True):
        try:
            ctx = _parse(argv[1:])
        except click.UsageError as exc:
            pytest.fail(f"{line!r} does not parse: {exc.format_message()}")
        pipeline = ctx.params.get("pipeline")
        if pipeline is not None and str(pipeline).endswith(".yaml"):
            file = REPO / str(pipeline)
            assert file.is_file(), f"{line!r}: no pipeline {pipeline}"
            overrides = [*(ctx.params.get("overrides") or []), *(ctx.params.get("sets") or [])]
            load_pipeline(file, overrides)  # a misspelt key fails here


def test_the_installed_command_lists_every_command() -> None:
    path = os.pathsep.join(
        [str(REPO / "platform"), str(REPO / "plugins"), os.environ.get("PYTHONPATH", "")]
    )
    out = subprocess.run(
        [str(BIN / "plexa"), "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": path, "COLUMNS": "100"},
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    text = ANSI.sub("", out.stdout)
    for name, command in ROOT.commands.items():
        first_word = (command.help or "").split()[0]
        # the command's row in the Commands panel: its name, then its summary
        assert re.search(rf"^\W*{re.escape(name)} +{re.escape(first_word)} ", text, re.M), name
    assert _examples(text) and all(line.startswith("plexa ") for line in _examples(text))


def test_an_example_with_a_wrong_option_does_not_parse() -> None:
    """The check above can fail: a misspelt option or a missing argument is a usage error."""
    with pytest.raises(click.NoSuchOption):
        _parse(["run", "pipelines/digits-cnn.yaml", "--resum", "RUN_ID"])
    with pytest.raises(click.MissingParameter):
        _parse(["export"])
    assert _parse(["--debug", "export", "RUN_ID"]).params["run_id"] == "RUN_ID"


def test_a_pipeline_example_with_a_wrong_key_fails_to_load() -> None:
    from plexa.errors import PlexaError

    with pytest.raises(PlexaError, match="max_epoch"):
        load_pipeline(Path(REPO / "pipelines/digits-cnn.yaml"), ["train.max_epoch=3"])
