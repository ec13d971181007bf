"""What a daemon start loads: neither OpenSSL, tarfile, importlib.metadata nor, on a single host, etcd's client."""

from __future__ import annotations

import hashlib
import subprocess
import sys

from scheduler import openssl

# The imports of ``scheduler run`` up to serving, in a fresh interpreter (this one has them all).
START = """
import sys
import scheduler.cli
from scheduler import openssl
with openssl.deferred():
    from scheduler import daemon
print(" ".join(sorted(sys.modules)))
with open("/proc/self/maps") as maps:
    print("libcrypto" in maps.read())
"""


def _start_imports() -> tuple[set[str], bool]:
    run = subprocess.run([sys.executable, "-c", START], capture_output=True, text=True, timeout=60, check=True)
    modules, libcrypto = run.stdout.splitlines()
    return set(modules.split()), libcrypto == "True"


def test_a_daemon_start_loads_neither_openssl_nor_etcd() -> None:
    modules, libcrypto = _start_imports()
    assert "scheduler.daemon" in modules and "asyncio" in modules
    assert not {"ssl", "_ssl", "_hashlib"} & modules
    assert not libcrypto
    assert not [m for m in modules if m.startswith(("scheduler.storage.etcd", "scheduler.cluster.member"))]


def test_a_daemon_start_loads_neither_importlib_metadata_nor_tarfile() -> None:
    # importlib.metadata came with pydantic's plugin loader (see scheduler.pydantic_plugins);
    # tarfile is for backups and image archives only.
    modules, _ = _start_imports()
    assert "pydantic_core" in modules and "scheduler.orchestrator.backup" in modules
    assert not {"importlib.metadata", "email", "zipfile", "tarfile"} & modules


def test_hasher_is_openssl_and_agrees_with_the_standard_library() -> None:
    data = b"layer" * 1000
    for algorithm in ("sha256", "sha512"):
        made = openssl.hasher(algorithm, data)
        assert type(made).__module__ == "_hashlib"
        assert made.hexdigest() == hashlib.new(algorithm, data).hexdigest()
    streamed = openssl.hasher("sha256")
    streamed.update(data)
    assert streamed.hexdigest() == hashlib.sha256(data).hexdigest()
