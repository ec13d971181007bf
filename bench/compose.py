"""Whether docker compose v2 is on this machine, for the benchmarks that would compare with it.

The comparison itself (a private dockerd, the project's images loaded, an equivalent web-postgres
compose file with the same health checks) is not driven by these benchmarks yet: where compose is
found they say so instead of printing a figure, and where it is not they say it is skipped.
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
