"""The versioned cancellation policy: the TOML file, validation, and the version in force at placement."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from libs.domain.errors import RuleViolation
from services.payments.domain.policy import (
    CancellationPolicy,
    ExpiredVoucherAction,
    parse_policies,
    policy_by_version,
    policy_in_force,
)
from tests.unit.payments import HOUR, MINUTE, OLD_POLICY, POLICY, TZ, twd

CONFIG = Path(__file__).resolve().parents[3] / "services" / "payments" / "config" / "cancellation_policy.toml"


def test_the_shipped_file_has_an_older_and_a_current_version() -> None:
    old, current = parse_policies(CONFIG.read_text())
    assert (old.version, current.version) == ("tw-2024.1", "tw-2025.1")
    assert old.effective_from < current.effective_from
    # the current version is the seed's: < 24 h full, 24-48 h half, >= 48 h free
    assert [str(current.penalty_rate(t)) for t in (-1, 24 * HOUR - 1, 24 * HOUR, 48 * HOUR - 1, 48 * HOUR)] == \
        ["1", "1", "1/2", "1/2", "0"]
    # the old one differs (< 12 h half, 12-24 h a quarter, >= 24 h free), so which version applies shows
    assert [str(old.penalty_rate(t)) for t in (12 * HOUR - 1, 12 * HOUR, 24 * HOUR - 1, 24 * HOUR)] == \
        ["1/2", "1/4", "1/4", "0"]
    assert current.currency == old.currency == "TWD"


def test_the_version_in_force_is_the_latest_that_started_before_placement() -> None:
    policies = parse_policies(CONFIG.read_text())
    cases = [
        (datetime(2024, 6, 1, tzinfo=TZ), "tw-2024.1"),
        (datetime(2025, 2, 28, 23, 59, 59, tzinfo=TZ), "tw-2024.1"),
        (datetime(2025, 3, 1, 0, 0, tzinfo=TZ), "tw-2025.1"),  # exactly effective_from: the new one
        (datetime(2025, 2, 28, 16, 0, tzinfo=UTC), "tw-2025.1"),  # the same instant, written in UTC
        (datetime(2025, 2, 28, 15, 59, 59, tzinfo=UTC), "tw-2024.1"),
        (datetime(2030, 1, 1, tzinfo=TZ), "tw-2025.1"),
    ]
    assert [policy_in_force(policies, at).version for at, _ in cases] == [v for _, v in cases]


def test_no_policy_in_force_before_the_first_version() -> None:
    with pytest.raises(RuleViolation) as caught:
        policy_in_force([OLD_POLICY, POLICY], datetime(2023, 12, 31, tzinfo=TZ))
    assert caught.value.field == "placed_at"
    assert "first one takes effect 2024-01-01" in caught.value.message
    with pytest.raises(RuleViolation):
        policy_in_force([], datetime(2025, 1, 1, tzinfo=TZ))
    with pytest.raises(RuleViolation, match="time-zone-aware"):
        policy_in_force([POLICY], datetime(2025, 3, 10))


def test_policy_by_version() -> None:
    assert policy_by_version([OLD_POLICY, POLICY], "test-2024") is OLD_POLICY
    with pytest.raises(RuleViolation) as caught:
        policy_by_version([OLD_POLICY, POLICY], "nope")
    assert caught.value.field == "policy_version"


def test_merchant_compensation_tiers() -> None:
    assert [POLICY.merchant_compensation_for(t) for t in (-HOUR, 24 * HOUR - 1, 24 * HOUR, 48 * HOUR - 1, 48 * HOUR)] \
        == [twd(30000), twd(30000), twd(15000), twd(15000), twd(0)]


MINIMAL = """
[[policy]]
version = "v1"
effective_from = 2025-01-01T00:00:00+08:00
currency = "TWD"
high_value = { min_tenure_days = 365, min_lifetime_value = 100 }
[[policy.penalty_windows]]
below_hours = 24
rate_numerator = 1
rate_denominator = 1
"""


def test_defaults_of_a_minimal_policy() -> None:
    [p] = parse_policies(MINIMAL)
    assert p.expired_voucher_action is ExpiredVoucherAction.EXTEND
    assert p.merchant_compensation == [] and p.compensation.late_cancellation == 0
    assert p.penalty_rate(23 * HOUR + 59 * MINUTE).is_full and p.penalty_rate(24 * HOUR).numerator == 0


@pytest.mark.parametrize("text, words", [
    (MINIMAL.replace("rate_numerator = 1", "rate_numerator = 2"), "policy.0.penalty_windows.0"),
    (MINIMAL.replace("+08:00", ""), "policy.0.effective_from"),
    (MINIMAL.replace('currency = "TWD"', 'currency = "XYZ"'), "policy.0.currency"),
    (MINIMAL.replace('version = "v1"', 'version = "v1"\nsurprise = 1'), "policy.0.surprise"),
    (MINIMAL + MINIMAL.replace("2025-01-01", "2025-06-01"), "each version must appear once"),
    (MINIMAL + MINIMAL.replace('"v1"', '"v2"'), "two versions start at the same time"),
    (MINIMAL + "[[policy.penalty_windows]]\nbelow_hours = 12\nrate_numerator = 1\nrate_denominator = 2\n",
     "strictly ascending"),
    ("[[policy]\n", "TOML syntax error"),
    ("", "policy: Field required"),
])
def test_bad_policy_files_name_the_key(text: str, words: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_policies(text)
    assert words in str(caught.value)


def test_versions_come_back_oldest_first_whatever_the_file_order() -> None:
    text = MINIMAL.replace('"v1"', '"v2"').replace("2025-01-01", "2025-06-01") + MINIMAL
    assert [p.version for p in parse_policies(text)] == ["v1", "v2"]
    assert isinstance(parse_policies(text)[0], CancellationPolicy)
