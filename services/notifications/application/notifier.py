"""How the notifications service reacts to rma's and shipping's events, inside the consumer's
transaction (libs/application/reactions.py): it keeps what later messages need (subjects), moves
the RMA's SLA clocks (durable timers for the due times) and writes the stage's messages to the
outbox (domain/stages.py), all in the same transaction as the consumer's processed-event record.

Duplicates are stopped three times over: the consumer's inbox drops a redelivered event id; the
outbox's dedupe key (source event id + channel + template) refuses a second message for the same
cause whatever path it came by; the stage key refuses a second message for a stage already notified.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg
from pydantic import ValidationError

from libs.application.reactions import Reactions
from libs.application.timers import Timer
from libs.application.unit_of_work import CommandContext, UnitOfWork, execute
from libs.domain.errors import DomainError
from libs.domain.events import DomainEvent
from libs.eventstore import EventStore
from libs.messaging.consumer import TRANSIENT
from libs.messaging.envelope import EventEnvelope
from libs.observability import HANDLER_ERRORS
from services.notifications.adapters.templates import Renderer
from services.notifications.application import outbox, subjects
from services.notifications.application.messages import Formatter, MessageInput, build_context
from services.notifications.application.metrics import DEDUPLICATED, QUEUED, SLA_BREACHES
from services.notifications.domain.events import Channel, NotificationQueued, SlaBreachWarning
from services.notifications.domain.notification import Notification, RetryPolicy, dedupe_key, notification_id
from services.notifications.domain.sla import SlaClock, SlaPolicy, StageClock, timer_id
from services.notifications.domain.stages import (
    CUSTOMER_CHANNELS,
    OPERATIONS,
    OPERATIONS_CHANNELS,
    StageRule,
    rule_for,
    stage_key,
)
from services.rma.domain import events as rma
from services.shipping.domain import events as ship

log = logging.getLogger("closeloop.notifications")
OWNER = "notifications"
TIMER_SLA_DUE = "sla_due"


@dataclass(frozen=True)
class NotifierConfig:
    owner: str  # whose dispatcher sends the messages and whose timer runner fires the SLA timers
    sla: SlaPolicy
    retry: RetryPolicy
    formatter: Formatter
    ops_email: str = "operations@closeloop.local"
    ops_locale: str = "zh-TW"
    processing_started_events: frozenset[str] = frozenset({"RmaProcessingStarted"})


@dataclass
class Notifier:
    store: EventStore
    renderer: Renderer
    config: NotifierConfig
    clock: Callable[[], datetime]
    stats: dict[str, int] = field(default_factory=lambda: {"queued": 0, "deduplicated": 0, "no_contact": 0,
                                                           "sla_breaches": 0})

    # --- reactions ----------------------------------------------------------------------------
    async def react(self, uow: UnitOfWork, event: DomainEvent) -> None:
        """One event of rma.events or shipping.events (the consumer's savepoint is around it)."""
        conn = uow.conn
        subject_id: str | None = getattr(event, "rma_id", None)
        status: str | None = None
        match event:
            case rma.RmaOpened():
                await subjects.remember(conn, event.rma_id, event.at, contact=event.contact,
                                        customer_name=event.ship_to.name)
                await self._enter(uow, event.rma_id, "received", event.at)
            case rma.RmaEligible():
                await subjects.remember(conn, event.rma_id, event.at, contact=event.contact,
                                        customer_name=event.ship_to.name)
                await self._enter(uow, event.rma_id, "eligible", event.at)
            case ship.ReturnLabelIssued():
                await subjects.remember(conn, event.rma_id, event.at, contact=event.contact)
            case rma.RmaShippedIn():
                await self._enter(uow, event.rma_id, "shipped_in", event.at)
            case rma.RmaReplacementReady():
                # Processing is under way at the latest now (the contract has no event for its start;
                # see processing_started_events).
                await subjects.remember(conn, event.rma_id, event.at, contact=event.contact,
                                        customer_name=event.ship_to.name)
                await self._enter(uow, event.rma_id, "processing", event.at)
            case ship.ShipmentCreated():
                if event.rma_id is None:
                    return  # an order's shipment: not an after-sales subject
                await subjects.remember(conn, event.rma_id, event.at, contact=event.contact,
                                        customer_name=event.ship_to.name, shipment_id=event.shipment_id,
                                        carrier=event.carrier, tracking_number=event.tracking_number,
                                        carrier_eta=event.eta)
            case rma.RmaShippedOut():
                await subjects.remember(conn, event.rma_id, event.at, shipment_id=event.shipment_id,
                                        carrier=event.carrier, tracking_number=event.tracking_number,
                                        carrier_eta=event.eta)
                await self._enter(uow, event.rma_id, "shipped_out", event.at)
            case ship.ShipmentStatusChanged():
                if event.rma_id is None:
                    return
                status = event.status.value
                await subjects.remember(conn, event.rma_id, event.at, shipment_id=event.shipment_id,
                                        tracking_number=event.tracking_number, carrier_eta=event.eta)
                if event.status is ship.TrackingStatus.DELIVERED:
                    await self._end(uow, event.rma_id, "delivered", event.occurred_at)
            case rma.RmaClosed():
                await self._end(uow, event.rma_id, "closed", event.at)
            case rma.RmaRejected():
                await self._end(uow, event.rma_id, "rejected", event.at)
            case rma.RmaCancelled():
                await self._end(uow, event.rma_id, "cancelled", event.at)
            case _:
                return
        rule = rule_for(event.event_type, status)
        if subject_id and rule is not None and rule.template is not None:
            await self._notify_customer(uow, rule, event, subject_id)

    async def processing_started(self, uow: UnitOfWork, rma_id: str, at: datetime) -> None:
        """The RMA entered PROCESSING (an rma event named in processing_started_events)."""
        await self._enter(uow, rma_id, "processing", at)

    # --- SLA ----------------------------------------------------------------------------------
    async def _enter(self, uow: UnitOfWork, subject_id: str, stage: str, at: datetime) -> None:
        clock = await uow.load(SlaClock, subject_id)
        changes = clock.enter(stage, at, self.config.sla)
        await self._apply_clock_changes(uow, clock, changes.started, changes.stopped)

    async def _end(self, uow: UnitOfWork, subject_id: str, reason: str, at: datetime) -> None:
        clock = await uow.load(SlaClock, subject_id)
        changes = clock.end(reason, at)
        await self._apply_clock_changes(uow, clock, changes.started, changes.stopped)

    async def _apply_clock_changes(self, uow: UnitOfWork, clock: SlaClock, started: Sequence[StageClock],
                                   stopped: Sequence[StageClock]) -> None:
        for c in stopped:
            await uow.cancel_timer(timer_id(clock.id, c.stage))
        for c in started:
            # Stored with the clock's events: the due time fires after a restart too.
            await uow.schedule_timer(timer_id(clock.id, c.stage), self.config.owner, TIMER_SLA_DUE, clock.stream_id,
                                     c.due_at, {"subject_id": clock.id, "stage": c.stage})
        if started or stopped:
            await outbox.save_clocks(uow.conn, clock, self.clock())

    async def on_sla_due(self, timer: Timer) -> None:
        """A stage's due time: if its clock still runs, SlaBreachWarning and the operations messages, in
        one transaction. Idempotent (a timer fired twice warns once)."""
        subject_id, stage = timer.payload["subject_id"], timer.payload["stage"]
        ctx = CommandContext(actor="sla-timer", role="service", correlation_id=f"sla-{subject_id}",
                             causation_id=timer.timer_id, reason=f"SLA of stage {stage} due")

        async def fn(uow: UnitOfWork) -> dict[str, str]:
            # The runner fires a timer once the database's clock passed due_at; never let a slightly
            # slower local clock turn that into "not late yet" (the timer would be spent).
            now = max(self.clock(), timer.due_at)
            clock = await uow.load(SlaClock, subject_id)
            warning = clock.warn_if_late(stage, now)
            if warning is None:
                return {"warned": "no"}
            await outbox.save_clocks(uow.conn, clock, now)
            SLA_BREACHES.labels(stage).inc()
            self.stats["sla_breaches"] += 1
            await self._notify_operations(uow, warning, clock, now)
            return {"warned": "yes"}

        await execute(self.store, ctx, "notifications:sla", fn)

    # --- messages -----------------------------------------------------------------------------
    async def _eta(self, uow: UnitOfWork, subject_id: str, subject: subjects.Subject | None,
                   now: datetime) -> datetime | None:
        clock = await uow.load(SlaClock, subject_id)
        return clock.eta(self.config.sla, now, subject.carrier_eta if subject else None).at

    async def _notify_customer(self, uow: UnitOfWork, rule: StageRule, event: DomainEvent, subject_id: str) -> None:
        subject = await subjects.get(uow.conn, subject_id)
        if subject is None or not subject.customer_id:
            # Nothing says who the customer is (an event of an RMA this service never saw opened).
            log.warning("no contact for %s: %s not notified", subject_id, event.event_type)
            self.stats["no_contact"] += 1
            return
        now = self.clock()
        eta = await self._eta(uow, subject_id, subject, now)
        for channel in CUSTOMER_CHANNELS:
            address = subject.address(channel)
            if address:
                await self._enqueue(uow, rule, event, channel=channel, recipient=subject.customer_id, address=address,
                                    wanted_locale=subject.locale, subject=subject, subject_id=subject_id, eta=eta,
                                    now=now)

    async def _notify_operations(self, uow: UnitOfWork, warning: SlaBreachWarning, clock: SlaClock,
                                 now: datetime) -> None:
        rule = rule_for("SlaBreachWarning")
        assert rule is not None
        subject = await subjects.get(uow.conn, clock.id)
        eta = clock.eta(self.config.sla, now, subject.carrier_eta if subject else None).at
        source = f"sla-breach:{clock.id}:{warning.stage}:{warning.started_at.isoformat()}"
        for channel in OPERATIONS_CHANNELS:
            address = self.config.ops_email if channel == "email" else OPERATIONS
            await self._enqueue(uow, rule, warning, channel=channel, recipient=OPERATIONS, address=address,
                                wanted_locale=self.config.ops_locale, subject=subject, subject_id=clock.id, eta=eta,
                                now=now, source_id=source, subject_type=warning.subject_type)

    async def _enqueue(self, uow: UnitOfWork, rule: StageRule, event: DomainEvent, *, channel: Channel,
                       recipient: str, address: str, wanted_locale: str | None, subject: subjects.Subject | None,
                       subject_id: str, eta: datetime | None, now: datetime, source_id: str | None = None,
                       subject_type: str = "rma") -> None:
        assert rule.template is not None
        source = source_id or uow.ctx.causation_id
        assert source, "a message needs its cause"
        locale = self.renderer.locale_for(rule.template, wanted_locale)
        context = build_context(rule.template, MessageInput(event, subject, subject_id, eta, locale, now),
                                self.config.formatter)
        rendered = self.renderer.render(rule.template, channel, locale, context)
        key = dedupe_key(source, channel, rule.template)
        queued = NotificationQueued(
            notification_id=notification_id(key), dedupe_key=key,
            stage_key=stage_key(rule, subject_id, channel, source), audience=rule.audience, recipient=recipient,
            address=address, channel=channel, locale=rendered.locale,  # type: ignore[arg-type]
            template=rule.template, subject_type=subject_type,  # type: ignore[arg-type]
            subject_id=subject_id, stage=rule.stage, source_id=source, source_event_type=event.event_type,
            title=rendered.title, body=rendered.body, max_attempts=self.config.retry.max_attempts, at=now)
        if not await outbox.insert(uow.conn, queued, self.config.owner):
            DEDUPLICATED.labels(channel).inc()
            self.stats["deduplicated"] += 1
            return
        uow.add(Notification.queue(queued))
        await outbox.wake(uow.conn, self.config.owner)
        QUEUED.labels(channel, rule.template).inc()
        self.stats["queued"] += 1


class NotificationsReactions(Reactions):
    """The consumer's handler: contract events through Reactions (savepoint, refusals logged, bugs
    dead-lettered); the rma events that mean "processing started" (named by a setting, since the
    contract has none yet) by their type and `rma_id`, whether or not this process knows the model."""

    def __init__(self, store: EventStore, notifier: Notifier) -> None:
        super().__init__(store, notifier.react, actor="notifications")
        self.notifier = notifier

    async def handle(self, conn: asyncpg.Connection, envelopes: Sequence[EventEnvelope]) -> None:
        for e in envelopes:  # one at a time, in order
            if e.event_type in self.notifier.config.processing_started_events:
                await self._processing_started(conn, e)
            else:
                await super().handle(conn, [e])

    async def _processing_started(self, conn: asyncpg.Connection, e: EventEnvelope) -> None:
        ctx = CommandContext(actor=self.actor, role="service", correlation_id=e.correlation_id,
                             causation_id=str(e.event_id))
        try:
            rma_id = str(e.data["rma_id"])
            at = datetime.fromisoformat(str(e.data.get("at") or e.recorded_at.isoformat()))
            async with conn.transaction():
                uow = UnitOfWork(self.store, conn, ctx)
                await self.notifier.processing_started(uow, rma_id, at)
                await uow.flush()
        except TRANSIENT:
            raise
        except (DomainError, ValidationError, KeyError, ValueError) as exc:
            log.warning("%s: %s %s refused: %s", self.actor, e.event_type, e.event_id, exc)
            HANDLER_ERRORS.labels(self.actor, type(exc).__name__).inc()
            self.rejected.append((str(e.event_id), str(exc)))
