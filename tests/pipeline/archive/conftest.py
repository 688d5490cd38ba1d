"""An embedded archive in the test's own home (or the server's database when
CLICKHOUSE_URL is set, dropped afterwards)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.archive import archive_context, drop_if_server
from tierflow.pipeline.archive.handle import Archive
from tierflow.pipeline.config.context import Context
from tierflow.pipeline.config.settings import Settings


@pytest.fixture
def ctx(tmp_path: Path) -> Context:
    return archive_context(Settings.from_env(), tmp_path / "home")


@pytest.fixture
def archive(ctx: Context) -> Iterator[Archive]:
    handle = Archive(ctx.settings, ctx.config.archive)
    yield handle
    drop_if_server(ctx, handle)
    handle.close()
