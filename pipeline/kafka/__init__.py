"""Kafka clients: configuration, the publisher, topics, consumer lag, the event sender."""
