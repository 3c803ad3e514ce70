"""The bearer token both transports check: HTTP's Authorization header, gRPC's metadata."""

from __future__ import annotations

import hmac

REFUSAL = "missing or wrong bearer token (send Authorization: Bearer TOKEN)"


def authorized(header: bytes, token: bytes) -> bool:
    """`header` is `Bearer TOKEN` (scheme in any case), compared in constant time."""
    scheme, _, given = header.partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(given, token)
