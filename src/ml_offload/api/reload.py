"""SIGHUP, as daemons take it: read the config again and rescan the model folder.

The models (`[[models]]`, the folder, the demo model, engine defaults for new models) are
reloaded; a model whose definition changed or that went is unloaded, the others stay loaded.
Other sections (server, security, storage) take a restart. A config that no longer validates
is logged and ignored: the gateway goes on with what it had.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable

from ml_offload.config import Settings
from ml_offload.errors import MloError
from ml_offload.services import Services

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def reload_on_hup(
    services: Services, reread: Callable[[], Settings] | None
) -> AsyncIterator[None]:
    """While open, SIGHUP reloads (`reread` the settings); without `reread`, nothing is set."""
    if reread is None:
        yield
        return
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    def on_hup() -> None:
        task = loop.create_task(_reload(services, reread))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
        for task in tasks:
            task.cancel()


async def _reload(services: Services, reread: Callable[[], Settings]) -> None:
    log.info("SIGHUP: reloading the config")
    try:
        settings = await asyncio.to_thread(reread)
        await services.control.reload(settings)
    except MloError as exc:
        log.error("SIGHUP: config not reloaded, the gateway goes on as it was: %s", exc.message)
