"""Server logging: every line carries the id of the request it belongs to."""

from __future__ import annotations

import contextvars
import logging
import random
import re
import sys
import threading
import time

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
LOG_FORMAT = "%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# an INFO line of LOG_FORMAT with its time, request id, logger name and message still to fill
_INFO_LINE = (
    LOG_FORMAT % {"asctime": "%s", "levelname": "INFO", "request_id": "%s", "name": "%s",
                  "message": "%s"}
    + "\n"
)  # fmt: skip


def choose_id(given: str) -> str:
    """The request's id: the client's (X-Request-ID) when it is a short plain one, else new."""
    return given if given and _CLIENT_ID.match(given) else f"{random.getrandbits(64):016x}"


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every record, so the lines of one request can be joined."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class BatchedStderr(logging.StreamHandler):
    """stderr with the per-request lines (`write_line`) held in a block buffer and written out
    every `interval` seconds: a write per request would be a system call on the event loop for
    every request. Every ordinary record (start, errors, shutdown) is written at once, with
    whatever lines wait before it, so a process that ends by its signal loses none."""

    def __init__(self, interval: float = 0.2) -> None:
        stream = open(  # noqa: SIM115 - lives as long as the process
            sys.stderr.fileno(), "w", buffering=1 << 16, closefd=False, errors="backslashreplace"
        )
        super().__init__(stream)
        self._second, self._stamp = -1, ""
        ticker = threading.Thread(target=self._tick, args=(interval,), daemon=True)
        ticker.start()

    def _tick(self, interval: float) -> None:
        while True:
            time.sleep(interval)
            self.flush()

    def write_line(self, name: str, rid: str, message: str) -> None:
        """One INFO line in LOG_FORMAT, filled in here rather than through a LogRecord."""
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
        asctime = f"{self._stamp},{int((now - second) * 1000):03d}"
        line = _INFO_LINE % (asctime, rid, name, message)
        assert self.lock is not None  # Handler.__init__ made it (createLock)
        with self.lock:  # the ticker flushes from its own thread
            self.stream.write(line)


def configure_logging(level: int = logging.INFO) -> None:
    """Server logs on stderr, each line with the request id (`-` outside a request)."""
    handler = BatchedStderr()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    for name in ("plexa.serving", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        for old in logger.handlers:
            old.close()
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False


def access(logger: logging.Logger, rid: str, message: str) -> None:
    """The per-request line. A logging call costs a LogRecord, a filter and a formatter, a
    quarter of a small model's request, so when the server's own handler is the only one the
    line goes straight to it; otherwise (tests, an embedding app) it is an ordinary record."""
    handlers = logger.handlers
    if (
        len(handlers) == 1
        and type(handlers[0]) is BatchedStderr
        and logger.isEnabledFor(logging.INFO)
        and not logger.propagate
        and not logger.filters
    ):
        handlers[0].write_line(logger.name, rid, message)
    else:
        logger.info(message)
