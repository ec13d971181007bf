"""The systemd unit passes ``systemd-analyze verify``, and the daemon speaks sd_notify on a real socket."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import VENV_BIN

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "ops/systemd/scheduler.service"
INSTALLED = "/opt/scheduler/current/bin/scheduler"


def directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)


def test_the_unit_file_verifies_and_keeps_containers_across_restarts(tmp_path: Path) -> None:
    text = UNIT.read_text()
    assert INSTALLED in text
    found = directives(text)
    assert found["Type"] == ["notify"] and found["KillMode"] == ["process"], found
    assert found["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert int(found["LimitNOFILE"][0]) >= 65536
    assert found["StateDirectory"] == ["scheduler"] and found["RuntimeDirectory"] == ["scheduler"]
    assert "WatchdogSec" in found and found["Delegate"] == ["yes"]
    # The unit as installed, except where this checkout's binary lives (verify checks it exists).
    unit = tmp_path / "scheduler.service"
    unit.write_text(text.replace(INSTALLED, str(VENV_BIN / "scheduler")))
    checked = verify(unit)
    # verify exits 0 on directives it ignores: any output at all is a defect.
    assert checked.returncode == 0 and not (checked.stdout + checked.stderr).strip(), checked

    broken = tmp_path / "broken" / "scheduler.service"
    broken.parent.mkdir()
    broken.write_text(unit.read_text().replace("KillMode=process", "KillMode=gently"))
    refused = verify(broken)
    assert "kill mode" in refused.stderr, refused


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A unix datagram socket standing in for systemd's (a short path: sun_path holds 108 bytes)."""
    directory = tempfile.mkdtemp(prefix="sdn", dir="/tmp")
    path = f"{directory}/notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.5)
    try:
        yield sock, path
    finally:
        sock.close()
        shutil.rmtree(directory, ignore_errors=True)


def receive_until(sock: socket.socket, wanted: str, timeout: float = 60) -> list[dict[str, str]]:
    """Messages received until one carries ``wanted`` (``KEY=VALUE``); bounded by ``timeout``."""
    messages: list[dict[str, str]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = sock.recv(4096).decode()
        except TimeoutError:
            continue
        message = dict(line.split("=", 1) for line in data.splitlines() if "=" in line)
        messages.append(message)
        key, _, value = wanted.partition("=")
        if message.get(key) == value:
            return messages
    raise AssertionError(f"no {wanted} within {timeout}s; got {messages}")


def test_the_daemon_notifies_ready_watchdog_reloading_and_stopping(
    daemon_factory: Any, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, path = notify_socket
    daemon = daemon_factory(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"}, wait=False)
    ready = receive_until(sock, "READY=1")[-1]
    assert ready["MAINPID"] == str(daemon.process.pid), ready
    assert ready["STATUS"].startswith("serving on "), ready
    # Pings every half watchdog period while the loop turns: at least two more arrive.
    pings = 0
    while pings < 2:
        pings += sum(m.get("WATCHDOG") == "1" for m in receive_until(sock, "WATCHDOG=1", timeout=10))

    daemon.process.send_signal(signal.SIGHUP)
    reloading = receive_until(sock, "RELOADING=1", timeout=30)[-1]
    assert int(reloading["MONOTONIC_USEC"]) > 0
    again = receive_until(sock, "READY=1", timeout=30)[-1]
    assert "last reload: applied" in again["STATUS"], again

    daemon.process.send_signal(signal.SIGTERM)
    receive_until(sock, "STOPPING=1", timeout=30)
    assert daemon.process.wait(60) == 0
