"""The command line itself: version, help, and no traceback for expected conditions."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.fixtures.paths import ROOT


def tierflow(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tierflow.pipeline.cli.main", *args], cwd=ROOT,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=60)


def test_version_and_bare_command() -> None:
    version = tierflow("--version")
    assert version.returncode == 0 and version.stdout.startswith("tierflow ")
    bare = tierflow()
    assert bare.returncode == 2
    assert "COMMAND" in bare.stderr and "produce" in bare.stderr and "Traceback" not in bare.stderr


def test_a_bad_environment_value_is_named_without_a_traceback() -> None:
    result = tierflow("validate", "whatever.jsonl", TIERFLOW_PARTITIONS="abc")
    assert result.returncode == 2
    assert result.stderr.strip() == "tierflow: configuration error: TIERFLOW_PARTITIONS='abc' is not an integer"


def test_a_closed_pipe_ends_the_command_quietly(tmp_path: Path) -> None:
    lines = tmp_path / "bad.jsonl"
    lines.write_text("not json\n" * 50_000)
    command = f"{sys.executable} -m tierflow.pipeline.cli.main validate {lines} | head -1"
    result = subprocess.run(["sh", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.stdout.startswith("line 1: not_json")
    assert result.stderr == ""
