"""The RMA service's use cases. Each loads aggregates through a UnitOfWork, calls their commands (the
rules live in the domain), writes the read models in the same transaction (projections.save) and
returns the response body. Entry points (HTTP, the shipping.events consumer, the transfer timer) only
build the command and call these.

The process manager of the warranty-replacement flow (docs/after-sales.md) is this module plus
shipping_reactions.py: `start_processing` chooses the replacement (`ReplacementPlanner`), the
approver's and the source warehouse's answers re-plan (compensation: a refused transfer -> the next
source or candidate; a refused substitution -> the approver's alternative, then the next candidate),
and a chosen, approved unit in stock at the RMA's warehouse is reserved and `RmaReplacementReady` is
recorded, which shipping turns into the one outbound shipment.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg

from libs.application.unit_of_work import CommandContext, CommandResult, UnitOfWork, execute
from libs.domain.aggregate import Aggregate
from libs.domain.errors import Conflict, NotFound, RuleViolation
from libs.eventstore import EventStore, uuid7
from services.rma.application import projections
from services.rma.application.projections import rma_view
from services.rma.domain.access import STAFF, require_role
from services.rma.domain.catalogue import CatalogueItem, CatalogueItemSpec, CatalogueSeed, SubstitutionPolicy
from services.rma.domain.commands import (
    AnswerTransfer,
    ApproveSubstitution,
    CancelRma,
    DefineWarehouse,
    OpenRma,
    RecordSale,
    RefuseSubstitution,
    RefuseTransfer,
    RegisterProduct,
    ReviewWarranty,
    SetStockLevel,
    StartProcessing,
)
from services.rma.domain.events import RmaStatus
from services.rma.domain.faults import FaultDictionary
from services.rma.domain.repeat import PriorRma, find_repeat_failure, open_rma_for_serial
from services.rma.domain.rma import Rma
from services.rma.domain.stock import StockLevel, Warehouse, stock_id
from services.rma.domain.substitution import ReplacementContext, plan_replacement
from services.rma.domain.transfer import StockTransfer
from services.rma.domain.warranty import TAIPEI, WarrantyRecord, check_warranty, local_date

log = logging.getLogger("closeloop.rma")

OWNER = "rma"
TIMER_TRANSFER_TTL = "stock_transfer_ttl"


def utcnow() -> datetime:
    return datetime.now(UTC)


def transfer_timer_id(transfer_id: str) -> str:
    return f"transfer-ttl:{transfer_id}"


async def _lock(conn: asyncpg.Connection, key: str) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", key)


async def prior_rmas(conn: asyncpg.Connection, serial: str) -> list[PriorRma]:
    rows = await conn.fetch(
        """SELECT rma_id, serial, sku, fault_code, status, opened_at, replacement_serial FROM rma_cases
            WHERE serial = $1 OR replacement_serial = $1""", serial)
    return [PriorRma(rma_id=r["rma_id"], serial=r["serial"], sku=r["sku"], fault_code=r["fault_code"],
                     status=RmaStatus(r["status"]), opened_at=r["opened_at"],
                     replacement_serial=r["replacement_serial"]) for r in rows]


@dataclass
class ReplacementPlanner:
    """Chooses (or re-chooses) an RMA's replacement and carries the choice out: reserve the unit and
    mark the RMA ready, or request a transfer with its time-to-live timer, or wait for the approver."""

    policy: SubstitutionPolicy
    transfer_ttl_seconds: int
    timer_owner: str

    async def plan(self, uow: UnitOfWork, rma: Rma, at: datetime, *,
                   command: str = "choose_replacement") -> list[Aggregate]:
        original = await uow.load(CatalogueItem, rma.sku)
        if original.spec is None:
            raise RuleViolation("sku", f"{rma.sku} is no longer in the catalogue")
        wanted = {r.alt_sku for r in original.spec.substitutes} | ({rma.preferred} if rma.preferred else set())
        alt_skus = sorted(wanted - {rma.sku})
        alts = await uow.load_many([(CatalogueItem, s) for s in alt_skus]) if alt_skus else []
        items = {a.id: a.spec for a in alts if isinstance(a, CatalogueItem) and a.spec is not None}
        # Lock the stock rows of every candidate (in one order): two RMAs choosing at once cannot both
        # take the last unit, and the snapshot below stays true until this transaction commits.
        rows = await uow.conn.fetch(
            """SELECT warehouse_id, sku, available FROM rma_stock WHERE sku = ANY($1::text[])
                ORDER BY warehouse_id, sku FOR UPDATE""", [rma.sku, *alt_skus])
        stock = {(r["warehouse_id"], r["sku"]): r["available"] for r in rows}
        plan = plan_replacement(ReplacementContext(
            original_sku=rma.sku, original=original.spec, items=items, policy=self.policy,
            home_warehouse=rma.warehouse_id, stock=stock, refused_by_approver=frozenset(rma.refused_by_approver),
            approved=frozenset(rma.approved), refused_sources=frozenset(rma.refused_sources),
            preferred=rma.preferred))
        rma.choose(plan, at, command=command)
        touched: list[Aggregate] = []
        if plan.kind == "ready":
            assert plan.decision is not None
            level = await uow.load(StockLevel, stock_id(rma.warehouse_id, plan.decision.sku))
            level.reserve(rma.id, at)
            rma.mark_ready(at)
            touched.append(level)
        elif plan.kind == "transfer":
            assert plan.decision is not None
            source = await uow.load(Warehouse, plan.decision.warehouse_id)
            ttl = source.transfer_ttl_seconds or self.transfer_ttl_seconds
            transfer_id = rma.next_transfer_id()
            transfer = StockTransfer.request_unit(transfer_id, rma_id=rma.id, sku=plan.decision.sku,
                                                  from_warehouse=plan.decision.warehouse_id,
                                                  to_warehouse=rma.warehouse_id, ttl_seconds=ttl, at=at)
            uow.add(transfer)
            rma.request_transfer(transfer_id, transfer.req.expires_at, at)
            # Stored with the events: the escalation fires after a restart too.
            await uow.schedule_timer(transfer_timer_id(transfer_id), self.timer_owner, TIMER_TRANSFER_TTL,
                                     transfer.stream_id, transfer.req.expires_at, {"transfer_id": transfer_id})
            touched.append(transfer)
        return touched


def rma_response(rma: Rma) -> dict[str, Any]:
    return rma_view(rma)


@dataclass
class RmaService:
    store: EventStore
    faults: FaultDictionary
    policy: SubstitutionPolicy
    clock: Callable[[], datetime] = utcnow
    default_warehouse: str = "tw-service-centre"
    transfer_ttl_seconds: int = 86400
    timer_owner: str = OWNER
    tz: ZoneInfo = TAIPEI

    def __post_init__(self) -> None:
        self.planner = ReplacementPlanner(self.policy, self.transfer_ttl_seconds, self.timer_owner)

    async def _run(self, ctx: CommandContext, scope: str,
                   fn: Callable[[UnitOfWork, datetime], Awaitable[dict[str, Any]]]) -> CommandResult:
        async def body(uow: UnitOfWork) -> dict[str, Any]:
            return await fn(uow, self.clock())

        return await execute(self.store, ctx, scope, body)

    # --- opening an RMA ---------------------------------------------------------------------------------
    async def open_rma(self, cmd: OpenRma, ctx: CommandContext) -> CommandResult:
        """RECEIVED, then at once the repeat-failure check and the warranty check (ELIGIBLE, REJECTED, or
        waiting for a reconciler)."""
        require_role(ctx.role, ctx.actor, action="open an RMA", roles={"customer", *STAFF},
                     customer_id=cmd.contact.customer_id)
        self.faults.require(cmd.fault_code)
        rma_id = str(uuid7())
        warehouse = cmd.warehouse_id or self.default_warehouse

        async def fn(uow: UnitOfWork, at: datetime) -> dict[str, Any]:
            item = await uow.load(CatalogueItem, cmd.sku)
            if item.spec is None:
                raise RuleViolation("sku", f"must be a SKU of the catalogue; {cmd.sku!r} is not")
            # One RMA at a time per serial: concurrent openings for a serial run one after the other.
            await _lock(uow.conn, f"rma-serial:{cmd.serial}")
            earlier = await prior_rmas(uow.conn, cmd.serial)
            duplicate = open_rma_for_serial(cmd.serial, earlier)
            if duplicate is not None:
                raise Conflict(f"serial {cmd.serial} already has an open RMA {duplicate.rma_id} "
                               f"({duplicate.status.value})", rma_id=duplicate.rma_id,
                               current_state=duplicate.status.value)
            rma = Rma.open(rma_id, serial=cmd.serial, sku=cmd.sku, fault_code=cmd.fault_code,
                           description=cmd.description, attachments=list(cmd.attachments), contact=cmd.contact,
                           ship_to=cmd.ship_to, warehouse_id=warehouse, at=at)
            uow.add(rma)
            finding = find_repeat_failure(cmd.serial, earlier, at)
            if finding is not None:
                rma.flag_repeat_failure(finding, at)
            record = await uow.load(WarrantyRecord, cmd.serial)
            rma.check_warranty(check_warranty(record, sku=cmd.sku, warranty_days=item.spec.warranty_days,
                                              opened_at=at, tz=self.tz), at)
            await projections.save(uow, rma)
            return rma_response(rma)

        return await self._run(ctx, "rma:open", fn)

    async def review(self, rma_id: str, cmd: ReviewWarranty, ctx: CommandContext) -> CommandResult:
        """A reconciler decides an RMA that has no proof of purchase."""
        require_role(ctx.role, ctx.actor, action="review a warranty", roles={"reconciler"})

        async def fn(uow: UnitOfWork, at: datetime) -> dict[str, Any]:
            rma = await uow.get(Rma, rma_id, check_version=True)
            item = await uow.load(CatalogueItem, rma.sku)
            days = item.spec.warranty_days if item.spec else 0
            rma.review(decision=cmd.decision, note=cmd.note, reviewer=ctx.actor, purchase_date=cmd.purchase_date,
                       warranty_days=days, checked_on=local_date(at, self.tz), at=at)
            await projections.save(uow, rma)
            return rma_response(rma)

        return await self._run(ctx, f"rma:{rma_id}:review", fn)

    async def cancel(self, rma_id: str, cmd: CancelRma, ctx: CommandContext) -> CommandResult:
        async def fn(uow: UnitOfWork, at: datetime) -> dict[str, Any]:
            rma = await uow.get(Rma, rma_id, check_version=True)
            require_role(ctx.role, ctx.actor, action="cancel the RMA", roles={"customer", *STAFF},
                         customer_id=rma.contact.customer_id)
            rma.cancel(cmd.reason, at)
            await projections.save(uow, rma)
            return rma_response(rma)

        return await self._run(ctx, f"rma:{rma_id}:cancel", fn)

    # --- processing and the replacement -------------------------------------------------------------------
    async def start_processing(self, rma_id: str, cmd: StartProcessing, ctx: CommandContext) -> CommandResult:
        """PROCESSING, and the replacement is chosen (ready, waiting for an approver, a transfer, or stock)."""
        require_role(ctx.role, ctx.actor, action="start processing an RMA", roles=STAFF)

        async def fn(uow: UnitOfWork, at: datetime) -> dict[str, Any]:
            rma = await uow.get(Rma, rma_id, check_version=True)
            rma.start_processing(ctx.actor, at)
            touched = await self.planner.plan(uow, rma, at)
            await projections.save(uow, rma, *touched)
            return rma_response(rma)

        return await self._run(ctx, f"rma:{rma_id}:start-processing", fn)

    async def retry_replacement(self, rma_id: str, ctx: CommandContext) -> CommandResult:
        """Choose again after `unavailable` (e.g. once stock arrived)."""
        require_role(ctx.role, ctx.actor, action="retry the replacement", roles=STAFF)

        async def fn(uow: UnitOfWork, at: datetime) -> dict[str, Any]:
            rma = await uow.get(Rma, rma_id, check_version=True)
            touched = await self.planner.plan(uow, rma, at, command="retry_replacement")
            await projections.save(uow, rma, *touched)
            return rma_response(rma)

        return await self._run(ctx, f"rma:{rma_id}:retry", fn)

    async def approve_substitution(self, rma_id: str, cmd: ApproveSubstitution, ctx: CommandContext) -> CommandResult:
        require_role(ctx.role, ctx.actor, action="approve a substitution", roles={"approver"})

        async def fn(uow: UnitOfWork, at: datetime) -> dict[str, Any]:
            rma = await uow.get(Rma, rma_id, check_version=True)
            rma.approve_substitution(cmd.reason, at)
            touched = await self.planner.plan(uow, rma, at)
            await projections.save(uow, rma, *touched)
            return rma_response(rma)

        return await self._run(ctx, f"rma:{rma_id}:approve", fn)

    async def refuse_substitution(self, rma_id: str, cmd: RefuseSubstitution, ctx: CommandContext) -> CommandResult:
        require_role(ctx.role, ctx.actor, action="refuse a substitution", roles={"approver"})

        async def fn(uow: UnitOfWork, at: datetime) -> dict[str, Any]:
            rma = await uow.get(Rma, rma_id, check_version=True)
            if cmd.alternative_sku is not None:
                alt = await uow.load(CatalogueItem, cmd.alternative_sku)
                if alt.spec is None:
                    raise RuleViolation("alternative_sku", f"must be a SKU of the catalogue; "
                                                           f"{cmd.alternative_sku!r} is not")
                if alt.spec.eol:
                    raise RuleViolation("alternative_sku", f"{cmd.alternative_sku} is end of life")
            rma.refuse_substitution(cmd.alternative_sku, cmd.reason, at)
            touched = await self.planner.plan(uow, rma, at)
            await projections.save(uow, rma, *touched)
            return rma_response(rma)

        return await self._run(ctx, f"rma:{rma_id}:refuse", fn)

    # --- stock transfers -------------------------------------------------------------------------------------
    async def accept_transfer(self, transfer_id: str, cmd: AnswerTransfer, ctx: CommandContext) -> CommandResult:
        """The source sends the unit: it moves to the RMA's warehouse, is reserved, and the RMA is ready."""
        require_role(ctx.role, ctx.actor, action="answer a stock transfer", roles=STAFF)

        async def fn(uow: UnitOfWork, at: datetime) -> dict[str, Any]:
            transfer = await uow.get(StockTransfer, transfer_id, check_version=True)
            transfer.accept(cmd.note, at)
            r = transfer.req
            rma = await uow.get(Rma, r.rma_id)
            rma.resolve_transfer(transfer_id, "accepted", cmd.note, at)
            # Lock both stock rows in the planner's order (warehouse, sku) so this never deadlocks with it.
            await uow.conn.execute(
                """SELECT 1 FROM rma_stock WHERE sku = $1 AND warehouse_id = ANY($2::text[])
                    ORDER BY warehouse_id, sku FOR UPDATE""", r.sku, [r.from_warehouse, r.to_warehouse])
            source = await uow.load(StockLevel, stock_id(r.from_warehouse, r.sku))
            dest = await uow.load(StockLevel, stock_id(r.to_warehouse, r.sku))
            source.transfer_out(transfer_id, r.to_warehouse, at)
            dest.transfer_in(transfer_id, r.from_warehouse, at)
            dest.reserve(rma.id, at)
            rma.mark_ready(at)
            await uow.cancel_timer(transfer_timer_id(transfer_id))
            await projections.save(uow, transfer, rma, source, dest)
            return {"transfer": transfer_response(transfer), "rma": rma_response(rma)}

        return await self._run(ctx, f"rma:transfer:{transfer_id}:accept", fn)

    async def refuse_transfer(self, transfer_id: str, cmd: RefuseTransfer, ctx: CommandContext) -> CommandResult:
        """The source cannot send it: the RMA tries the next source, then the next candidate."""
        require_role(ctx.role, ctx.actor, action="answer a stock transfer", roles=STAFF)

        async def fn(uow: UnitOfWork, at: datetime) -> dict[str, Any]:
            transfer = await uow.get(StockTransfer, transfer_id, check_version=True)
            transfer.refuse(cmd.reason, at)
            rma = await uow.get(Rma, transfer.req.rma_id)
            rma.resolve_transfer(transfer_id, "refused", cmd.reason, at)
            await uow.cancel_timer(transfer_timer_id(transfer_id))
            touched = await self.planner.plan(uow, rma, at)
            await projections.save(uow, transfer, rma, *touched)
            return {"transfer": transfer_response(transfer), "rma": rma_response(rma)}

        return await self._run(ctx, f"rma:transfer:{transfer_id}:refuse", fn)

    async def escalate_transfer(self, transfer_id: str, ctx: CommandContext) -> CommandResult:
        """Fired by the transfer's durable timer; nothing happens if it was answered meanwhile."""

        async def fn(uow: UnitOfWork, at: datetime) -> dict[str, Any]:
            transfer = await uow.get(StockTransfer, transfer_id)
            if transfer.escalate_if_unanswered(at):
                log.warning("stock transfer %s unanswered since %s: escalated", transfer_id, transfer.req.expires_at)
            await projections.save(uow, transfer)
            return transfer_response(transfer)

        return await self._run(ctx, f"rma:transfer:{transfer_id}:escalate", fn)

    # --- stock, warehouses, catalogue, warranty proofs ------------------------------------------------------
    async def set_stock(self, warehouse_id: str, sku: str, cmd: SetStockLevel, ctx: CommandContext) -> CommandResult:
        require_role(ctx.role, ctx.actor, action="set stock levels", roles=STAFF)

        async def fn(uow: UnitOfWork, at: datetime) -> dict[str, Any]:
            level = await uow.load(StockLevel, stock_id(warehouse_id, sku))
            level.set_level(cmd.available, cmd.reason, at)
            await projections.save(uow, level)
            return {"warehouse_id": warehouse_id, "sku": sku, "available": level.available,
                    "version": level.version + len(level.pending)}

        return await self._run(ctx, f"rma:stock:{warehouse_id}/{sku}", fn)

    async def define_warehouse(self, warehouse_id: str, cmd: DefineWarehouse, ctx: CommandContext) -> CommandResult:
        require_role(ctx.role, ctx.actor, action="define warehouses", roles=STAFF)

        async def fn(uow: UnitOfWork, at: datetime) -> dict[str, Any]:
            wh = await uow.load(Warehouse, warehouse_id)
            wh.define(name=cmd.name, kind=cmd.kind, transfer_ttl_seconds=cmd.transfer_ttl_seconds, at=at)
            await projections.save(uow, wh)
            return {"warehouse_id": warehouse_id, "name": wh.name, "kind": wh.kind,
                    "transfer_ttl_seconds": wh.transfer_ttl_seconds or self.transfer_ttl_seconds,
                    "version": wh.version + len(wh.pending)}

        return await self._run(ctx, f"rma:warehouse:{warehouse_id}", fn)

    async def define_item(self, sku: str, spec: CatalogueItemSpec, ctx: CommandContext) -> CommandResult:
        require_role(ctx.role, ctx.actor, action="change the catalogue", roles=STAFF)
        # Fails (ValueError -> 422) when the item's currency has no policy default and sets none itself.
        try:
            self.policy.ceiling_for(spec)
        except ValueError as exc:
            raise RuleViolation("price_ceiling", str(exc)) from None

        async def fn(uow: UnitOfWork, at: datetime) -> dict[str, Any]:
            item = await uow.load(CatalogueItem, sku)
            item.define(spec, at)
            await projections.save(uow, item)
            return self.item_response(item)

        return await self._run(ctx, f"rma:catalogue:{sku}", fn)

    def item_response(self, item: CatalogueItem) -> dict[str, Any]:
        assert item.spec is not None
        return {"sku": item.id, **item.spec.model_dump(mode="json"),
                "effective_price_ceiling": self.policy.ceiling_for(item.spec).model_dump(),
                "effective_approval_threshold": self.policy.threshold_for(item.spec).model_dump(),
                "version": item.version + len(item.pending)}

    async def register_product(self, cmd: RegisterProduct, ctx: CommandContext) -> CommandResult:
        require_role(ctx.role, ctx.actor, action="register a product", roles={"customer", *STAFF},
                     customer_id=cmd.customer_id)
        registration_id = cmd.registration_id or f"reg-{cmd.purchase_date:%Y%m%d}"

        async def fn(uow: UnitOfWork, at: datetime) -> dict[str, Any]:
            record = await uow.load(WarrantyRecord, cmd.serial)
            recorded = record.register(sku=cmd.sku, registration_id=registration_id, customer_id=cmd.customer_id,
                                       purchase_date=cmd.purchase_date, at=at, tz=self.tz)
            await projections.save(uow, record)
            return {"serial": cmd.serial, "registration_id": registration_id, "recorded": recorded,
                    **warranty_response(record)}

        return await self._run(ctx, f"rma:warranty:{cmd.serial}", fn)

    async def record_sale(self, cmd: RecordSale, ctx: CommandContext) -> CommandResult:
        require_role(ctx.role, ctx.actor, action="record a sale", roles={"importer", *STAFF})

        async def fn(uow: UnitOfWork, at: datetime) -> dict[str, Any]:
            record = await uow.load(WarrantyRecord, cmd.serial)
            recorded = record.record_sale(sku=cmd.sku, invoice_number=cmd.invoice_number, sold_on=cmd.sold_on,
                                          channel=cmd.channel, at=at, tz=self.tz)
            await projections.save(uow, record)
            return {"serial": cmd.serial, "invoice_number": cmd.invoice_number, "recorded": recorded,
                    **warranty_response(record)}

        return await self._run(ctx, f"rma:warranty:{cmd.serial}", fn)

    async def warranty(self, serial: str) -> dict[str, Any]:
        async with self.store.transaction() as conn:
            uow = UnitOfWork(self.store, conn, CommandContext("system", "service", "query"))
            record = await uow.load(WarrantyRecord, serial)
        if not record.exists:
            raise NotFound(f"no warranty record for serial {serial}", serial=serial)
        return {"serial": serial, **warranty_response(record)}

    async def seed(self, seed: CatalogueSeed) -> int:
        """Define the seed's catalogue items and warehouses that do not exist yet (start-up; idempotent,
        and safe when several replicas start at once: the loser's append conflicts, is retried, and finds
        the item defined)."""
        ctx = CommandContext(actor="rma-seed", role="platform", correlation_id="rma-seed",
                             reason="catalogue seed at start-up")
        created = 0
        for entry in seed.items:
            spec = CatalogueItemSpec.model_validate(entry.model_dump(exclude={"sku"}))

            async def item_fn(uow: UnitOfWork, at: datetime, sku: str = entry.sku,
                              spec: CatalogueItemSpec = spec) -> dict[str, Any]:
                item = await uow.load(CatalogueItem, sku)
                if not item.exists:
                    item.define(spec, at)
                    await projections.save(uow, item)
                return {"created": bool(item.pending)}

            created += int((await self._run(ctx, "rma:seed", item_fn)).response["created"])
        for w in seed.warehouses:
            async def wh_fn(uow: UnitOfWork, at: datetime, w: Any = w) -> dict[str, Any]:
                wh = await uow.load(Warehouse, w.warehouse_id)
                if not wh.exists:
                    wh.define(name=w.name, kind=w.kind, transfer_ttl_seconds=w.transfer_ttl_seconds, at=at)
                    await projections.save(uow, wh)
                return {"created": bool(wh.pending)}

            created += int((await self._run(ctx, "rma:seed", wh_fn)).response["created"])
        return created


def transfer_response(t: StockTransfer) -> dict[str, Any]:
    r = t.req
    return {"transfer_id": t.id, "rma_id": r.rma_id, "sku": r.sku, "quantity": r.quantity,
            "from_warehouse": r.from_warehouse, "to_warehouse": r.to_warehouse,
            "status": t.status.value if t.status else None, "allowed_commands": t.allowed_commands(),
            "ttl_seconds": r.ttl_seconds, "requested_at": r.at.isoformat(), "expires_at": r.expires_at.isoformat(),
            "escalated_at": t.escalated_at.isoformat() if t.escalated_at else None,
            "resolved_at": t.resolved_at.isoformat() if t.resolved_at else None, "resolution": t.resolution,
            "version": t.version + len(t.pending)}


def warranty_response(record: WarrantyRecord) -> dict[str, Any]:
    return {
        "registrations": [e.model_dump(mode="json", exclude={"serial"}) for e in record.registrations],
        "sales_records": [e.model_dump(mode="json", exclude={"serial"}) for e in record.sales],
        "replacement_units": [e.model_dump(mode="json", exclude={"serial"}) for e in record.replacements],
        "version": record.version + len(record.pending),
    }
