"""The Python client library against a real daemon: its documented example runs as written, and
an event stream survives a daemon restart, resuming where it stopped."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.client import ApiError, SchedulerClient
from tests.support.daemon import ROOT, DaemonProcess, start_daemon

pytestmark = pytest.mark.integration


def test_the_documented_example_runs(daemon_factory, image_archives: dict[str, Path]) -> None:
    toolbox = [str(p) for name, p in image_archives.items() if "toolbox" in name]
    daemon = daemon_factory({"images": {"preload": toolbox}})
    ran = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "python" / "toolbox_roundtrip.py"), "--address", daemon.address],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    lines = ran.stdout.splitlines()
    assert lines[0] == "created py-demo"
    assert "plan: toolbox CHANGE_ACTION_REPLACE" in lines
    assert "generation 2 runs with GREETING=hello" in lines
    assert "stale etag refused: ABORTED ETAG_MISMATCH" in lines
    replayed = [line.split(": ", 1)[1] for line in lines if line.startswith("event ")]
    assert replayed[0] == "EVENT_TYPE_ENVIRONMENT_CREATED" and replayed[-1] == "EVENT_TYPE_ENVIRONMENT_RUNNING"
    assert "EVENT_TYPE_ENVIRONMENT_UPDATED" in replayed
    assert lines[-1] == "py-demo deleted"


def test_events_resume_across_a_daemon_restart(tmp_path: Path, image_archives: dict[str, Path]) -> None:
    toolbox = [str(p) for name, p in image_archives.items() if "toolbox" in name]
    daemon = start_daemon(tmp_path, {"images": {"preload": toolbox}})
    restarted: list[DaemonProcess] = []

    async def scenario() -> None:
        async with SchedulerClient.connect(daemon.address) as client:
            stream = client.events(heartbeats=True, heartbeat_interval=1.0, reconnect_delay=0.2, max_reconnects=300)
            # The first heartbeat shows the watch is live, so the create below cannot slip past it.
            assert (await asyncio.wait_for(anext(stream), 30)).type == pb.EVENT_TYPE_HEARTBEAT
            await client.create("before", "toolbox", validate_only=True)  # no event: nothing stored
            await client.create("before", "toolbox")
            first = await asyncio.wait_for(anext(stream), 30)
            assert (first.type, first.environment) == (pb.EVENT_TYPE_ENVIRONMENT_CREATED, "before")

            assert daemon.stop() == 0
            restarted.append(await asyncio.to_thread(start_daemon, tmp_path, None, reuse_config=True))
            await client.create("after", "toolbox")
            seen = []
            async with asyncio.timeout(120):
                async for event in stream:
                    if event.type == pb.EVENT_TYPE_HEARTBEAT:
                        continue
                    seen.append(event)
                    if (event.type, event.environment) == (pb.EVENT_TYPE_ENVIRONMENT_CREATED, "after"):
                        break
            sequences = [first.sequence] + [e.sequence for e in seen]
            assert sequences == sorted(set(sequences)), sequences  # nothing repeated, in order
            assert seen[-1].sequence > first.sequence
            await stream.aclose()

            with pytest.raises(ApiError) as gone:
                await client.get("never")
            assert gone.value.code == "NOT_FOUND" and gone.value.reason == "NOT_FOUND"
            assert gone.value.details.domain == "scheduler.v1"

    try:
        asyncio.run(scenario())
    finally:
        for process in (*restarted, daemon):
            if process.process.poll() is None:
                process.delete_all_environments()
                process.stop()
        daemon.cleanup()
