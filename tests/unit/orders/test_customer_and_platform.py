"""Customer standing and the seed 五 flag rule; platform conditions feeding the policy."""

from __future__ import annotations

from datetime import timedelta

import pytest

from libs.domain.errors import RuleViolation
from services.orders.domain import events as ev
from services.orders.domain.customer import Customer
from services.orders.domain.events import PrepaymentRule
from services.orders.domain.platform import PlatformConditions
from services.orders.domain.prepayment import CustomerStanding, PrepaymentPolicy, decide
from tests.unit.orders import NOW, SLOT

POLICY = PrepaymentPolicy(version="test-1", max_customer_cancellations=2, cancellation_lookback_days=90,
                          min_credit_score=600, platform_load_threshold_pct=85,
                          flag_unprepaid_cancellation_within_hours=48)
H = 3600


def test_a_new_customer_has_an_unknown_score_and_a_clean_record() -> None:
    assert Customer("c-1").standing(NOW, POLICY) == CustomerStanding(
        credit_score=None, recent_cancellations=0, flagged=False, flag_reason=None)


def test_the_latest_credit_score_counts() -> None:
    customer = Customer("c-1")
    customer.record_credit_score(580, "bureau-a", NOW)
    customer.record_credit_score(640, "bureau-a", NOW + timedelta(days=1))
    assert customer.standing(NOW, POLICY).credit_score == 640
    [first, _] = customer.pending
    assert isinstance(first, ev.CustomerCreditScoreRecorded) and first.customer_id == "c-1"


def test_credit_score_out_of_range_is_refused() -> None:
    with pytest.raises(RuleViolation) as caught:
        Customer("c-1").record_credit_score(1001, "bureau-a", NOW)
    assert caught.value.field == "score"


@pytest.mark.parametrize("seconds, flagged", [
    (47 * H + 59 * 60, True),   # 47h59m before the start: within 48 hours
    (48 * H - 1, True),
    (48 * H, False),            # exactly 48 hours is no longer "within"
    (72 * H, False),
    (0, True),
    (-15 * 60, True),           # cancelled after the start time (a no-show)
])
def test_unprepaid_late_cancellation_flags_the_customer(seconds: int, flagged: bool) -> None:
    customer = Customer("c-1")
    customer.record_cancellation("o-1", was_prepaid=False, seconds_before_service_start=seconds, at=NOW,
                                 policy=POLICY)
    types = [type(e) for e in customer.pending]
    expected = [ev.CustomerCancellationRecorded] + ([ev.CustomerFlaggedForPrepayment] if flagged else [])
    assert types == expected
    assert customer.standing(NOW, POLICY).flagged is flagged


def test_a_prepaid_late_cancellation_does_not_flag() -> None:
    customer = Customer("c-1")
    customer.record_cancellation("o-1", was_prepaid=True, seconds_before_service_start=H, at=NOW, policy=POLICY)
    assert [type(e) for e in customer.pending] == [ev.CustomerCancellationRecorded]
    assert customer.standing(NOW, POLICY).recent_cancellations == 1


def test_a_flagged_customer_is_not_flagged_twice_and_the_first_reason_stays() -> None:
    customer = Customer("c-1")
    customer.record_cancellation("o-1", was_prepaid=False, seconds_before_service_start=H, at=NOW, policy=POLICY)
    customer.record_cancellation("o-2", was_prepaid=False, seconds_before_service_start=2 * H, at=NOW,
                                 policy=POLICY)
    flags = [e for e in customer.pending if isinstance(e, ev.CustomerFlaggedForPrepayment)]
    assert [f.order_id for f in flags] == ["o-1"]
    assert "o-1" in (customer.flag_reason or "")
    assert "1h00m" in (customer.flag_reason or "")


def test_the_same_cancellation_reported_twice_is_recorded_once() -> None:
    customer = Customer("c-1")
    for _ in range(2):
        customer.record_cancellation("o-1", was_prepaid=True, seconds_before_service_start=H, at=NOW,
                                     policy=POLICY)
    assert len(customer.pending) == 1


def test_recent_cancellations_count_only_within_the_lookback() -> None:
    customer = Customer("c-1")
    for i, days_ago in enumerate([120, 91, 89, 3]):
        customer.record_cancellation(f"o-{i}", was_prepaid=True, seconds_before_service_start=100 * H,
                                     at=NOW - timedelta(days=days_ago), policy=POLICY)
    assert customer.standing(NOW, POLICY).recent_cancellations == 2
    # As of 100 days ago only the cancellation 120 days ago had happened.
    assert customer.standing(NOW - timedelta(days=100), POLICY).recent_cancellations == 1


def test_standing_feeds_the_policy() -> None:
    customer = Customer("c-1")
    customer.record_cancellation("o-1", was_prepaid=False, seconds_before_service_start=5 * H, at=NOW,
                                 policy=POLICY)
    customer.record_cancellation("o-2", was_prepaid=True, seconds_before_service_start=100 * H, at=NOW,
                                 policy=POLICY)
    customer.record_credit_score(550, "bureau-a", NOW)
    decision = decide(POLICY, product_line="dishwashing", slot_start=SLOT.start, city="臺北市",
                      standing=customer.standing(NOW, POLICY), conditions=PlatformConditions().snapshot(), at=NOW)
    assert [r.rule for r in decision.reasons] == [
        PrepaymentRule.CUSTOMER_CANCELLATIONS, PrepaymentRule.CREDIT_SCORE, PrepaymentRule.CUSTOMER_FLAGGED]


# --- platform conditions -----------------------------------------------------------------------------


def test_platform_conditions_start_calm_and_are_replaced_as_a_whole() -> None:
    platform = PlatformConditions()
    assert platform.stream_id == "platform-conditions"
    assert platform.snapshot().load_pct == 0 and not platform.snapshot().severe_weather_cities
    platform.change(severe_weather_cities=[" 臺北市 ", "新北市", "臺北市"], load_pct=90, note="typhoon", at=NOW)
    platform.change(severe_weather_cities=["新北市"], load_pct=40, note="typhoon moving north", at=NOW)
    assert platform.snapshot().severe_weather_cities == frozenset({"新北市"})
    assert platform.snapshot().load_pct == 40
    first = platform.pending[0]
    assert isinstance(first, ev.PlatformConditionsChanged)
    assert first.severe_weather_cities == ["臺北市", "新北市"]
    assert first.conditions_id == "conditions"


@pytest.mark.parametrize("cities, load, field", [([], 101, "load_pct"), (["  "], 10, "severe_weather_cities[0]")])
def test_bad_platform_conditions_are_refused(cities: list[str], load: int, field: str) -> None:
    with pytest.raises(RuleViolation) as caught:
        PlatformConditions().change(severe_weather_cities=cities, load_pct=load, note="", at=NOW)
    assert caught.value.field == field
