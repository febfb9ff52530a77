"""Time-ordered UUIDs (RFC 9562 version 7): ids created later sort later, which keeps
the event id index append-mostly. Python 3.11 has no uuid7, so it is built here."""

from __future__ import annotations

import os
import time
import uuid

_last_ms = 0
_seq = 0


def uuid7() -> uuid.UUID:
    global _last_ms, _seq
    ms = time.time_ns() // 1_000_000
    if ms <= _last_ms:  # same millisecond (or clock step back): bump a 12-bit counter
        ms = _last_ms
        _seq = (_seq + 1) & 0xFFF
        if _seq == 0:
            ms += 1
    else:
        _seq = int.from_bytes(os.urandom(2), "big") & 0x7FF
    _last_ms = ms
    rand = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | _seq << 64 | 0b10 << 62 | rand
    return uuid.UUID(int=value)
