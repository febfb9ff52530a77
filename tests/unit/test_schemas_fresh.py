"""schemas/ is generated from the event models and the HTTP apps; it must never be stale."""

from libs.schemas.__main__ import stale
from libs.schemas.generate import build


def test_schemas_directory_matches_the_models() -> None:
    problems = stale()
    assert not problems, "schemas/ is stale; run `make schemas`:\n" + "\n".join(problems)


def test_every_registered_event_has_a_versioned_json_schema() -> None:
    from libs.domain.events import registry

    files = build()
    for cls in [c for c in registry.all() if c.__module__.startswith(("services.", "libs."))]:
        path = f"events/{cls.topic}/{cls.event_type}.v{cls.schema_version}.json"
        assert path in files, f"no schema for {cls.event_type}"
        assert f'"x-schema-version": {cls.schema_version}' in files[path]


def test_asyncapi_lists_every_topic_and_event_type() -> None:
    import json

    from libs.domain.events import registry

    doc = json.loads(build()["asyncapi.json"])
    assert doc["asyncapi"].startswith("3.")
    addresses = {ch["address"] for ch in doc["channels"].values()}
    for cls in [c for c in registry.all() if c.__module__.startswith(("services.", "libs."))]:
        assert cls.topic in addresses
        assert f"{cls.topic}:{cls.event_type}" in doc["channels"]


def test_no_two_different_models_share_a_schema_name() -> None:
    """AsyncAPI keeps one component per name: two different models with the same name would make
    the document depend on import order (and describe one of them wrongly)."""
    import json

    from libs.domain.events import registry

    seen: dict[str, tuple[str, str]] = {}
    for cls in [c for c in registry.all() if c.__module__.startswith(("services.", "libs."))]:
        for name, definition in cls.model_json_schema().get("$defs", {}).items():
            text = json.dumps(definition, sort_keys=True)
            if name in seen:
                assert seen[name][0] == text, f"{name} differs between {seen[name][1]} and {cls.__name__}"
            else:
                seen[name] = (text, cls.__name__)
