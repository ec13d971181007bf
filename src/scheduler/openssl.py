"""OpenSSL (libssl, libcrypto) is loaded when something uses it, not at every daemon start.

asyncio imports ``ssl`` and hashlib ``_hashlib`` as they load, and both bring OpenSSL: about
4.5 MB of an idle daemon's RSS, for TLS its asyncio code never speaks (gRPC carries its own, and
the registry client's ``ssl`` comes with it at its first connection) and for hashes the standard
library also implements. :func:`deferred` hides both while the daemon's modules load: asyncio
goes without TLS of its own, hashlib with its built-in hashes. :func:`hasher` gives the code
that hashes image layers and backups OpenSSL's (about 3.5 times as fast), loading it then.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import hashlib  # imported here, before deferred(), it would load OpenSSL

_DEFERRED = ("ssl", "_hashlib")


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Modules imported inside do without ``ssl`` and ``_hashlib``; both import as usual after."""
    hidden = [name for name in _DEFERRED if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


def hasher(algorithm: str, data: bytes = b"") -> hashlib._Hash:
    """A hash object of ``algorithm`` (``sha256``...) from OpenSSL, else from the standard library.

    Raises:
        ValueError: an algorithm neither knows.
    """
    try:
        import _hashlib
    except ImportError:
        import hashlib

        return hashlib.new(algorithm, data)
    return _hashlib.new(algorithm, data)
