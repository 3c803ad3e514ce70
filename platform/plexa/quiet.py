"""Keep the terminal for plexa's own lines: library chatter goes to WARNING and above."""

from __future__ import annotations

import logging
import os
import warnings

_MESSAGES = (
    r".*isinstance\(treespec, LeafSpec\).*",
    r".*does not have many workers.*",
    # plexa's task modules reduce their epoch sums over ranks themselves
    r".*when logging on epoch level in distributed setting.*",
    r".*torch.distributed.nn.functional.all_gather is deprecated.*",
    r".*Checkpoint directory .* exists and is not empty.*",
    # plexa's task modules skip the transfer of batches already on the device, on purpose
    r".*overridden `transfer_batch_to_device`.*",
    # a streaming run resumes mid-epoch through its data module's state (plexa.streaming)
    r".*resuming from a checkpoint that ended before the epoch ended.*",
    # streamed samples are read from memory maps; each batch is a fresh tensor
    r".*given NumPy array is not writable.*",
)


def quiet_libraries() -> None:
    """Without importing the libraries: importing Lightning alone takes seconds, which a Ray
    driver that only trains on workers should not spend before its first epoch."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    # Lightning resets its package loggers to INFO when imported, but not the modules' own
    # loggers its messages come from: those keep the level set here
    for name in (
        "lightning.pytorch",
        "lightning.fabric",
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric.utilities.rank_zero",
        "lightning.pytorch.accelerators.cuda",
        "mlflow",
        "alembic",
        "ray.train",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in _MESSAGES:
        warnings.filterwarnings("ignore", message=message)


def quiet_ray_data() -> None:
    """Ray Data's progress bars and INFO lines off in this process, for a run whose data plugin
    reads with Ray Data. Datasets made after this carry the setting to the actors that run
    them (a streaming split's coordinator)."""
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
