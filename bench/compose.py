"""Whether docker compose v2 is on this machine, for the benchmarks that would compare with it.

Debian has only compose v1, so compose v2 itself is not driven by these benchmarks: where it is
found they say so instead of printing a figure, and where it is not they say it is skipped. The
docker side that compose v2 would drive is measured without it: bench.density runs the same
web-postgres stacks under a private dockerd (bench.dockerd, bench.docker_stack).
"""

from __future__ import annotations

import shutil
import subprocess


def version() -> str:
    """``docker compose version``'s answer, or "" when docker or its compose plugin is missing."""
    if shutil.which("docker") is None:
        return ""
    try:
        result = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout.strip() if result.returncode == 0 else ""


def note(figure: str) -> str:
    """The line a benchmark prints in place of its docker compose figure."""
    found = version()
    if not found:
        return f"docker compose v2: not on this machine; {figure} against compose skipped"
    return f"docker compose v2 found ({found}), but {figure} against compose is not measured by this benchmark"
