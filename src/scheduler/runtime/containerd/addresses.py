"""Where containerd listens and whether it will do: socket paths, version and name checks."""

from __future__ import annotations

import os
import re
import stat

from scheduler.errors import FailedPrecondition, InvalidArgument, Unavailable

MIN_VERSION = (1, 6)
"""Oldest containerd whose API matches our protos."""
_NAME = re.compile(r"^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$")


def socket_path(address: str) -> str:
    """The absolute socket path of ``/abs/path``, ``unix:///abs/path`` or ``unix:/abs/path``.

    Raises:
        InvalidArgument: the address is empty, relative or of another scheme.
    """
    path = address
    if path.startswith("unix://"):
        path = path[len("unix://") :]
    elif path.startswith("unix:"):
        path = path[len("unix:") :]
    if not path or not path.startswith("/"):
        raise InvalidArgument(
            f"containerd address {address!r} must be an absolute unix socket path", field="containerd.socket"
        )
    return os.path.normpath(path)


def check_socket(path: str) -> None:
    """Fail early, and clearly, when ``path`` cannot be a usable containerd socket.

    Raises:
        Unavailable: the socket is missing, is not a socket, or may not be opened by this process.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError as err:
        raise Unavailable(
            f"containerd socket {path} does not exist: is containerd running with --address {path}?",
            socket=path,
        ) from err
    except PermissionError as err:
        raise Unavailable(
            f"permission denied reaching containerd socket {path}: run as root or fix its directory mode",
            socket=path,
        ) from err
    if not stat.S_ISSOCK(info.st_mode):
        raise Unavailable(f"containerd socket {path} exists but is not a unix socket", socket=path)
    if not os.access(path, os.R_OK | os.W_OK):
        raise Unavailable(
            f"permission denied opening containerd socket {path}: run as root or add this user to its group",
            socket=path,
        )


def parse_version(text: str) -> tuple[int, int, int]:
    """Parse ``1.6.20~ds1`` or ``v1.7.0-rc.1`` into ``(major, minor, patch)``.

    Raises:
        FailedPrecondition: the text has no recognisable version number.
    """
    match = re.match(r"^v?(\d+)\.(\d+)(?:\.(\d+))?", text.strip())
    if not match:
        raise FailedPrecondition(f"containerd reported an unparsable version {text!r}")
    return int(match[1]), int(match[2]), int(match[3] or 0)


def check_version(text: str) -> None:
    """Refuse a containerd older than ``MIN_VERSION``.

    Raises:
        FailedPrecondition: naming the version found and the one required.
    """
    if parse_version(text)[:2] < MIN_VERSION:
        need = ".".join(map(str, MIN_VERSION))
        raise FailedPrecondition(f"containerd {text} is too old: the scheduler needs containerd {need} or newer")


def check_name(value: str, field: str) -> str:
    """Validate a containerd identifier (container, exec, lease, snapshot key).

    Raises:
        InvalidArgument: naming ``field``.
    """
    if not value or len(value) > 76 or not _NAME.match(value):
        raise InvalidArgument(
            f"{field} {value!r} must be 1-76 letters and digits, separated by single '.', '_' or '-'",
            field=field,
        )
    return value
