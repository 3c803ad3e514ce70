"""What a plugin logs into the run it trains in (a generator's sample grids, a data plugin's
trained tokenizer): through the run's tracker, the one object that logs, so it lands in the
right run from any thread and follows a failover. Outside a run, and in worker processes (DDP
ranks > 0, Ray workers), there is no run here and nothing is logged."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

_RUNS: list[Any] = []  # the trackers of the runs open in this process, innermost last


@contextlib.contextmanager
def logging_to(tracker: Any) -> Iterator[None]:
    """Make `tracker`'s run the one `log_image` logs to, while the block runs."""
    _RUNS.append(tracker)
    try:
        yield
    finally:
        _RUNS.remove(tracker)


def log_image(image: Any, path: str) -> bool:
    """Log an image (an HxW or HxWxC array, or a PIL image) at `path` in the run's artifacts;
    False where no run is open here."""
    if not _RUNS:
        return False
    _RUNS[-1].log_image(image, path)
    return True


def log_text(text: str, path: str) -> bool:
    """Log `text` as the file `path` in the run's artifacts; False where no run is open here."""
    if not _RUNS:
        return False
    _RUNS[-1].log_text(text, path)
    return True
