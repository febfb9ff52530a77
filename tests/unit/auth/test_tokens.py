"""Token hashing, the CLI's durations and the parties of a resource (no I/O)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from libs.auth.policy import Parties
from libs.auth.tokens import pepper, token_hash
from libs.cli.tokens import CliError, parse_expiry


def test_the_stored_hash_is_keyed_by_the_secret_and_is_not_the_token() -> None:
    token = "clt_" + "a" * 43
    one, other = pepper("secret-one-0123456789"), pepper("secret-two-0123456789")
    assert token_hash(one, token) == token_hash(one, token)  # the same token finds its row
    assert token_hash(one, token) != token_hash(other, token)  # another secret finds nothing
    assert token not in token_hash(one, token) and len(token_hash(one, token)) == 64
    assert one != b"secret-one-0123456789"  # the pepper is derived, never the secret itself


@pytest.mark.parametrize(("text", "expected"), [("90s", timedelta(seconds=90)), ("15m", timedelta(minutes=15)),
                                                ("12h", timedelta(hours=12)), ("30d", timedelta(days=30)),
                                                ("never", None)])
def test_expiry_durations(text: str, expected: timedelta | None) -> None:
    assert parse_expiry(text) == expected


@pytest.mark.parametrize("text", ["0s", "-1d", "1w", "soon", ""])
def test_bad_expiry_durations_are_refused(text: str) -> None:
    with pytest.raises(CliError, match="--expires-in"):
        parse_expiry(text)


def test_parties_include_only_the_customer_or_merchant_named() -> None:
    p = Parties(customer_id="c-1", merchant_id="m-1")
    assert p.include("customer", "c-1") and p.include("merchant", "m-1")
    assert not p.include("customer", "c-2") and not p.include("merchant", "c-1") and not p.include("service", "c-1")
    assert not Parties(customer_id="c-1").include("merchant", "m-1")
