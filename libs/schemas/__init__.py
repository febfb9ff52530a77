"""Generation of schemas/: one JSON Schema per event type and version, the envelope,
an AsyncAPI 3.0 document of every topic and an OpenAPI document per HTTP service.
`make schemas` writes them; tests/unit/test_schemas_fresh.py fails when they are stale."""
