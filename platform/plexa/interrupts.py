"""SIGTERM is Ctrl-C: `kill`, a scheduler or `docker stop` gets the same orderly end.

Ctrl-C already has a path everywhere: Lightning tears training down and keeps the last
checkpoint, Ray Train's handler aborts its controller and workers, and plexa marks the MLflow
run KILLED and shuts down the Ray it started. SIGTERM's default ends the process at once, and
`ray.init` installs its own handler that stops Ray's daemons but leaves the training workers
running as orphans, so plexa hands SIGTERM to whatever handles Ctrl-C at that moment.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType


def _as_ctrl_c(signum: int, frame: FrameType | None) -> None:
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:  # ignored or default: Python's own Ctrl-C
        raise KeyboardInterrupt(f"signal {signum}")


def sigterm_as_ctrl_c() -> None:
    """Install the handler (signals can only be set from the main thread)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _as_ctrl_c)
