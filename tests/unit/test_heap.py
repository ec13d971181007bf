"""heap.trim gives the C heap's free pages back: the RSS falls, the live data stays."""

from __future__ import annotations

import subprocess
import sys

# Fragments the C heap (blocks above pymalloc's 512 bytes come from malloc), frees all but every
# 64th block, so that the free space lies between live blocks where free() cannot return it.
PROBE = """
from scheduler import heap
def rss_kb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))
blocks = [bytes(4000) for _ in range(20000)]
kept = blocks[::64]
del blocks
before = rss_kb()
trimmed = heap.trim()
print(trimmed, before - rss_kb(), sum(len(b) for b in kept))
"""


def test_trim_returns_the_freed_heap_to_the_kernel() -> None:
    run = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True)
    trimmed, released_kb, kept = run.stdout.split()
    assert trimmed == "True"
    assert int(released_kb) > 40_000  # of the ~80 MB freed
    assert int(kept) == 313 * 4000
