"""Create+start latency of a small container through the runtime layer, against ``ctr run -d``.

Both run in the same namespace of the same containerd, interleaved, with the same busybox image;
``ctr`` is only the baseline here. Prints the medians and their ratio (target: ours <= 1.2x ctr).

    python -m bench.runtime_start [--socket /path/containerd.sock] [-n 15]

Without ``--socket`` a private containerd is started in a temp dir (needs root).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from bench import leftovers
from scheduler import domain
from scheduler.runtime.containerd.managed import ManagedContainerd
from scheduler.runtime.containerd.runtime import ContainerdRuntime
from tests.support.containerd import purge_namespace, write_busybox_archive


async def bench(socket: str, runs: int, work: Path) -> tuple[list[float], list[float]]:
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    runtime = await ContainerdRuntime.connect(socket, namespace=namespace, state_dir=work / "state")
    ours: list[float] = []
    baseline: list[float] = []
    try:
        image = (await runtime.import_archive(write_busybox_archive(work / "busybox.tar")))[0]
        for i in range(runs + 1):  # the first round warms caches and is dropped
            cid = f"ours-{i}"
            config = domain.ContainerConfig(id=cid, image=image, command=("sleep", "1000"))
            started = time.perf_counter()
            await runtime.create(config)
            await runtime.start(cid)
            elapsed = time.perf_counter() - started

            ctr_id = f"ctr-{i}"
            started_ctr = time.perf_counter()
            await asyncio.to_thread(
                subprocess.run,
                ["ctr", "-a", socket, "-n", namespace, "run", "-d", image.name, ctr_id, "sleep", "1000"],
                check=True,
                capture_output=True,
            )
            elapsed_ctr = time.perf_counter() - started_ctr
            if i:
                ours.append(elapsed)
                baseline.append(elapsed_ctr)
            await runtime.delete(cid)
            await runtime.delete(ctr_id)
    finally:
        await purge_namespace(runtime.client, runtime)
        await runtime.close()
    return ours, baseline


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", default="", help="existing containerd socket (default: start a private one)")
    parser.add_argument("-n", "--runs", type=int, default=15)
    args = parser.parse_args()
    if shutil.which("ctr") is None:
        raise SystemExit("ctr is needed for the baseline")
    work = Path(tempfile.mkdtemp(prefix="sched-bench-"))
    managed = None
    socket = args.socket
    try:
        if not socket:
            managed = ManagedContainerd(work / "containerd")
            socket = str(await managed.start())
        ours, baseline = await bench(socket, args.runs, work)
    finally:
        if managed is not None:
            await managed.stop()
        leftovers.report([], [work])
        shutil.rmtree(work, ignore_errors=True)
    ours_ms = statistics.median(ours) * 1000
    ctr_ms = statistics.median(baseline) * 1000
    print(f"runs: {len(ours)}")
    print(
        f"runtime layer create+start: median {ours_ms:.1f} ms (min {min(ours) * 1000:.1f}, max {max(ours) * 1000:.1f})"
    )
    low, high = min(baseline) * 1000, max(baseline) * 1000
    print(f"ctr run -d (baseline):      median {ctr_ms:.1f} ms (min {low:.1f}, max {high:.1f})")
    print(f"ratio ours/ctr: {ours_ms / ctr_ms:.2f}x (target <= 1.2x)")


if __name__ == "__main__":
    asyncio.run(main())
