"""The relay process: publishes every stored event to its service's Kafka topic."""
