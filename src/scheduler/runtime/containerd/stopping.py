"""Whether a container's init process catches a signal, read from ``/proc/<pid>/status``.

A container's first process is the init of its pid namespace: the kernel drops every signal that
process has no handler for (SIGKILL aside). One signalled while it starts, before it installs its
handler, ignores its stop signal and would use its whole grace. :data:`FIRST_RESEND` is when the
stop sends the signal again while the process runs and did not catch it, so that one which
handles it never receives it twice (Docker answers this with an init process, ``--init``).
"""

from __future__ import annotations

from pathlib import Path

FIRST_RESEND = 0.5
"""Seconds after the first stop signal at which it is sent again, then at twice that, four times
that... until the grace ends, while the process has not caught it."""


def catches(pid: int, number: int, proc: Path = Path("/proc")) -> bool:
    """Whether process ``pid`` has a handler for signal ``number`` (False when it cannot be told)."""
    try:
        with open(proc / str(pid) / "status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (number - 1) & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False
