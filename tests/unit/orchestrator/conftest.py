"""The ``world`` fixture: an orchestrator and supervisor over the fakes, with an event recorder."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.unit.orchestrator.test_supervisor import World, make_world


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    w = await make_world(tmp_path)

    async def record() -> None:
        async for event in w.bus.subscribe():
            w.seen.append(event)

    recorder = asyncio.create_task(record())
    await asyncio.sleep(0)
    yield w
    recorder.cancel()
    await w.supervisor.close()
    await w.orchestrator.close()
