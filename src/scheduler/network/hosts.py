"""The ``/etc/hosts`` and ``/etc/resolv.conf`` files given to every container.

The files are bind-mounted into containers, so they are rewritten in place: a rename would
swap the inode and the container would keep reading the old file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path


def render_hosts(own_ip: str, hostname: str, services: Mapping[str, str], members: Sequence[tuple[str, str]]) -> str:
    """A hosts file: localhost, the container itself, service VIPs, then every member's names.

    Args:
        own_ip: the container's address.
        hostname: the container's host name.
        services: service name -> VIP.
        members: (name, ip) of every attached container of the environment, replicas included.
    """
    lines = [
        "# written by the scheduler; rewritten when the environment changes",
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        f"{own_ip}\t{hostname}",
    ]
    for name, vip in sorted(services.items()):
        lines.append(f"{vip}\t{name}")
    seen = {hostname, *services}
    for name, ip in sorted(members, key=lambda m: m[0]):
        if name in seen:
            continue
        seen.add(name)
        lines.append(f"{ip}\t{name}")
    return "\n".join(lines) + "\n"


def host_nameservers(path: Path = Path("/etc/resolv.conf")) -> list[str]:
    """The host's nameservers that a container can reach (loopback ones cannot be)."""
    try:
        text = path.read_text()
    except OSError:
        return []
    servers = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            if fields[1].startswith("127.") or fields[1] == "::1":
                continue
            servers.append(fields[1])
    return servers


def render_resolv(nameservers: Iterable[str]) -> str:
    """resolv.conf with the given nameservers and no search domains.

    Service names resolve from /etc/hosts; with no search list a short name never leaks to
    the host's DNS as ``name.corp.example``.
    """
    lines = ["# written by the scheduler: service names resolve from /etc/hosts"]
    lines += [f"nameserver {s}" for s in nameservers]
    return "\n".join(lines) + "\n"


def write_in_place(path: Path, content: str) -> None:
    """Replace the file's content keeping its inode (bind mounts follow the inode)."""
    data = content.encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        # Write first, then cut: a concurrent reader never sees an empty file.
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)
