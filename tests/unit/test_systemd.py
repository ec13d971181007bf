"""sd_notify messages on an abstract-namespace socket, and the watchdog period from the environment."""

from __future__ import annotations

import os
import secrets
import socket

from scheduler.systemd import Notifier


def test_messages_reach_an_abstract_socket_and_nothing_is_sent_without_one() -> None:
    name = "sched-test-" + secrets.token_hex(4)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "30000000"})
        assert notifier.enabled and notifier.watchdog_seconds == 30.0
        assert notifier.ready("serving on x")
        assert sock.recv(1024).decode().splitlines() == ["READY=1", "STATUS=serving on x", f"MAINPID={os.getpid()}"]
        assert notifier.stopping()
        assert sock.recv(1024).decode().startswith("STOPPING=1")
    assert not Notifier({}).ready("x") and not Notifier({}).enabled


def test_the_watchdog_is_off_unless_meant_for_this_process() -> None:
    assert Notifier({"WATCHDOG_USEC": "0"}).watchdog_seconds is None
    assert Notifier({"WATCHDOG_USEC": "5000000", "WATCHDOG_PID": "1"}).watchdog_seconds is None
    assert Notifier({"WATCHDOG_USEC": "5000000", "WATCHDOG_PID": str(os.getpid())}).watchdog_seconds == 5.0
