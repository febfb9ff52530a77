"""Stripe webhook signatures: verify the `Stripe-Signature` header, and sign test payloads.

The scheme (Stripe's "verify manually" steps, as its SDKs implement them):

* the header is a comma-separated list of `key=value` elements: `t` is the unix time the
  signature was made, each `v1` is a signature (several during an endpoint secret roll,
  one per active secret), `v0` is a test-mode scheme that is ignored;
* the signed payload is `f"{t}.{raw body}"`, the body exactly as received (bytes, never
  re-serialised JSON);
* a `v1` is the lower-case hex HMAC-SHA256 of the signed payload keyed with the endpoint
  secret (`whsec_...`, used as is);
* signatures are compared in constant time, and the timestamp must be within the
  tolerance of now (300 s by default) to defeat replays. Stripe's SDKs only refuse old
  timestamps; we also refuse timestamps too far in the future, so a clock-skewed or
  forged future `t` cannot stretch the replay window.

Several secrets are accepted so that an endpoint secret can be rotated without downtime.
Pure functions: `now` is passed in.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence

__all__ = [
    "DEFAULT_TOLERANCE",
    "HEADER",
    "SignatureError",
    "compute_signature",
    "parse_header",
    "sign",
    "verify",
]

HEADER = "Stripe-Signature"
DEFAULT_TOLERANCE = 300  # seconds, Stripe's default
SCHEME = "v1"

_TIMESTAMP = re.compile(r"^[0-9]{1,12}$")


class SignatureError(ValueError):
    """A webhook whose signature cannot be trusted (the webhook answers 400 and stores nothing).

    `reason` is one of REASONS; the message adds detail for logs, never the expected signature.
    """

    MISSING_HEADER = "missing header"
    MALFORMED_HEADER = "malformed header"
    TIMESTAMP_OUTSIDE_TOLERANCE = "timestamp outside tolerance"
    NO_MATCHING_SIGNATURE = "no matching v1 signature"
    REASONS = (MISSING_HEADER, MALFORMED_HEADER, TIMESTAMP_OUTSIDE_TOLERANCE, NO_MATCHING_SIGNATURE)

    code = "invalid_signature"

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in self.REASONS:
            raise ValueError(f"unknown signature error reason {reason!r}")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def _as_bytes(payload: bytes | str) -> bytes:
    return payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)


def compute_signature(payload: bytes | str, secret: str, timestamp: int) -> str:
    """The v1 signature: hex HMAC-SHA256 of `f"{timestamp}.{payload}"` keyed with `secret`."""
    if not secret:
        raise ValueError("the signing secret must not be empty")
    signed = f"{int(timestamp)}.".encode() + _as_bytes(payload)
    return hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()


def sign(payload: bytes | str, secret: str, timestamp: int) -> str:
    """The `Stripe-Signature` header value for `payload`: `t=<timestamp>,v1=<signature>`.

    For tests, the README and the dev CLI (Stripe itself signs real deliveries).
    """
    return f"t={int(timestamp)},{SCHEME}={compute_signature(payload, secret, timestamp)}"


def parse_header(header: str | None) -> tuple[int, list[str]]:
    """(timestamp, v1 signatures) from a header value; other schemes (v0) and unknown keys are ignored.

    Raises SignatureError: "missing header" when absent or blank, "malformed header" when an
    element is not `key=value`, or `t` is missing, repeated or not a unix time.
    """
    if header is None or not header.strip():
        raise SignatureError(SignatureError.MISSING_HEADER)
    timestamps: list[str] = []
    signatures: list[str] = []
    for element in header.split(","):
        key, sep, value = element.strip().partition("=")
        if not sep or not key:
            raise SignatureError(SignatureError.MALFORMED_HEADER, f"element {element.strip()[:20]!r} is not key=value")
        if key == "t":
            timestamps.append(value.strip())
        elif key == SCHEME:
            signatures.append(value.strip())
    if len(timestamps) != 1:
        raise SignatureError(SignatureError.MALFORMED_HEADER,
                             "no timestamp (t=)" if not timestamps else "more than one timestamp")
    if not _TIMESTAMP.match(timestamps[0]):
        raise SignatureError(SignatureError.MALFORMED_HEADER, "t must be a unix time in seconds")
    return int(timestamps[0]), signatures


def verify(payload: bytes | str, header: str | None, secrets: Sequence[str], *, now: int,
           tolerance: int = DEFAULT_TOLERANCE) -> int:
    """Check a webhook's `Stripe-Signature` header against the raw body; return the signed timestamp.

    Any `v1` signature made with any of `secrets` is accepted (rotation). The signature is
    checked before the timestamp, as Stripe's SDKs do, so a forged request learns nothing
    about our clock. Raises SignatureError with one of its four reasons.
    """
    if isinstance(secrets, str):
        raise TypeError("secrets must be a sequence of secrets, not one string")
    usable = [s for s in secrets if s]
    if not usable:
        raise ValueError("at least one non-empty endpoint secret is needed")
    if tolerance < 0:
        raise ValueError("tolerance must not be negative")
    timestamp, signatures = parse_header(header)
    if not signatures:
        raise SignatureError(SignatureError.NO_MATCHING_SIGNATURE, "the header has no v1 signature")
    body = _as_bytes(payload)
    matched = False
    # Compare every (secret, signature) pair so that the time taken does not depend on which matched.
    for secret in usable:
        expected = compute_signature(body, secret, timestamp).encode("ascii")
        for candidate in signatures:
            if hmac.compare_digest(expected, candidate.encode("utf-8", "replace")):
                matched = True
    if not matched:
        raise SignatureError(SignatureError.NO_MATCHING_SIGNATURE)
    age = now - timestamp
    if age > tolerance:
        raise SignatureError(SignatureError.TIMESTAMP_OUTSIDE_TOLERANCE,
                             f"signed {age} s ago (tolerance {tolerance} s)")
    if -age > tolerance:
        raise SignatureError(SignatureError.TIMESTAMP_OUTSIDE_TOLERANCE,
                             f"signed {-age} s in the future (tolerance {tolerance} s)")
    return timestamp
