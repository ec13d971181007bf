"""Host interfaces: the environment bridges, their ports (veths) and per-interface sysctls.

Links are made, listed and removed over netlink with pyroute2 rather than by running ``ip``:
``bench/network.py`` measured ensure_environment (a bridge created and brought up) at a median
of 43-82 ms against 140-175 ms with ``ip`` subprocesses (two and three runs on 2 shared cores); the
attach of a container does not touch this module (it goes through the CNI plugins) and stayed
at 105-166 ms either way. Network namespaces stay on ctypes (see :mod:`.netns`).

pyroute2 (about 190 modules, 9 MB) is imported by the first call that needs netlink: whether a
bridge exists and is up is one ``SIOCGIFFLAGS`` ioctl, so a daemon restarted with its bridges in
place, or started with no environment, never loads it.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import socket
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from scheduler.errors import Internal

T = TypeVar("T")
PROC_SYS = Path("/proc/sys/net")
_SIOCGIFFLAGS = 0x8913
_IFF_UP = 0x1
# Interfaces are read over netlink (socket.if_nameindex, pyroute2), never from /sys/class/net:
# sysfs shows the namespace it was mounted in, which is not ours when the daemon was started with
# only its network namespace changed (nsenter --net, a container runtime's netns), and would then
# hide our bridges from teardown.


async def _links(**match: object) -> list[str]:
    """Names of the interfaces matching ``match`` (``kind``, ``master`` index), over netlink."""
    from pyroute2 import AsyncIPRoute

    found = []
    async with AsyncIPRoute() as ipr:
        async for link in await ipr.link("dump"):
            kind = link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
            if "kind" in match and kind != match["kind"]:
                continue
            if "master" in match and link.get("master") != match["master"]:
                continue
            found.append(str(link.get("ifname")))
    return sorted(found)


def exists(name: str) -> bool:
    """Whether an interface of that name exists in our network namespace."""
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


def is_up(name: str) -> bool:
    """Whether the interface exists in our network namespace and is administratively up."""
    request = struct.pack("16sH", name.encode()[:15], 0)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            reply = fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, request)
    except OSError:
        return False  # ENODEV: no such interface
    return bool(struct.unpack("16sH", reply[:18])[1] & _IFF_UP)


def names(prefix: str) -> list[str]:
    """Interfaces whose name starts with ``prefix`` (of any kind), without netlink."""
    return sorted(name for _, name in socket.if_nameindex() if name.startswith(prefix))


async def bridges(prefix: str) -> list[str]:
    """Bridges whose name starts with ``prefix``."""
    if not names(prefix):
        return []
    return [name for name in await _links(kind="bridge") if name.startswith(prefix)]


async def bridge_ports(bridge: str) -> list[str]:
    """Interfaces (the host ends of veths) enslaved to ``bridge``."""
    try:
        index = socket.if_nametoindex(bridge)
    except OSError:
        return []  # no such bridge (or removed in between)
    return await _links(master=index)


def set_sysctl(key: Sequence[str], value: str) -> None:
    """Write ``/proc/sys/net/<key...>``."""
    try:
        (PROC_SYS.joinpath(*key)).write_text(value)
    except OSError as err:
        raise Internal(f"cannot set net.{'.'.join(key)}={value}: {err}") from err


def get_sysctl(key: Sequence[str]) -> str:
    """Read ``/proc/sys/net/<key...>``; empty when absent."""
    try:
        return PROC_SYS.joinpath(*key).read_text().strip()
    except OSError:
        return ""


async def ensure_bridge(name: str) -> None:
    """Create the bridge (up, with route_localnet so DNATed 127.0.0.1 traffic may leave on it).

    iptables.py drops what a container sends to 127.0.0.0/8 before routing could accept it.
    The CNI bridge plugin adopts an existing bridge of the same name and adds the gateway
    address on the first ADD.

    Runs in a thread: the kernel answers a link change, and a write of an interface's sysctl,
    only once it holds the RTNL lock, which every CNI plugin and veth of a busy host contends
    for; profiled with 200 deploys at once on 2 cores, the netlink sends alone (made on the event
    loop) took 11 s of its time, and the sysctl writes 2 s.
    """
    await ensure_bridges([name])


async def ensure_bridges(names: Sequence[str]) -> None:
    """:func:`ensure_bridge` for each of ``names``, in one thread (a start with hundreds of them)."""
    if names:
        await _finished(_ensure_bridges, list(names))


def _ensure_bridges(names: list[str]) -> None:
    for name in names:
        if not is_up(name):
            _create_up(name)
        # Written only when different: a restart finds them set already.
        _ensure_sysctl(("ipv4", "conf", name, "route_localnet"), "1")
        # Environments are IPv4 only, and the host's iptables fences are IPv4 rules: with IPv6 on
        # the bridge, a container would reach host services listening on [::] through the bridge's
        # link-local address. Without it, the host's IPv6 stack drops whatever arrives on the bridge.
        if PROC_SYS.joinpath("ipv6", "conf", name).exists():
            _ensure_sysctl(("ipv6", "conf", name, "disable_ipv6"), "1")


def _ensure_sysctl(key: Sequence[str], value: str) -> None:
    if get_sysctl(key) != value:
        set_sysctl(key, value)


def _create_up(name: str) -> None:
    """Create the bridge unless it exists, and bring it up."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        if not exists(name):
            try:
                ipr.link("add", ifname=name, kind="bridge")
            except NetlinkError as err:
                if err.code != errno.EEXIST:
                    raise Internal(f"cannot create bridge {name}: {err}") from err
        try:
            ipr.link("set", ifname=name, state="up")
        except NetlinkError as err:
            raise Internal(f"cannot bring bridge {name} up: {err}") from err


async def delete_link(name: str) -> None:
    """Delete an interface; a missing one is fine (in a thread, as :func:`ensure_bridge`)."""
    if exists(name):
        await _finished(_delete_link, name)


async def _finished(change: Callable[[T], None], arg: T) -> None:
    """Run ``change`` in a thread; a cancelled caller still waits for it, so no link changes after it returned."""
    work = asyncio.ensure_future(asyncio.to_thread(change, arg))
    cancelled = False
    while not work.done():
        try:
            await asyncio.shield(work)
        except asyncio.CancelledError:
            cancelled = True  # the thread cannot be stopped: it ends by itself (one netlink request)
    if cancelled:
        raise asyncio.CancelledError
    work.result()


def _delete_link(name: str) -> None:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        try:
            ipr.link("del", ifname=name)
        except NetlinkError as err:
            if err.code != errno.ENODEV:
                raise Internal(f"cannot delete interface {name}: {err}") from err
