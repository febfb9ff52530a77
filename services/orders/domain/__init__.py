"""Pure domain of the orders service: aggregates, events, commands and policies. No I/O here."""
