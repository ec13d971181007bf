"""Reading whether a process catches a signal from its ``/proc/<pid>/status``."""

from __future__ import annotations

import signal
from pathlib import Path

from scheduler.runtime.containerd.stopping import catches


def _status(proc: Path, pid: int, caught: str) -> None:
    (proc / str(pid)).mkdir(parents=True)
    (proc / str(pid) / "status").write_text(f"Name:\tsh\nSigIgn:\t0000000000000004\nSigCgt:\t{caught}\n")


def test_a_signal_is_caught_when_its_bit_is_set(tmp_path: Path) -> None:
    _status(tmp_path, 7, "0000000000004002")  # SIGINT (2) and SIGTERM (15)
    assert catches(7, signal.SIGTERM, tmp_path)
    assert catches(7, signal.SIGINT, tmp_path)
    assert not catches(7, signal.SIGQUIT, tmp_path)  # ignored (SigIgn), not caught


def test_a_process_that_cannot_be_read_catches_nothing(tmp_path: Path) -> None:
    assert not catches(8, signal.SIGTERM, tmp_path)
    _status(tmp_path, 9, "garbage")
    assert not catches(9, signal.SIGTERM, tmp_path)
