"""Prepayment policy (seed 二): each rule alone, none, several, the deadline, and the TOML file."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest

from services.orders.domain.events import PrepaymentRule as R
from services.orders.domain.prepayment import (
    ConditionsSnapshot,
    CustomerStanding,
    PrepaymentPolicy,
    TimeWindow,
    decide,
    parse_policy,
)
from tests.unit.orders import TZ

CONFIG = Path(__file__).resolve().parents[3] / "services" / "orders" / "config" / "prepayment_policy.toml"

POLICY = PrepaymentPolicy(
    version="test-7", timezone="Asia/Taipei", payment_window_minutes=15,
    product_lines=frozenset({"deep-cleaning"}),
    time_windows=[TimeWindow(start="18:00", end="21:00"), TimeWindow(start="22:00", end="07:00")],
    max_customer_cancellations=2, cancellation_lookback_days=90, min_credit_score=600,
    severe_weather=True, platform_load_threshold_pct=85, flag_unprepaid_cancellation_within_hours=48)

AT = datetime(2025, 3, 10, 9, 0, tzinfo=TZ)
AFTERNOON = datetime(2025, 3, 11, 14, 0, tzinfo=TZ)

# A baseline order that matches no rule; each case changes one thing.
BASE: dict[str, Any] = {
    "product_line": "dishwashing", "slot_start": AFTERNOON, "city": "臺北市",
    "standing": CustomerStanding(credit_score=720, recent_cancellations=1),
    "conditions": ConditionsSnapshot(severe_weather_cities=frozenset({"高雄市"}), load_pct=84),
}


def run(policy: PrepaymentPolicy = POLICY, **changes: Any):
    return decide(policy, **{**BASE, **changes}, at=AT)


def test_no_rule_matched_means_no_prepayment_and_says_so() -> None:
    decision = run()
    assert decision.required is False
    assert [r.rule for r in decision.reasons] == [R.NONE]
    assert decision.payment_deadline is None
    assert decision.policy_version == "test-7"


SINGLE_RULES = [
    (R.PRODUCT_LINE, {"product_line": "deep-cleaning"}),
    (R.TIME_OF_DAY, {"slot_start": datetime(2025, 3, 11, 19, 30, tzinfo=TZ)}),
    (R.CUSTOMER_CANCELLATIONS, {"standing": CustomerStanding(credit_score=720, recent_cancellations=2)}),
    (R.CREDIT_SCORE, {"standing": CustomerStanding(credit_score=599, recent_cancellations=1)}),
    (R.CUSTOMER_FLAGGED, {"standing": CustomerStanding(credit_score=720, flagged=True,
                                                       flag_reason="cancelled o-9 3h before start")}),
    (R.SEVERE_WEATHER, {"conditions": ConditionsSnapshot(severe_weather_cities=frozenset({"臺北市"}))}),
    (R.PLATFORM_LOAD, {"conditions": ConditionsSnapshot(load_pct=85)}),
]


@pytest.mark.parametrize("rule, change", SINGLE_RULES, ids=[r.value for r, _ in SINGLE_RULES])
def test_each_rule_alone_requires_prepayment_and_is_named(rule: R, change: dict[str, Any]) -> None:
    decision = run(**change)
    assert decision.required is True
    assert [r.rule for r in decision.reasons] == [rule]
    assert decision.reasons[0].detail
    assert decision.payment_deadline == AT + timedelta(minutes=15)


def test_several_rules_are_all_listed() -> None:
    decision = run(product_line="deep-cleaning", slot_start=datetime(2025, 3, 11, 23, 0, tzinfo=TZ),
                   standing=CustomerStanding(credit_score=300, recent_cancellations=5, flagged=True),
                   conditions=ConditionsSnapshot(severe_weather_cities=frozenset({"臺北市"}), load_pct=99))
    assert [r.rule for r in decision.reasons] == [
        R.PRODUCT_LINE, R.TIME_OF_DAY, R.CUSTOMER_CANCELLATIONS, R.CREDIT_SCORE, R.CUSTOMER_FLAGGED,
        R.SEVERE_WEATHER, R.PLATFORM_LOAD]


def test_deadline_never_runs_past_the_slot_start() -> None:
    soon = AT + timedelta(minutes=10)
    decision = run(product_line="deep-cleaning", slot_start=soon)
    assert decision.payment_deadline == soon
    later = AT + timedelta(minutes=16)
    assert run(product_line="deep-cleaning", slot_start=later).payment_deadline == AT + timedelta(minutes=15)


@pytest.mark.parametrize("score, required", [(None, False), (600, False), (599, True), (0, True)])
def test_credit_score_unknown_does_not_trigger_but_low_does(score: int | None, required: bool) -> None:
    decision = run(standing=CustomerStanding(credit_score=score))
    assert decision.required is required


@pytest.mark.parametrize("local, inside", [
    (time(21, 59), False), (time(22, 0), True), (time(23, 30), True), (time(0, 0), True),
    (time(6, 59), True), (time(7, 0), False), (time(17, 59), False), (time(18, 0), True), (time(21, 0), False),
])
def test_time_windows_including_one_across_midnight(local: time, inside: bool) -> None:
    start = datetime.combine(AFTERNOON.date(), local, tzinfo=TZ)
    assert (run(slot_start=start).required) is inside


def test_time_of_day_is_judged_on_local_time_of_the_slot_start() -> None:
    # 11:30 UTC is 19:30 in Taipei: inside the evening window.
    decision = run(slot_start=datetime(2025, 3, 11, 11, 30, tzinfo=UTC))
    assert [r.rule for r in decision.reasons] == [R.TIME_OF_DAY]
    assert "19:30" in decision.reasons[0].detail


def test_time_window_with_equal_ends_is_refused() -> None:
    with pytest.raises(ValueError, match="differ"):
        TimeWindow(start="08:00", end="08:00")


def test_severe_weather_matches_the_address_city_in_either_spelling() -> None:
    conditions = ConditionsSnapshot(severe_weather_cities=frozenset({"台北市"}))
    assert run(city="臺北市", conditions=conditions).required is True
    assert run(city="新北市", conditions=conditions).required is False


def test_rules_switched_off_in_the_policy_do_not_trigger() -> None:
    off = POLICY.model_copy(update={"severe_weather": False, "max_customer_cancellations": None,
                                    "min_credit_score": None, "platform_load_threshold_pct": None})
    decision = run(off, standing=CustomerStanding(credit_score=1, recent_cancellations=9),
                   conditions=ConditionsSnapshot(severe_weather_cities=frozenset({"臺北市"}), load_pct=100))
    assert decision.required is False


# --- the TOML file ------------------------------------------------------------------------------------


def test_the_shipped_policy_parses_with_taipei_defaults() -> None:
    policy = parse_policy(CONFIG.read_text(encoding="utf-8"))
    assert policy.timezone == "Asia/Taipei"
    assert policy.payment_window_minutes == 15
    assert policy.flag_unprepaid_cancellation_within_hours == 48
    assert "deep-cleaning" in policy.product_lines
    assert any(w.contains(time(23, 0)) for w in policy.time_windows)


GOOD = 'version = "v1"\n'


@pytest.mark.parametrize("text, key", [
    (GOOD + "payment_window_minutes = 0\n", "payment_window_minutes"),
    (GOOD + "min_credit = 500\n", "min_credit"),
    (GOOD + 'timezone = "Mars/Olympus"\n', "timezone"),
    (GOOD + '[[time_windows]]\nstart = "25:00"\nend = "07:00"\n', "time_windows.0.start"),
    ("payment_window_minutes = 15\n", "version"),
    (GOOD + "min_credit_score = 1200\n", "min_credit_score"),
])
def test_a_bad_policy_names_the_bad_key(text: str, key: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_policy(text)
    assert key in str(caught.value)


def test_a_policy_with_a_toml_syntax_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="TOML"):
        parse_policy("version = ")


def test_defaults_apply_to_a_minimal_policy() -> None:
    policy = parse_policy(GOOD)
    assert (policy.payment_window_minutes, policy.timezone, policy.product_lines) == (15, "Asia/Taipei",
                                                                                     frozenset())


def test_payment_window_in_seconds_overrides_minutes_for_short_deadlines() -> None:
    policy = parse_policy(GOOD + "payment_window_seconds = 30\nproduct_lines = [\"deep-cleaning\"]\n")
    at = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)
    decision = decide(policy, product_line="deep-cleaning", slot_start=at + timedelta(days=2), city="臺北市",
                      standing=CustomerStanding(), conditions=ConditionsSnapshot(), at=at)
    assert decision.payment_deadline == at + timedelta(seconds=30)
    with pytest.raises(ValueError, match="payment_window_seconds"):
        parse_policy(GOOD + "payment_window_seconds = 1\n")
