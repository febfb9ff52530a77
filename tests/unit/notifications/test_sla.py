"""SLA per stage (seed 001, case 6): the table, the clocks of an RMA, breach warnings and the ETA."""

from __future__ import annotations

from datetime import timedelta

import pytest

from services.notifications.domain.events import SlaBreachWarning, SlaClockStarted, SlaClockStopped
from services.notifications.domain.sla import DEFAULT_TABLE, STAGES, SlaClock, SlaPolicy, parse_duration, timer_id
from tests.unit.notifications.samples import T0

DAY = timedelta(days=1)
POLICY = SlaPolicy.parse(DEFAULT_TABLE)


def test_the_default_table_is_the_seeds_stage_slas() -> None:
    assert [POLICY.sla(s) for s in STAGES] == [DAY, 7 * DAY, 2 * DAY, 3 * DAY, 3 * DAY]
    assert POLICY.total() == 16 * DAY
    assert POLICY.after("shipped_in") == 6 * DAY
    assert POLICY.after("shipped_out") == timedelta()


@pytest.mark.parametrize(("text", "seconds"), [("1d", 86400), ("36h", 129600), ("1d12h", 129600), ("90m", 5400),
                                               ("2.5s", 2.5), (" 3s ", 3)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "1", "1w", "d", "0s", "1d x", "-1d"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_a_table_overrides_some_stages_and_refuses_unknown_ones() -> None:
    short = SlaPolicy.parse("received=3s, shipped_out=10s")
    assert short.sla("received") == timedelta(seconds=3) and short.sla("eligible") == 7 * DAY
    with pytest.raises(ValueError, match="unknown SLA stage"):
        SlaPolicy.parse("closed=1d")
    with pytest.raises(ValueError, match="stage=duration"):
        SlaPolicy.parse("received")


def test_entering_a_stage_stops_the_earlier_clock_and_starts_its_own() -> None:
    clock = SlaClock("rma-1")
    started = clock.enter("received", T0, POLICY)
    assert [c.stage for c in started.started] == ["received"] and started.stopped == []
    assert clock.clocks["received"].due_at == T0 + DAY
    changes = clock.enter("eligible", T0 + timedelta(hours=5), POLICY)
    assert [c.stage for c in changes.stopped] == ["received"] and [c.stage for c in changes.started] == ["eligible"]
    stopped = [e for e in clock.pending if isinstance(e, SlaClockStopped)]
    assert stopped[0].late is False and stopped[0].stopped_at == T0 + timedelta(hours=5)
    assert [type(e) for e in clock.pending] == [SlaClockStarted, SlaClockStopped, SlaClockStarted]
    assert timer_id("rma-1", "eligible") == "sla:rma-1:eligible"


def test_a_repeated_or_late_arriving_earlier_stage_changes_nothing() -> None:
    clock = SlaClock("rma-1")
    clock.enter("received", T0, POLICY)
    clock.enter("shipped_in", T0 + DAY, POLICY)
    before = len(clock.pending)
    assert not clock.enter("shipped_in", T0 + 2 * DAY, POLICY).started  # redelivered
    assert not clock.enter("eligible", T0 + DAY, POLICY).started  # arrived after a later stage
    assert not clock.enter("delivered", T0, POLICY).started  # not a clocked stage
    assert len(clock.pending) == before


def test_a_stage_left_after_its_due_time_is_late() -> None:
    clock = SlaClock("rma-1")
    clock.enter("received", T0, POLICY)
    clock.enter("eligible", T0 + DAY + timedelta(minutes=1), POLICY)
    assert clock.clocks["received"].late
    assert clock.breached(T0 + 2 * DAY)


def test_breach_warning_once_while_the_clock_runs_past_due() -> None:
    clock = SlaClock("rma-1")
    clock.enter("received", T0, POLICY)
    assert clock.warn_if_late("received", T0 + DAY - timedelta(seconds=1)) is None  # not yet due
    warning = clock.warn_if_late("received", T0 + DAY)
    assert isinstance(warning, SlaBreachWarning)
    assert (warning.subject_type, warning.subject_id, warning.stage) == ("rma", "rma-1", "received")
    assert (warning.started_at, warning.due_at) == (T0, T0 + DAY)
    assert clock.warn_if_late("received", T0 + 2 * DAY) is None  # the timer fired twice: one warning
    assert clock.warn_if_late("eligible", T0 + 2 * DAY) is None  # no such clock
    clock.enter("eligible", T0 + 2 * DAY, POLICY)
    assert clock.warn_if_late("eligible", T0 + 10 * DAY) is not None
    stopped_clock = SlaClock("rma-2")
    stopped_clock.enter("received", T0, POLICY)
    stopped_clock.enter("eligible", T0 + timedelta(hours=1), POLICY)
    assert stopped_clock.warn_if_late("received", T0 + DAY) is None  # it stopped in time


def test_eta_is_the_current_stage_due_time_plus_the_later_stages() -> None:
    clock = SlaClock("rma-1")
    assert clock.eta(POLICY, T0).at == T0 + 16 * DAY  # nothing started: every stage from now
    clock.enter("received", T0, POLICY)
    assert clock.eta(POLICY, T0).at == T0 + DAY + 15 * DAY
    clock.enter("shipped_in", T0 + 3 * DAY, POLICY)
    eta = clock.eta(POLICY, T0 + 3 * DAY)
    assert (eta.at, eta.source) == (T0 + 3 * DAY + 2 * DAY + 6 * DAY, "sla")
    # late: from now, not from the (past) due time
    now = T0 + 10 * DAY
    assert clock.eta(POLICY, now).at == now + 6 * DAY


def test_eta_is_the_carriers_once_shipped_and_none_once_ended() -> None:
    clock = SlaClock("rma-1")
    clock.enter("processing", T0, POLICY)
    carrier = T0 + timedelta(days=5)
    assert clock.eta(POLICY, T0, carrier).source == "sla"  # not shipped yet: the carrier's ETA is not used
    clock.enter("shipped_out", T0 + DAY, POLICY)
    eta = clock.eta(POLICY, T0 + DAY, carrier)
    assert (eta.at, eta.source) == (carrier, "carrier")
    assert clock.eta(POLICY, T0 + DAY).at == T0 + 4 * DAY  # no carrier ETA: the stage's SLA
    changes = clock.end("delivered", T0 + 2 * DAY)
    assert [c.stage for c in changes.stopped] == ["shipped_out"]
    assert clock.eta(POLICY, T0 + 2 * DAY, carrier).source == "ended"
    assert not clock.enter("shipped_out", T0 + 3 * DAY, POLICY).started  # after the end nothing starts
    assert not clock.end("closed", T0 + 3 * DAY).stopped and clock.end_reason == "delivered"


def test_rehydrate() -> None:
    clock = SlaClock("rma-1")
    clock.enter("received", T0, POLICY)
    clock.warn_if_late("received", T0 + DAY)
    clock.enter("eligible", T0 + 2 * DAY, POLICY)
    again = SlaClock.rehydrate("rma-1", clock.pending)
    assert again.clocks["received"].breached_at == T0 + DAY and again.clocks["received"].late
    assert again.current is not None and again.current.stage == "eligible"
