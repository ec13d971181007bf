"""A containerd the scheduler runs itself when no socket is configured.

It gets its own config, root, state and socket under ``<data_dir>/containerd/`` so it never touches
a system containerd (whose /etc/containerd/config.toml would enable CRI and shared dirs). The child
runs in its own session: if the scheduler crashes, containerd and the containers survive, and the
next start adopts that containerd (found through the pid file) instead of starting a second one.
Stopping it leaves the containers running under their shims.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from scheduler import log
from scheduler.errors import InvalidArgument, SchedulerError, Unavailable
from scheduler.systemd import SERVICE_MANAGER_VARIABLES

_logger = log.get("containerd.managed")
_MAX_SOCKET_PATH = 107


def render_config(base: Path) -> str:
    """The config.toml of a managed containerd living under ``base``."""

    def q(path: Path) -> str:
        return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'

    return (
        "version = 2\n"
        f"root = {q(base / 'root')}\n"
        f"state = {q(base / 'state')}\n"
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        "\n[grpc]\n"
        f"  address = {q(base / 'containerd.sock')}\n"
        "\n[ttrpc]\n"
        f"  address = {q(base / 'containerd.sock.ttrpc')}\n"
        '\n[plugins."io.containerd.internal.v1.opt"]\n'
        f"  path = {q(base / 'opt')}\n"
    )


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie is dead: PID 1 here may never reap it)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            state = handle.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return [part.decode(errors="replace") for part in handle.read().split(b"\0") if part]
    except OSError:
        return []


class ManagedContainerd:
    """Start, adopt and stop a private containerd under ``base_dir``."""

    def __init__(self, base_dir: Path, *, binary: str = "containerd", start_timeout: float = 15.0) -> None:
        self.base_dir = Path(base_dir).absolute()
        self.binary = binary
        self.start_timeout = start_timeout
        self.config_path = self.base_dir / "config.toml"
        self.socket = self.base_dir / "containerd.sock"
        self.pid_file = self.base_dir / "containerd.pid"
        self.log_path = self.base_dir / "containerd.log"
        self.pid: int | None = None
        self.adopted = False
        self._process: subprocess.Popen[bytes] | None = None
        if len(str(self.socket)) > _MAX_SOCKET_PATH:
            raise InvalidArgument(
                f"containerd socket path {self.socket} is longer than {_MAX_SOCKET_PATH} bytes: use a shorter data_dir",
                field="data_dir",
            )

    def launch(self) -> None:
        """Take the containerd of a previous run if it still runs, else start one; do not wait for it.

        Synchronous and without gRPC, so that the daemon can call it first and let containerd
        start while it loads everything else; :meth:`start` then waits for it to serve.

        Raises:
            Unavailable: the binary cannot be run.
        """
        if self.pid is not None:
            return
        pid = self._recorded_pid()
        if pid is not None and _alive(pid) and str(self.config_path) in _cmdline(pid):
            self.pid, self.adopted = pid, True
            return
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()
        self._prepare_dirs()
        with open(self.log_path, "ab") as log_handle:
            try:
                self._process = subprocess.Popen(
                    [self.binary, "--config", str(self.config_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=log_handle,
                    stderr=log_handle,
                    start_new_session=True,
                    env=_child_environment(),
                )
            except OSError as err:
                raise Unavailable(f"cannot run containerd binary {self.binary!r}: {err}") from err
        self.pid, self.adopted = self._process.pid, False
        self.pid_file.write_text(f"{self.pid}\n")

    async def start(self) -> Path:
        """Adopt the containerd of a previous run if it still serves, else start one; return the socket.

        Raises:
            Unavailable: containerd exited or did not serve within ``start_timeout`` (its log tail is quoted).
        """
        self.launch()
        if self.adopted:
            try:
                await self._wait_serving()
            except Unavailable:
                _logger.warning("managed containerd from a previous run does not serve; replacing it", pid=self.pid)
                await self.stop()
                self.launch()
            else:
                _logger.info("adopted managed containerd", pid=self.pid, socket=str(self.socket))
                return self.socket
        try:
            await self._wait_serving()
        except BaseException:
            await self.stop()
            raise
        _logger.info("managed containerd started", pid=self.pid, socket=str(self.socket))
        return self.socket

    async def stop(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109 - a plain bound
        """SIGTERM containerd and wait for it (SIGKILL after ``timeout``); containers keep running."""
        pid = self.pid
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        if not await self._wait_exit(pid, timeout):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            await self._wait_exit(pid, 5.0)
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()
        self.pid = None
        self._process = None
        _logger.info("managed containerd stopped", pid=pid)

    async def _wait_exit(self, pid: int, timeout: float) -> bool:  # noqa: ASYNC109 - a plain bound
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._running_pid(pid):
                return True
            await asyncio.sleep(0.05)
        return not self._running_pid(pid)

    def _running_pid(self, pid: int) -> bool:
        if self._process is not None and self._process.pid == pid:
            return self._process.poll() is None  # reaps our child
        return _alive(pid)

    def _prepare_dirs(self) -> None:
        for sub in ("root", "state", "opt"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        self.base_dir.chmod(0o711)
        self.config_path.write_text(render_config(self.base_dir))

    def _recorded_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    async def _wait_serving(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        last = "no socket yet"
        while time.monotonic() < deadline:
            if self.pid is None or not self._running():
                raise Unavailable(f"managed containerd exited during start-up: {self._log_tail()}")
            if self.socket.exists():
                # Imported here: launch() must not wait for the gRPC stubs to load.
                from scheduler.runtime.containerd.client import ContainerdClient

                try:
                    client = await ContainerdClient.connect(str(self.socket), "default", connect_timeout=1.0)
                except SchedulerError as err:
                    last = err.message
                else:
                    await client.close()
                    return
            await asyncio.sleep(0.05)
        raise Unavailable(
            f"managed containerd did not serve on {self.socket} within {self.start_timeout:g}s"
            f" ({last}): {self._log_tail()}"
        )

    def _running(self) -> bool:
        return self.pid is not None and self._running_pid(self.pid)

    def _log_tail(self, size: int = 2000) -> str:
        try:
            data = self.log_path.read_bytes()[-size:]
        except OSError:
            return "(no log)"
        return data.decode(errors="replace").strip() or "(empty log)"


def _child_environment() -> dict[str, str]:
    """The daemon's environment without what systemd gave the daemon itself.

    containerd speaks sd_notify: handed ``NOTIFY_SOCKET`` it would report READY to systemd on the
    daemon's behalf, and it may be launched before the daemon's notifier reads that variable.
    """
    return {k: v for k, v in os.environ.items() if k not in SERVICE_MANAGER_VARIABLES}
