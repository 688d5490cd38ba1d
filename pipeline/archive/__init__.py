"""The ClickHouse archive: backends, migrations, the archive consumer and AIPL queries."""
