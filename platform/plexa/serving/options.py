"""How a server runs: the `plexa serve` flags as one value (light to import)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServeOptions:
    max_batch: int = 32  # rows per ONNX Runtime call, at most
    max_wait_ms: float = 2.0  # how long a request waits for others to share its call
    batching: bool = True
    token: str | None = None  # bearer token; None: no authentication
    max_body_bytes: int = 4 * 1024 * 1024  # larger bodies get 413
    threads: int = 0  # ONNX Runtime intra-op threads; 0: its default
    background_load: bool = True  # False: load before accepting requests (Ray replicas)
    identify: bool = False  # answer with an x-plexa-replica header (which Ray replica)

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {self.max_batch}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must not be negative, not {self.max_wait_ms}")
        if self.max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be positive, not {self.max_body_bytes}")
