"""The projector: builds read models from Kafka and serves the query API."""
