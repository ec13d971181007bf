"""At the end of a test session, end every process the session made that is still running (pytest plugin).

Daemons and containerds of tests live under the session's temp dirs; their shims, log writers
and (after a SIGKILL) managed containerds name those dirs on their command lines and outlive a
killed containerd, where containerd's own accounting cannot see them. Whatever a test left,
even one that failed or killed its own containerd, is listed, ended by PID (shims with the
container processes under them), and the mounts under those dirs are removed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from tests.support.processes import descendants, end, processes_naming, unmount_under

_roots: set[Path] = set()


def track(root: Path) -> None:
    """Sweep what runs under ``root`` at the end of the session."""
    _roots.add(root)


@pytest.fixture(scope="session", autouse=True)
def _track_session_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    track(tmp_path_factory.getbasetemp())
    yield


def sweep(roots: Iterable[Path] | None = None) -> dict[int, str]:
    """End every process naming one of ``roots`` (default: every tracked one) and what runs under it.

    Returns the processes found naming a root. Only for the end of a session (or roots of one's
    own): the session's containerd and daemons name tracked roots too.
    """
    chosen = sorted(_roots if roots is None else roots)
    leftovers: dict[int, str] = {}
    for root in chosen:
        leftovers |= processes_naming(str(root) + "/")
    victims = set(leftovers)
    for pid in leftovers:
        victims |= set(descendants(pid))
    end(victims)
    for root in chosen:
        unmount_under(root)
    return leftovers


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    leftovers = sweep()
    if leftovers:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        lines = "\n".join(f"  {pid}: {line[:200]}" for pid, line in sorted(leftovers.items()))
        message = f"session cleanup ended {len(leftovers)} leftover process(es):\n{lines}"
        if reporter is not None:
            reporter.write_line(message, yellow=True)
