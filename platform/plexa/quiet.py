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
)


def quiet_libraries() -> None:
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    import lightning.pytorch  # noqa: F401  (it sets its loggers to INFO on import)

    for name in ("lightning.pytorch", "lightning.fabric", "mlflow", "alembic", "ray.train"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in _MESSAGES:
        warnings.filterwarnings("ignore", message=message)
