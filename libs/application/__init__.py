"""Application-layer plumbing shared by the services: loading and saving event-sourced
aggregates in a unit of work, idempotent command execution, durable timers."""
