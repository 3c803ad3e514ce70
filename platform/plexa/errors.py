"""The one error hierarchy: every error plexa raises on purpose says how the `plexa` command
ends (its exit code), so the command has one handler instead of one per subcommand.

- `UserError` (exit 2): the input is wrong and the message says what to fix: a pipeline, a
  plugin, data (file, line or row, column), a file, a run or model id, a server address or token.
- `RunFailed` (exit 1): the input was fine and the work failed: an ONNX export that breaks
  parity, a sweep where no trial finished, a federated round that timed out.
- `Interrupted` (exit 130): Ctrl-C or SIGTERM; what was saved is kept.

Anything else is a bug, shown with its traceback.
"""

from __future__ import annotations

from pathlib import Path

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID = 2
EXIT_INTERRUPTED = 130


class PlexaError(Exception):
    """Base of every error plexa raises on purpose."""

    exit_code = EXIT_FAILED


class UserError(PlexaError):
    """Bad input: a pipeline, a plugin, a file, data, an id, an address or a token."""

    exit_code = EXIT_INVALID


class DataError(UserError):
    """Data that cannot be used as the pipeline says; the message names the file, the line or
    row, the column and what was expected."""


class NotFoundError(UserError):
    """A run, model, file or plugin that is not where the user said."""


class UnreachableError(UserError):
    """A server (MLflow, a Ray cluster) that did not answer, or refused the credentials."""


class RunFailed(PlexaError):
    """The work itself failed on valid input."""

    exit_code = EXIT_FAILED


class Interrupted(PlexaError):
    """Ctrl-C or SIGTERM stopped the work."""

    exit_code = EXIT_INTERRUPTED


class RunInterrupted(Interrupted):
    """Ctrl-C (or SIGTERM) stopped training; the last checkpoint is kept for `--resume`."""

    def __init__(self, run_id: str | None, last_checkpoint: Path | None) -> None:
        self.run_id, self.last_checkpoint = run_id, last_checkpoint
        super().__init__(f"run {run_id} interrupted; last checkpoint: {last_checkpoint}")


class ResumeError(UserError):
    """A run that cannot be continued: finished, another pipeline, or no checkpoint."""
