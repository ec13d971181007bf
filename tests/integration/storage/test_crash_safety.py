"""The SQLite store against a real process death: committed writes survive SIGKILL."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from scheduler.storage.sqlite import SqliteStateStore

pytestmark = pytest.mark.integration

WRITER = textwrap.dedent(
    """
    import asyncio, sys
    sys.path.insert(0, {root!r})
    from scheduler.storage.sqlite import SqliteStateStore
    from tests.unit.storage.factories import full_environment

    async def main():
        store = SqliteStateStore({path!r})
        i = 0
        while True:
            await store.create(full_environment(f"env-{{i}}"))
            await store.put_record("port", str(20000 + i), {{"env": f"env-{{i}}"}})
            # Report only after both commits returned: everything printed must survive.
            print(i, flush=True)
            i += 1

    asyncio.run(main())
    """
)


def _root() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


async def test_acknowledged_writes_survive_sigkill_mid_stream(tmp_path):
    path = str(tmp_path / "state.db")
    script = WRITER.format(root=_root(), path=path)
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=_root()
    )
    acknowledged = -1
    deadline = time.monotonic() + 30
    try:
        assert proc.stdout is not None
        while acknowledged < 50 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            acknowledged = int(line)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        stderr = proc.stderr.read() if proc.stderr else ""
    assert acknowledged >= 50, f"writer acknowledged only {acknowledged}; stderr: {stderr[-2000:]}"

    store = SqliteStateStore(path)  # runs quick_check: the killed writer left no corruption
    try:
        names = set()
        token = ""
        for _ in range(100):
            page, token = await store.list(100, token)
            names.update(e.name for e in page)
            if not token:
                break
        assert {f"env-{i}" for i in range(acknowledged + 1)} <= names
        records = await store.get_records("port")
        assert all(records[str(20000 + i)] == {"env": f"env-{i}"} for i in range(acknowledged + 1))
        # The store is writable after recovery.
        from tests.unit.storage.factories import full_environment

        await store.create(full_environment("after-crash"))
        assert (await store.get("after-crash")).name == "after-crash"
    finally:
        await store.close()
