"""The archive inside the Faust worker: one call from the app factory.

    from tierflow.pipeline.archive.service import install_archive
    install_archive(app, ctx)   # in agents/app.py create_app, before returning the app

It mounts the dashboard and its JSON API on the worker's web server and, when
`archive.enabled`, runs the archive writer (its own consumer group) in a
thread the worker starts and stops. Both share one `Archive`, so an embedded
chDB directory is opened once, by the worker, for its whole life.
"""

from __future__ import annotations

import asyncio

import faust
from mode import Service

from tierflow.agents.archive import ArchiveThread
from tierflow.pipeline.archive.handle import Archive
from tierflow.pipeline.config.context import Context
from tierflow.pipeline.dashboard.server import add_routes


def install_archive(app: faust.App, ctx: Context) -> Archive:
    archive = Archive(ctx.settings, ctx.config.archive)
    writer = ArchiveThread(ctx, archive) if ctx.config.archive.enabled else None

    class ArchiveService(Service):
        async def on_start(self) -> None:
            if writer is not None:
                writer.start()

        async def on_stop(self) -> None:
            if writer is not None:
                await asyncio.to_thread(writer.stop)
            archive.close()

    app.service(ArchiveService)
    add_routes(
        app.web.web_app.router, archive, ctx.config, host=ctx.settings.web_host,
        token=ctx.settings.dashboard_token, status=writer.status if writer else None,
    )
    return archive
