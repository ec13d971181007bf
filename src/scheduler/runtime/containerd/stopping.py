"""Whether a container's init process got its stop signal, read from ``/proc/<pid>``.

A container's first process is the init of its pid namespace: the kernel drops every signal that
process has no handler for (SIGKILL aside). One signalled while it starts, before it installs its
handler, ignores its stop signal and would use its whole grace; so would one signalled while it
is still ``runc init`` (whose Go runtime catches the signal) just before it execs the image's
program. The stop sends the signal again (:data:`FIRST_RESEND`) until it was sent while the
process caught it and the process still runs that program, so that one which handles it never
receives it twice (Docker answers this with an init process, ``--init``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

FIRST_RESEND = 0.5
"""Seconds after the first stop signal at which it is sent again, then at twice that, four times
that... until the grace ends, while it may have been dropped."""


@dataclass(frozen=True)
class Receiver:
    """What a signal sent now would reach: the program the process runs, and whether it catches the signal."""

    program: str
    catches: bool

    def got(self, now: Receiver) -> bool:
        """Whether a signal sent when the process was ``self`` reached a handler, the process being ``now``."""
        return self.catches and self.program == now.program


def receiver(pid: int | None, number: int, proc: Path = Path("/proc")) -> Receiver:
    """Process ``pid`` as signal ``number`` would find it (catching nothing when it cannot be read)."""
    if pid is None:
        return Receiver("", catches=False)
    try:
        program = os.readlink(proc / str(pid) / "exe")
    except OSError:
        program = ""
    return Receiver(program, catches=catches(pid, number, proc))


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
