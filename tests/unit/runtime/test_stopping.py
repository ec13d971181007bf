"""Reading whether a process catches a signal, and which program it runs, from ``/proc/<pid>``."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from scheduler.runtime.containerd.stopping import Receiver, catches, receiver


def _status(proc: Path, pid: int, caught: str, program: str = "/bin/busybox") -> None:
    (proc / str(pid)).mkdir(parents=True)
    (proc / str(pid) / "status").write_text(f"Name:\tsh\nSigIgn:\t0000000000000004\nSigCgt:\t{caught}\n")
    os.symlink(program, proc / str(pid) / "exe")


def test_a_signal_is_caught_when_its_bit_is_set(tmp_path: Path) -> None:
    _status(tmp_path, 7, "0000000000004002")  # SIGINT (2) and SIGTERM (15)
    assert catches(7, signal.SIGTERM, tmp_path)
    assert catches(7, signal.SIGINT, tmp_path)
    assert not catches(7, signal.SIGQUIT, tmp_path)  # ignored (SigIgn), not caught
    assert receiver(7, signal.SIGTERM, tmp_path) == Receiver("/bin/busybox", catches=True)


def test_a_process_that_cannot_be_read_catches_nothing(tmp_path: Path) -> None:
    assert not catches(8, signal.SIGTERM, tmp_path)
    assert receiver(8, signal.SIGTERM, tmp_path) == Receiver("", catches=False)
    assert receiver(None, signal.SIGTERM, tmp_path) == Receiver("", catches=False)
    _status(tmp_path, 9, "garbage")
    assert not catches(9, signal.SIGTERM, tmp_path)


def test_a_signal_got_a_handler_only_if_caught_by_the_program_still_running() -> None:
    runc_init = Receiver("/memfd:runc_cloned:/proc/self/exe (deleted)", catches=True)
    starting = Receiver("/bin/busybox", catches=False)
    trapping = Receiver("/bin/busybox", catches=True)
    assert not runc_init.got(starting)  # caught by runc init, which then exec'd the program
    assert not starting.got(trapping)  # dropped: the handler came after
    assert trapping.got(trapping)
