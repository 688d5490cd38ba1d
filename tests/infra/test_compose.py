"""infra/docker-compose.yml, checked without Docker: infra/compose-check loads it with
compose-go (the library behind `docker compose config`), then the resolved project is
held to what tierflow needs: health checks gating the worker, loopback-only ports, a
token for the worker's web server, and settings tierflow actually reads."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tierflow.infra import kafka
from tierflow.pipeline.config import settings as settings_module

INFRA = Path(kafka.__file__).parent
COMPOSE = INFRA / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose_check(tmp_path_factory: pytest.TempPathFactory) -> Path:
    go = shutil.which("go")
    if go is None:
        pytest.skip("Go is needed to build infra/compose-check")
    binary = tmp_path_factory.mktemp("compose") / "compose-check"
    subprocess.run([go, "build", "-o", str(binary), "."], cwd=INFRA / "compose-check", check=True,
                   capture_output=True, timeout=600)
    return binary


def load(binary: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("TIERFLOW_DASHBOARD_TOKEN", "CLICKHOUSE_PASSWORD")}
    return subprocess.run([str(binary), str(COMPOSE)], env=clean | env, capture_output=True, text=True,
                          timeout=60, check=False)


def test_the_worker_is_not_started_without_a_token(compose_check: Path) -> None:
    result = load(compose_check)
    assert result.returncode == 1
    assert "required variable TIERFLOW_DASHBOARD_TOKEN is missing" in result.stderr


def test_the_project_resolves_to_what_tierflow_needs(compose_check: Path) -> None:
    result = load(compose_check, TIERFLOW_DASHBOARD_TOKEN="a-token")
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert set(services) == {"kafka", "redis", "clickhouse", "worker"}
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
        for port in service.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", f"{name} publishes {port} off loopback"
    worker = services["worker"]
    assert {name: dep["condition"] for name, dep in worker["depends_on"].items()} == {
        "kafka": "service_healthy", "redis": "service_healthy", "clickhouse": "service_healthy"}
    assert "/healthz" in " ".join(worker["healthcheck"]["test"])
    env = worker["environment"]
    assert env["TIERFLOW_DASHBOARD_TOKEN"] == "a-token"
    source = Path(settings_module.__file__).read_text()
    assert [name for name in env if f'"{name}"' not in source] == []
    # The worker reaches the broker on the listener advertised to containers.
    advertised = services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert f"DOCKER://{env['KAFKA_BOOTSTRAP']}" in advertised.split(",")
    assert services["kafka"]["image"] == f"apache/kafka:{kafka.KAFKA_VERSION}"
