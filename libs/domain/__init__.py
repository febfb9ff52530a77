"""Shared domain types: money, events, aggregates and domain errors. No I/O here."""
