"""Every aggregate's stream category has its Kafka topic declared: a category the relay does not know
would go to an undeclared `<category>.events` topic, which no service consumes."""

from __future__ import annotations

import importlib
import pkgutil

import services
from libs.domain.aggregate import Aggregate
from services.registry import STREAM_TOPICS, TOPICS


def _subclasses(cls: type) -> set[type]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= _subclasses(sub)
    return found


def test_every_aggregate_category_has_a_declared_topic() -> None:
    for mod in pkgutil.walk_packages(services.__path__, "services."):
        if ".domain" in mod.name or ".application" in mod.name:
            importlib.import_module(mod.name)
    categories = {getattr(cls, "category", None) for cls in _subclasses(Aggregate)} - {None}
    assert categories, "no aggregates found"
    missing = sorted(c for c in categories if c not in STREAM_TOPICS)
    assert not missing, f"stream categories without a topic in services/registry.py: {missing}"
    assert set(STREAM_TOPICS.values()) <= set(TOPICS)
