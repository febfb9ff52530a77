"""Which status a parcel is in, from its carrier events (seed 001, case 9): the latest occurrence
decides, duplicates and late older events never regress it, Delivered only gives way to
ReturnedToSender, ReturnedToSender is final; and the result never depends on the arrival order."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.shipping.domain.events import TrackingStatus
from services.shipping.domain.tracking import TrackingLog, current_eta, deciding_update, may_follow
from tests.unit.shipping import T0, update

IT, OD, DL, EX, RS = (TrackingStatus.IN_TRANSIT, TrackingStatus.OUT_FOR_DELIVERY, TrackingStatus.DELIVERED,
                      TrackingStatus.EXCEPTION, TrackingStatus.RETURNED_TO_SENDER)


def status_of(*updates):  # type: ignore[no-untyped-def]
    d = deciding_update(updates)
    return d.status if d else None


def test_no_event_no_status() -> None:
    assert status_of() is None


def test_the_latest_occurrence_decides() -> None:
    assert status_of(update(IT, 0), update(OD, 60)) is OD
    assert status_of(update(OD, 60), update(IT, 0)) is OD  # the late, older InTransit does not regress it


def test_exception_is_cleared_by_a_later_scan() -> None:
    assert status_of(update(IT, 0), update(EX, 10), update(OD, 20)) is OD
    assert status_of(update(IT, 0), update(OD, 10), update(EX, 20)) is EX


@pytest.mark.parametrize(("later", "expected"), [(IT, DL), (OD, DL), (EX, DL), (RS, RS)])
def test_delivered_only_gives_way_to_returned_to_sender(later: TrackingStatus, expected: TrackingStatus) -> None:
    assert status_of(update(IT, 0), update(DL, 10), update(later, 20)) is expected


@pytest.mark.parametrize("later", [IT, OD, EX, DL])
def test_returned_to_sender_is_final(later: TrackingStatus) -> None:
    assert status_of(update(EX, 0), update(RS, 10), update(later, 20)) is RS


def test_a_late_delivery_stamped_before_a_scan_that_arrived_first_is_still_the_delivery() -> None:
    # A hand-held scanner's clock drifted: Delivered at 10:30 arrives after an InTransit stamped 11:00.
    assert status_of(update(IT, 60), update(DL, 30)) is DL


def test_equal_times_are_broken_by_rank_whatever_the_order() -> None:
    assert status_of(update(OD, 0), update(DL, 0)) is DL
    assert status_of(update(DL, 0), update(OD, 0)) is DL


def test_may_follow_table() -> None:
    assert all(may_follow(None, s) for s in TrackingStatus)
    assert all(may_follow(s, t) for s in (IT, OD, EX) for t in TrackingStatus)
    assert [t for t in TrackingStatus if may_follow(DL, t)] == [RS]
    assert [t for t in TrackingStatus if may_follow(RS, t)] == []


statuses = st.sampled_from(list(TrackingStatus))


@given(st.lists(st.tuples(statuses, st.integers(0, 2000)), min_size=1, max_size=8, unique=True), st.randoms())
def test_the_status_is_a_function_of_the_set_of_events_not_of_their_arrival_order(events, rnd) -> None:  # type: ignore[no-untyped-def]
    updates = [update(s, m) for s, m in events]
    shuffled = list(updates)
    rnd.shuffle(shuffled)
    assert deciding_update(updates) == deciding_update(shuffled)


@given(st.lists(st.tuples(statuses, st.integers(0, 2000)), min_size=1, max_size=8, unique=True))
def test_a_late_non_terminal_event_never_changes_the_status(events) -> None:  # type: ignore[no-untyped-def]
    updates = [update(s, m) for s, m in events]
    before = deciding_update(updates)
    assert before is not None
    late = update(IT, -10, key="id:late")  # occurred before everything, arrives last
    assert status_of(*updates, late) is before.status


def test_duplicates_enter_neither_history_nor_status() -> None:
    log = TrackingLog()
    first = update(IT, 0, "id:1")
    log.add(first)
    again = update(IT, 0, "id:1")
    assert log.seen(again)
    assert not log.seen(update(IT, 0, "id:2"))
    assert not log.seen(update(IT, 0, "id:1", carrier="island"))  # keys are per carrier


def test_history_is_in_occurrence_order() -> None:
    log = TrackingLog()
    for u in (update(DL, 30), update(IT, 0), update(OD, 20)):
        log.add(u)
    assert [u.status for u in log.history()] == [IT, OD, DL]
    assert log.status is DL


def test_every_arrival_order_of_a_real_journey_ends_delivered() -> None:
    journey = [update(IT, 0), update(IT, 120), update(OD, 600), update(DL, 720)]
    for order in itertools.permutations(journey):
        log = TrackingLog()
        seen = []
        for u in order:
            log.add(u)
            seen.append(log.status)
        assert seen[-1] is DL
        # once Delivered is known, nothing arriving later moves it
        assert all(s is DL for s in seen[seen.index(DL):])


# --- ETA -------------------------------------------------------------------------------------------

SERVICE_ETA = T0 + timedelta(days=2)


def test_eta_falls_back_to_the_service_level() -> None:
    assert current_eta([], SERVICE_ETA, "service_level") == (SERVICE_ETA, "service_level")
    assert current_eta([update(IT, 0)], SERVICE_ETA, "service_level") == (SERVICE_ETA, "service_level")


def test_eta_of_the_carrier_wins_the_latest_estimate_first() -> None:
    early, late = T0 + timedelta(days=1), T0 + timedelta(days=3)
    ups = [update(IT, 0, eta=early), update(IT, 60, "id:b", eta=late), update(IT, 30, "id:c")]
    assert current_eta(ups, SERVICE_ETA, "service_level") == (late, "carrier")


def test_out_for_delivery_without_a_newer_estimate_means_by_nine_tonight() -> None:
    eta, source = current_eta([update(IT, 0, eta=T0 + timedelta(days=3)), update(OD, 60)], SERVICE_ETA,
                              "service_level")
    assert source == "out_for_delivery"
    assert eta is not None and eta.hour == 21 and eta.date() == (T0 + timedelta(minutes=60)).date()


@pytest.mark.parametrize("terminal", [DL, RS])
def test_no_eta_once_delivered_or_returned(terminal: TrackingStatus) -> None:
    assert current_eta([update(IT, 0, eta=SERVICE_ETA), update(terminal, 60)], SERVICE_ETA,
                       "service_level") == (None, None)
