"""Build the contents of schemas/ from the code (event models and FastAPI apps)."""

from __future__ import annotations

import importlib
import json
from typing import Any, Literal

from faststream.kafka import KafkaBroker
from faststream.specification import AsyncAPI
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, create_model

from libs.domain.events import DomainEvent, registry

# HTTP services whose OpenAPI document is published: name -> "module:factory".
HTTP_APPS = {
    "orders": "services.orders.entrypoints.http:create_app",
    "projector": "services.projector.entrypoints.http:create_app",
    "payments": "services.payments.entrypoints.http:create_app",
    "rma": "services.rma.entrypoints.http:create_app",
    "shipping": "services.shipping.entrypoints.http:create_app",
    "notifications": "services.notifications.entrypoints.http:create_app",
}

# Who consumes which topic (documented as AsyncAPI receive operations).
CONSUMERS = {
    "orders.events": ["projector", "payments"],
    "payments.events": ["orders", "projector"],
    "payments.upstream": ["payments"],
    "rma.events": ["shipping", "notifications", "projector"],
    "shipping.events": ["rma", "notifications", "projector"],
    "notifications.events": ["projector"],
    "carrier.tracking": ["shipping"],
}


class EnvelopeDoc(BaseModel):
    """Every message on a `*.events` topic: one stored event. Kafka key = stream_id;
    headers event-type, event-id, global-position, stream-version, schema-version,
    correlation_id, causation-id."""

    model_config = ConfigDict(extra="forbid")

    event_id: str = Field(description="UUID of the event; consumers deduplicate by it")
    event_type: str
    schema_version: int
    stream_id: str = Field(description="aggregate stream, e.g. order-<id>; also the Kafka key")
    stream_version: int = Field(description="1-based position of the event in its stream")
    global_position: int
    transaction_id: int
    recorded_at: AwareDatetime
    metadata: dict[str, Any] = Field(description="actor, role, correlation_id, causation_id, recorded_at, "
                                               "schema_version")


def _dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _load_models() -> list[type[DomainEvent]]:
    importlib.import_module("services.registry")
    # Only the platform's own events: a test may define event classes of its own.
    return [cls for cls in registry.all() if cls.__module__.startswith(("services.", "libs."))]


def envelope_model(cls: type[DomainEvent]) -> type[BaseModel]:
    return create_model(
        f"{cls.event_type}Message", __base__=EnvelopeDoc, __doc__=cls.__doc__,
        event_type=(Literal[cls.event_type], Field(description="event type")),  # type: ignore[valid-type,arg-type]
        schema_version=(Literal[cls.schema_version], ...),  # type: ignore[valid-type,arg-type]
        data=(cls, ...),
    )


def event_schemas() -> dict[str, str]:
    files: dict[str, str] = {}
    for cls in _load_models():
        schema = cls.model_json_schema()
        schema["$id"] = f"https://closeloop.dev/schemas/events/{cls.topic}/{cls.event_type}.v{cls.schema_version}.json"
        schema["x-event-type"] = cls.event_type
        schema["x-schema-version"] = cls.schema_version
        schema["x-topic"] = cls.topic
        files[f"events/{cls.topic}/{cls.event_type}.v{cls.schema_version}.json"] = _dump(schema)
    files["events/envelope.json"] = _dump(EnvelopeDoc.model_json_schema())
    return files


def asyncapi() -> str:
    broker = KafkaBroker("localhost:9092", description="closeloop event topics")
    for cls in _load_models():
        broker.publisher(cls.topic, title=f"{cls.topic}:{cls.event_type}", schema=envelope_model(cls),
                         description=(cls.__doc__ or cls.event_type).strip().splitlines()[0])
    for topic, groups in CONSUMERS.items():
        for group in groups:
            async def _noop(msg: EnvelopeDoc) -> None:  # documentation only
                return None

            broker.subscriber(topic, group_id=group, title=f"{group} consumes {topic}")(_noop)
    spec = AsyncAPI(broker, title="closeloop events", version="1.0.0", schema_version="3.0.0",
                    description="Domain events published by the relay, one topic per service.")
    return _dump(json.loads(spec.to_specification().to_json()))


def openapi_documents() -> dict[str, str]:
    files: dict[str, str] = {}
    for name, target in HTTP_APPS.items():
        module_name, _, factory = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                continue  # that service does not exist (yet)
            raise
        app = getattr(module, factory)(None)
        files[f"openapi/{name}.json"] = _dump(app.openapi())
    return files


def build() -> dict[str, str]:
    """Relative path -> file content for everything under schemas/."""
    files = event_schemas()
    files["asyncapi.json"] = asyncapi()
    files.update(openapi_documents())
    return files
