"""Stripe webhook signatures: the scheme, rotation, tolerance both ways, and every malformed header."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from services.payments.domain.signature import (
    DEFAULT_TOLERANCE,
    HEADER,
    SignatureError,
    compute_signature,
    parse_header,
    sign,
    verify,
)
from tests.unit.payments_upstream import CHARGE, OLD_SECRET, SECRET, charge, event

T = 1747030000
BODY = json.dumps(event("charge.succeeded", charge()), indent=2).encode()


def reason(excinfo: pytest.ExceptionInfo[SignatureError]) -> str:
    return excinfo.value.reason


def test_the_signature_is_hex_hmac_sha256_of_timestamp_dot_body() -> None:
    expected = hmac.new(SECRET.encode(), f"{T}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert compute_signature(BODY, SECRET, T) == expected
    assert sign(BODY, SECRET, T) == f"t={T},v1={expected}"
    assert compute_signature(BODY.decode(), SECRET, T) == expected  # str and bytes sign the same text
    assert HEADER == "Stripe-Signature" and DEFAULT_TOLERANCE == 300


def test_a_valid_signature_returns_the_signed_timestamp() -> None:
    assert verify(BODY, sign(BODY, SECRET, T), [SECRET], now=T) == T
    assert verify(BODY, sign(BODY, SECRET, T), [SECRET], now=T + 120) == T


def test_a_tampered_body_does_not_verify() -> None:
    tampered = BODY.replace(CHARGE.encode(), b"ch_3Forged000000000000000000")
    assert tampered != BODY
    with pytest.raises(SignatureError) as exc:
        verify(tampered, sign(BODY, SECRET, T), [SECRET], now=T)
    assert reason(exc) == "no matching v1 signature"
    # Re-serialising the same JSON changes the bytes: only the raw body verifies.
    with pytest.raises(SignatureError):
        verify(json.dumps(json.loads(BODY)).encode(), sign(BODY, SECRET, T), [SECRET], now=T)


def test_a_wrong_secret_does_not_verify() -> None:
    with pytest.raises(SignatureError) as exc:
        verify(BODY, sign(BODY, "whsec_someone_else", T), [SECRET], now=T)
    assert reason(exc) == "no matching v1 signature"


def test_during_rotation_either_secret_verifies() -> None:
    # Stripe signs with the new secret; we still accept the old one too.
    assert verify(BODY, sign(BODY, SECRET, T), [OLD_SECRET, SECRET], now=T) == T
    assert verify(BODY, sign(BODY, OLD_SECRET, T), [OLD_SECRET, SECRET], now=T) == T
    # While a roll is in progress Stripe sends one v1 per active secret.
    both = f"t={T},v1={compute_signature(BODY, OLD_SECRET, T)},v1={compute_signature(BODY, SECRET, T)}"
    assert verify(BODY, both, [SECRET], now=T) == T
    assert verify(BODY, both, [OLD_SECRET], now=T) == T


def test_any_of_several_v1_values_may_match() -> None:
    header = f"t={T},v1={'0' * 64},v1={compute_signature(BODY, SECRET, T)},v1=nothex"
    assert verify(BODY, header, [SECRET], now=T) == T
    with pytest.raises(SignatureError) as exc:
        verify(BODY, f"t={T},v1={'0' * 64},v1={'f' * 64}", [SECRET], now=T)
    assert reason(exc) == "no matching v1 signature"


def test_v0_signatures_are_ignored() -> None:
    good = compute_signature(BODY, SECRET, T)
    with pytest.raises(SignatureError) as exc:
        verify(BODY, f"t={T},v0={good}", [SECRET], now=T)
    assert reason(exc) == "no matching v1 signature"
    assert verify(BODY, f"t={T},v1={good},v0={'a' * 64}", [SECRET], now=T) == T


@pytest.mark.parametrize(("now", "ok"), [
    (T + 300, True), (T + 301, False),  # 5 minutes old is the limit
    (T - 300, True), (T - 301, False),  # and as far into the future
])
def test_the_timestamp_must_be_within_five_minutes(now: int, ok: bool) -> None:
    header = sign(BODY, SECRET, T)
    if ok:
        assert verify(BODY, header, [SECRET], now=now) == T
        return
    with pytest.raises(SignatureError) as exc:
        verify(BODY, header, [SECRET], now=now)
    assert reason(exc) == "timestamp outside tolerance"


def test_a_custom_tolerance_applies() -> None:
    with pytest.raises(SignatureError, match="timestamp outside tolerance"):
        verify(BODY, sign(BODY, SECRET, T), [SECRET], now=T + 61, tolerance=60)
    assert verify(BODY, sign(BODY, SECRET, T), [SECRET], now=T + 3600, tolerance=3600) == T


def test_the_signature_is_checked_before_the_timestamp() -> None:
    # A forged, stale request learns only that the signature is wrong, nothing about our clock.
    with pytest.raises(SignatureError) as exc:
        verify(BODY + b" ", sign(BODY, SECRET, T), [SECRET], now=T + 10_000)
    assert reason(exc) == "no matching v1 signature"


@pytest.mark.parametrize("header", [None, "", "   "])
def test_a_missing_header_is_refused(header: str | None) -> None:
    with pytest.raises(SignatureError) as exc:
        verify(BODY, header, [SECRET], now=T)
    assert reason(exc) == "missing header"


@pytest.mark.parametrize("header", [
    "garbage",
    "v1=abc",  # no timestamp
    f"t=abc,v1={'0' * 64}",
    f"t=-5,v1={'0' * 64}",
    f"t={T},t={T},v1={'0' * 64}",  # two timestamps
    f"t={T},,v1={'0' * 64}",  # an empty element
    f"t={T};v1={'0' * 64}",  # wrong separator
    f"t={T}.5,v1={'0' * 64}",
])
def test_a_malformed_header_is_refused(header: str) -> None:
    with pytest.raises(SignatureError) as exc:
        verify(BODY, header, [SECRET], now=T)
    assert reason(exc) == "malformed header"


def test_spaces_around_elements_and_unknown_keys_are_tolerated() -> None:
    header = f"t={T}, v1={compute_signature(BODY, SECRET, T)}, v2=future-scheme"
    assert verify(BODY, header, [SECRET], now=T) == T
    assert parse_header(header) == (T, [compute_signature(BODY, SECRET, T)])


def test_a_non_ascii_signature_value_is_just_a_mismatch() -> None:
    with pytest.raises(SignatureError, match="no matching v1 signature"):
        verify(BODY, f"t={T},v1=\u00e9\u00e9", [SECRET], now=T)


def test_verification_needs_a_secret() -> None:
    with pytest.raises(ValueError, match="secret"):
        verify(BODY, sign(BODY, SECRET, T), [], now=T)
    with pytest.raises(ValueError, match="secret"):
        verify(BODY, sign(BODY, SECRET, T), [""], now=T)
    with pytest.raises(TypeError):
        verify(BODY, sign(BODY, SECRET, T), SECRET, now=T)
    with pytest.raises(ValueError):
        sign(BODY, "", T)


def test_signature_errors_carry_a_known_reason_and_no_secret() -> None:
    with pytest.raises(SignatureError) as exc:
        verify(BODY, sign(BODY, SECRET, T), [SECRET], now=T + 301)
    assert exc.value.reason in SignatureError.REASONS
    assert SECRET not in str(exc.value) and compute_signature(BODY, SECRET, T) not in str(exc.value)
    assert exc.value.code == "invalid_signature"
    with pytest.raises(ValueError):
        SignatureError("made up")
