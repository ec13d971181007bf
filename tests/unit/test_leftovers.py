"""The session sweep of tests/support/leftovers.py ends what names a tracked dir, and only that."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support import leftovers
from tests.support.processes import alive, descendants, processes_naming


def test_sweep_ends_processes_naming_a_tracked_dir_and_their_children() -> None:
    # Outside the session's temp dir, which the session itself tracks.
    base = Path(tempfile.mkdtemp(prefix="leftovers-"))
    tracked, other = base / "tracked", base / "other"
    # A "shim" naming the tracked dir, with a child that does not (a container's process).
    shim = subprocess.Popen(["sh", "-c", "sleep 60 & wait", str(tracked / "containerd.sock")])
    bystander = subprocess.Popen(["sh", "-c", "sleep 60", str(other / "containerd.sock")])
    try:
        deadline = time.monotonic() + 10
        while not (processes_naming(str(tracked) + "/") and descendants(shim.pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        children = descendants(shim.pid)
        assert children
        # Only this test's root: sweeping every tracked one would end the session's own containerd.
        ended = leftovers.sweep([tracked])
        assert shim.pid in ended
        assert shim.wait(10) is not None
        assert not [pid for pid in children if alive(pid)], "the shim's child outlived it"
        assert not processes_naming(str(tracked) + "/")
        assert bystander.poll() is None, "a process naming an untracked dir was ended"
    finally:
        bystander.kill()
        bystander.wait(10)
        shutil.rmtree(base, ignore_errors=True)
