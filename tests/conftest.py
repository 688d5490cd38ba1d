"""The shared fixtures load as a plugin; tests that need Kafka, Redis, ClickHouse
(chDB) or a browser carry the `service` marker, so `pytest -m "not service"`
runs the unit tests alone, without services, in seconds."""

pytest_plugins = ["tests.fixtures.services", "tests.fixtures.secured", "tests.fixtures.cluster"]
