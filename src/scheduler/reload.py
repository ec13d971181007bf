"""Reloading the configuration file without a restart (SIGHUP, or ``scheduler config reload``).

The file is read and validated whole first: an invalid one changes nothing, and the reason is
logged. Of a valid one, the options in ``config.LIVE_SETTINGS`` are applied at once; any other
changed option is reported as needing a restart and keeps its running value until then, so the
settings in effect are always one consistent object.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from scheduler import errors, log
from scheduler.api.server import ApiServer
from scheduler.config import ImageSettings, Settings, changed_settings, is_live
from scheduler.domain import ReloadReport
from scheduler.metrics.collector import StateCollector
from scheduler.metrics.http import MetricsServer
from scheduler.service import EnvironmentService

_log = log.get("reload")


@dataclass(frozen=True)
class LiveTargets:
    """The components whose settings a reload changes in place."""

    service: EnvironmentService
    server: ApiServer
    images: Callable[[ImageSettings], None]
    """Hands a new ``images`` section to the image service (converted by the daemon)."""
    metrics: MetricsServer
    collector: StateCollector


class Reloader:
    """Holds the settings in effect and applies a re-read file to them."""

    def __init__(self, settings: Settings, load: Callable[[], Settings], targets: LiveTargets) -> None:
        self.settings = settings
        self._load = load
        self._targets = targets
        self._lock = asyncio.Lock()
        self._hooks: list[Callable[[Settings], None]] = []

    def on_apply(self, hook: Callable[[Settings], None]) -> None:
        """Call ``hook`` with the settings in effect after each applied reload."""
        self._hooks.append(hook)

    async def reload(self) -> ReloadReport:
        """Re-read the file and apply what can change live; never raises for a bad file."""
        async with self._lock:
            try:
                new = await asyncio.to_thread(self._load)
            except errors.InvalidArgument as err:
                _log.error("config.reload_refused", error=err.message)
                return ReloadReport(error=err.message)
            old = self.settings
            changed = changed_settings(old, new)
            live = tuple(c for c in changed if is_live(c))
            later = tuple(c for c in changed if not is_live(c))
            effective = old.model_copy(
                update={
                    "log": new.log,
                    "limits": new.limits,
                    "metrics": new.metrics,
                    "auth": new.auth,
                    "backups": new.backups,
                    "images": old.images.model_copy(
                        update={
                            "registries": new.images.registries,
                            "allowed_registries": new.images.allowed_registries,
                        }
                    ),
                }
            )
            try:
                await self._apply(old, effective)
            except errors.SchedulerError as err:
                _log.error("config.reload_refused", error=err.message)
                return ReloadReport(error=err.message)
            self.settings = effective
            for hook in self._hooks:
                hook(effective)
            if later:
                _log.warning("config.needs_restart", options=list(later))
            _log.info("config.reloaded", applied=list(live), needs_restart=list(later))
            return ReloadReport(live, later)

    async def _apply(self, old: Settings, new: Settings) -> None:
        # The only step that can fail (the new metrics address may be taken) goes first, so that a
        # refused reload has changed nothing.
        targets = self._targets
        await targets.metrics.move(new.metrics.listen)
        targets.collector.interval = new.metrics.interval
        if new.log != old.log:
            log.configure(new.log.format, new.log.level)
        targets.service.set_limits(new.limits)
        targets.server.set_auth(new.auth)
        targets.images(new.images)
