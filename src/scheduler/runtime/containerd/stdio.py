"""Where task output goes: the log writer program the shim starts for each task, and a bounded ring for exec output."""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import sys
import uuid
from collections.abc import Mapping
from urllib.parse import quote, urlencode

from scheduler.runtime import logger
from scheduler.runtime.containerd import labels as L

EXEC_OUTPUT_LIMIT = 64 * 1024
"""Bytes of an exec's output kept (the tail of each stream); the rest is read and dropped."""


def prepare_logs(launcher: str, labels: Mapping[str, str]) -> tuple[str, str]:
    """The stdio URIs of a task: its log writer with the container's directory and rotation."""
    log_dir = labels.get(L.LOG_DIR, "")
    if not log_dir:
        return "", ""
    os.makedirs(log_dir, exist_ok=True)
    install_logger(launcher)
    query = urlencode(
        {
            "dir": log_dir,
            "max-bytes": labels.get(L.LOG_MAX_BYTES, str(logger.DEFAULT_MAX_BYTES)),
            "max-files": labels.get(L.LOG_MAX_FILES, str(logger.DEFAULT_MAX_FILES)),
        }
    )
    # The shim reads stdout's URI only; stderr gets the same one for clarity.
    uri = f"binary://{quote(launcher)}?{query}"
    return uri, uri


def install_logger(path: str) -> None:
    """Write the log writer's executable: shell lines running this interpreter (``-IS``) on a zip of the logger.

    The shim starts it without PATH or any other environment, so the interpreter is named in full.
    A copy (not a link into the package) keeps running tasks' writers independent of upgrades;
    it is replaced atomically, and only when its content changes.
    """
    handover = os.path.join(os.path.dirname(path), logger.HANDOVER)
    built = _built_handover()
    content = _logger_archive(handover if built else "")
    try:
        with open(path, "rb") as handle:
            if handle.read() == content:
                content = b""
    except FileNotFoundError:
        pass
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if built:
        _install_handover(built, handover)
    if content:
        temporary = f"{path}.{uuid.uuid4().hex[:8]}"
        with open(temporary, "wb") as handle:
            handle.write(content)
            os.fchmod(handle.fileno(), 0o755)
        os.replace(temporary, path)


def _built_handover() -> str:
    """The compiled hand-over ``make install`` built beside this interpreter, or "" (the Python path then)."""
    built = os.path.join(os.path.dirname(sys.executable), logger.HANDOVER)
    return built if os.access(built, os.X_OK) else ""


def _install_handover(built: str, path: str) -> None:
    """Copy the compiled hand-over to ``path`` when it differs (same size and time: unchanged)."""
    source = os.stat(built)
    try:
        current = os.stat(path)
        if (current.st_size, current.st_mtime_ns) == (source.st_size, source.st_mtime_ns):
            return
    except FileNotFoundError:
        pass
    temporary = f"{path}.{uuid.uuid4().hex[:8]}"
    shutil.copy2(built, temporary)
    os.replace(temporary, path)


@functools.cache
def _logger_archive(handover: str) -> bytes:
    """The logger package as a zip application, compiled (no source: nothing to compile at each start)."""
    import importlib.util
    import io
    import marshal
    import zipfile

    package = os.path.dirname(logger.__file__)
    buffer = io.BytesIO()
    buffer.write(logger.launcher(sys.executable, handover))
    sources = {f"scheduler_logger/{n}": os.path.join(package, n) for n in os.listdir(package) if n.endswith(".py")}
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, path in sorted(sources.items()):
            with open(path, "rb") as source:
                code = compile(source.read(), name, "exec", dont_inherit=True, optimize=0)
            # A sourceless .pyc: magic, flags (0), then a zero mtime and size that nothing checks.
            pyc = importlib.util.MAGIC_NUMBER + bytes(12) + marshal.dumps(code)
            # Fixed times: the same sources give the same bytes, so nothing is rewritten.
            archive.writestr(zipfile.ZipInfo(name + "c", (1980, 1, 1, 0, 0, 0)), pyc)
        main = b"import os, sys\nfrom scheduler_logger.host import main\n"
        main += b"sys.exit(main(sys.argv[1:], os.path.abspath(sys.argv[0])))\n"
        archive.writestr(zipfile.ZipInfo("__main__.py", (1980, 1, 1, 0, 0, 0)), main)
    return buffer.getvalue()


class OutputRing:
    """A FIFO the shim writes one exec stream into, read as data comes; keeps the last bytes only.

    Opened read-write so it never reports end-of-file while the shim has not opened it yet;
    :meth:`close` drains what is left and returns the kept tail.
    """

    def __init__(self, path: str, limit: int = EXEC_OUTPUT_LIMIT) -> None:
        self.path = path
        self._limit = limit
        self._kept = bytearray()
        os.mkfifo(path, 0o600)
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self._read, 1)

    def _read(self, chunks: int) -> None:
        # One chunk per wake-up while the command runs, so a fast writer cannot starve the loop.
        for _ in range(chunks):
            if self._fd is None:
                return
            try:
                chunk = os.read(self._fd, 1 << 16)
            except (BlockingIOError, InterruptedError):
                return
            if not chunk:
                return
            self._kept += chunk
            if len(self._kept) > self._limit:
                del self._kept[: len(self._kept) - self._limit]

    def close(self) -> bytes:
        """Stop reading (after taking what is buffered) and return the kept tail; idempotent."""
        if self._fd is not None:
            self._read(1 << 20)
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None
        return bytes(self._kept)
