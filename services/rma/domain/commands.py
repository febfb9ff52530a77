"""The RMA service's commands as they arrive over HTTP (validated pydantic models; the rules that
need state live in the aggregates and the application)."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from libs.domain.types import Id, Name, Text
from services.rma.domain.events import Contact, Serial, ShippingAddress, Sku, Warehouse

Attachment = Annotated[str, Field(min_length=1, max_length=500, description="a reference to an uploaded photo "
                                                                            "or video (URL or storage key)")]


class Command(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class OpenRma(Command):
    serial: Serial
    sku: Sku
    fault_code: Annotated[str, Field(min_length=1, max_length=64, description="a code of the fault dictionary "
                                                                              "(GET /faults)")]
    description: Text = ""
    attachments: list[Attachment] = Field(default_factory=list, max_length=20)
    contact: Contact
    ship_to: ShippingAddress
    warehouse_id: Warehouse | None = Field(default=None, description="the service centre handling it "
                                                                     "(default: the configured one)")


class ReviewWarranty(Command):
    decision: Literal["eligible", "rejected"]
    note: Annotated[str, Field(min_length=1, max_length=500, description="what the decision rests on, e.g. the "
                                                                         "invoice the customer sent")]
    purchase_date: date | None = Field(default=None, description="the purchase date on the customer's documents")


class CancelRma(Command):
    reason: Annotated[str, Field(min_length=1, max_length=500)]


class StartProcessing(Command):
    note: Text = ""


class ApproveSubstitution(Command):
    reason: Text = ""


class RefuseSubstitution(Command):
    alternative_sku: Sku | None = Field(default=None, description="the approver's alternative, tried first")
    reason: Annotated[str, Field(min_length=1, max_length=500)]


class AnswerTransfer(Command):
    note: Text = ""


class RefuseTransfer(Command):
    reason: Annotated[str, Field(min_length=1, max_length=500)]


class SetStockLevel(Command):
    available: Annotated[int, Field(ge=0, le=1_000_000)]
    reason: Text = ""


class DefineWarehouse(Command):
    name: Name
    kind: Literal["warehouse", "department"] = "warehouse"
    transfer_ttl_seconds: Annotated[int, Field(ge=1, le=30 * 86400)] | None = Field(
        default=None, description="how long this warehouse has to answer a transfer request (default: the "
                                  "service's setting)")


class RegisterProduct(Command):
    serial: Serial
    sku: Sku
    purchase_date: date
    customer_id: Id | None = None
    registration_id: Id | None = Field(default=None, description="default: derived from serial and purchase date")


class RecordSale(Command):
    serial: Serial
    sku: Sku
    invoice_number: Annotated[str, Field(min_length=1, max_length=64)]
    sold_on: date
    channel: Annotated[str, Field(max_length=64)] = ""
