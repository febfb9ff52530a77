"""Kafka messaging on FastStream's KafkaBroker: the wire envelope of stored events,
topic management, the outbox relay and effectively-once consumers."""
