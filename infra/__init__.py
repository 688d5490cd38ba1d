"""Local infrastructure for development and tests: a single-node KRaft Kafka broker
run from Maven Central jars, a Redis server, and their start/stop/status glue.

Services are only started when the configured address is on loopback; remote
(managed) services are only checked for reachability.
"""
