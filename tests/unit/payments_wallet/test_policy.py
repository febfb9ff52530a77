"""The wallet policy TOML: the shipped file, defaults, and errors that name the bad key."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.payments.domain.voucher import BindingPreference
from services.payments.domain.wallet import Bucket, parse_wallet_policy
from tests.unit.payments_wallet import twd

CONFIG = Path(__file__).resolve().parents[3] / "services" / "payments" / "config" / "wallet_policy.toml"


def test_the_shipped_policy_parses_with_taipei_defaults() -> None:
    policy = parse_wallet_policy(CONFIG.read_text(encoding="utf-8"))
    assert policy.currency == "TWD"
    assert policy.spend_order == [Bucket.PAID_IN, Bucket.BONUS]
    assert policy.binding_preference is BindingPreference.LARGEST_FIRST
    # the seed's menu: top up 1,000 get 100; top up 3,000 get 400
    assert policy.tier_for(twd(100000)).bonus == twd(10000)
    assert policy.tier_for(twd(300000)).bonus == twd(40000)
    assert policy.tier_for(twd(99999)) is None


GOOD = 'version = "v1"\n'
TIER = '[[top_up_tiers]]\ncode = "{code}"\nthreshold = {{ amount = {t}, currency = "{cur}" }}\n' \
       'bonus = {{ amount = {b}, currency = "{cur}" }}\n'


def tiers(*rows: tuple[str, int, int], cur: str = "TWD") -> str:
    return "".join(TIER.format(code=c, t=t, b=b, cur=cur) for c, t, b in rows)


def test_defaults_apply_to_a_minimal_policy() -> None:
    policy = parse_wallet_policy(GOOD)
    assert (policy.currency, policy.top_up_tiers, policy.spend_order, policy.binding_preference) == (
        "TWD", [], [Bucket.PAID_IN, Bucket.BONUS], BindingPreference.LARGEST_FIRST)


def test_bonus_first_and_soonest_expiry_are_accepted() -> None:
    policy = parse_wallet_policy(GOOD + 'spend_order = ["bonus", "paid_in"]\n'
                                        'binding_preference = "soonest_expiry_first"\n')
    assert policy.spend_order == [Bucket.BONUS, Bucket.PAID_IN]
    assert policy.binding_preference is BindingPreference.SOONEST_EXPIRY_FIRST


@pytest.mark.parametrize("text, key", [
    ("currency = \"TWD\"\n", "version"),
    (GOOD + 'spend_order = ["paid_in"]\n', "spend_order"),
    (GOOD + 'spend_order = ["paid_in", "paid_in"]\n', "spend_order"),
    (GOOD + 'spend_order = ["cash", "bonus"]\n', "spend_order.0"),
    (GOOD + 'binding_preference = "random"\n', "binding_preference"),
    (GOOD + 'currency = "XYZ"\n', "currency"),
    (GOOD + "bonus_tiers = []\n", "bonus_tiers"),
    (GOOD + tiers(("a", 100000, 0)), "top_up_tiers.0.bonus"),
    (GOOD + tiers(("a", 100000, 10000), cur="USD"), "top_up_tiers.0.threshold.currency"),
    (GOOD + tiers(("a", 100000, 200000)), "top_up_tiers.0.bonus"),
    (GOOD + tiers(("a", 100000, 10000), ("a", 300000, 40000)), "top_up_tiers.1.code"),
    (GOOD + tiers(("a", 100000, 10000), ("b", 100000, 40000)), "top_up_tiers.1.threshold"),
    (GOOD + tiers(("a", 300000, 40000), ("b", 100000, 50000)), "top_up_tiers.0.bonus"),
    (GOOD + tiers(("a", 100000, 10000)).replace("code = \"a\"", "code = \"Top Up\""), "top_up_tiers.0.code"),
], ids=["no-version", "one-bucket", "repeated-bucket", "unknown-bucket", "preference", "currency", "unknown-key",
        "zero-bonus", "tier-currency", "bonus-above-threshold", "duplicate-code", "duplicate-threshold",
        "higher-tier-gives-less", "bad-code"])
def test_a_bad_policy_names_the_bad_key(text: str, key: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_wallet_policy(text)
    assert key in str(caught.value)


def test_a_policy_with_a_toml_syntax_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="TOML"):
        parse_wallet_policy("version = ")
