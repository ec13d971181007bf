"""OCI runtime spec for a container, built from ordered option functions (containerd's ``oci.SpecOpts``).

``default_spec`` mirrors containerd's default Linux spec (``oci.WithDefaultSpec`` plus the default
devices); each ``with_*`` returns a ``SpecOpt`` that edits the spec in place. Order matters where
stated: ``with_image_config`` first, then the container's overrides, so the overrides win.
``build_spec`` composes them for a ``domain.ContainerConfig``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from typing import Any

from scheduler import domain
from scheduler.errors import InvalidArgument
from scheduler.runtime.containerd import seccomp
from scheduler.runtime.containerd.process_spec import (
    DEFAULT_PATH,
    ResolvedUser,
    Spec,
    SpecOpt,
    compose,
    merge_env,
    resolve_args,
    resolve_user,
    with_args,
    with_cwd,
    with_env,
    with_image_config,
    with_user,
)

# The process options live in process_spec; they are part of this module's interface as before.
__all__ = [
    "DEFAULT_PATH",
    "ResolvedUser",
    "Spec",
    "SpecOpt",
    "build_spec",
    "compose",
    "default_spec",
    "exec_process",
    "merge_env",
    "resolve_args",
    "resolve_user",
    "with_args",
    "with_cwd",
    "with_env",
    "with_image_config",
    "with_user",
]

CPU_PERIOD_US = 100_000
"""CFS period; a quota of ``cpu_millis * 100`` µs per period gives ``cpu_millis/1000`` cores."""
SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
PROCESS_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Process"

DEFAULT_CAPABILITIES = domain.DEFAULT_CAPABILITIES
ALL_CAPABILITIES = domain.ALL_CAPABILITIES
capability_name = domain.capability_name

# (type, major, minor) of the devices every container may use: null, zero, full, tty, random,
# urandom, console, ptmx, and the pty slaves.
_ALLOWED_DEVICES = [
    ("c", 1, 3),
    ("c", 1, 8),
    ("c", 1, 7),
    ("c", 5, 0),
    ("c", 1, 5),
    ("c", 1, 9),
    ("c", 5, 1),
    ("c", 136, None),
    ("c", 5, 2),
]


def default_spec(namespace: str, container_id: str) -> Spec:
    """The default Linux spec of containerd, narrowed: 10 capabilities, standard mounts, fresh namespaces.

    The seccomp profile is added by ``with_security`` (it depends on the final capabilities).
    """
    return {
        "ociVersion": "1.0.2-dev",
        "root": {"path": "rootfs"},
        "process": {
            "user": {"uid": 0, "gid": 0},
            "args": [],
            "env": [DEFAULT_PATH],
            "cwd": "/",
            "capabilities": {
                "bounding": list(DEFAULT_CAPABILITIES),
                "effective": list(DEFAULT_CAPABILITIES),
                "permitted": list(DEFAULT_CAPABILITIES),
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "mounts": [
            {
                "destination": "/proc",
                "type": "proc",
                "source": "proc",
                "options": ["nosuid", "noexec", "nodev"],
            },
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            {
                "destination": "/dev/pts",
                "type": "devpts",
                "source": "devpts",
                "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
            },
            {
                "destination": "/dev/shm",
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            },
            {
                "destination": "/dev/mqueue",
                "type": "mqueue",
                "source": "mqueue",
                "options": ["nosuid", "noexec", "nodev"],
            },
            {
                "destination": "/sys",
                "type": "sysfs",
                "source": "sysfs",
                "options": ["nosuid", "noexec", "nodev", "ro"],
            },
            {
                "destination": "/run",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
        ],
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")],
            "cgroupsPath": f"/{namespace}/{container_id}",
            "maskedPaths": [
                "/proc/acpi",
                "/proc/asound",
                "/proc/kcore",
                "/proc/keys",
                "/proc/latency_stats",
                "/proc/timer_list",
                "/proc/timer_stats",
                "/proc/sched_debug",
                "/sys/firmware",
                "/proc/scsi",
                "/sys/devices/virtual/powercap",
            ],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
            "resources": {
                "devices": [{"allow": False, "access": "rwm"}]
                + [
                    {"allow": True, "type": kind, "major": major, "minor": minor, "access": "rwm"}
                    if minor is not None
                    else {"allow": True, "type": kind, "major": major, "access": "rwm"}
                    for kind, major, minor in _ALLOWED_DEVICES
                ]
            },
        },
    }


# ---------------------------------------------------------------------------------------------
# Container options
# ---------------------------------------------------------------------------------------------


def with_hostname(hostname: str) -> SpecOpt:
    """Set the UTS hostname; empty keeps the runtime's (the container id)."""

    def apply(spec: Spec) -> None:
        if hostname:
            spec["hostname"] = hostname

    return apply


BIND_HARDENING = ("nosuid", "nodev")
"""Added to every bind mount: a file a container makes setuid (or a device node) in a volume
means nothing, inside the container or out."""


def with_mounts(mounts: Sequence[domain.Mount]) -> SpecOpt:
    """Append mounts; one on the same destination as a default mount replaces it.

    Bind mounts always get ``nosuid,nodev`` (``BIND_HARDENING``).
    """
    for i, m in enumerate(mounts):
        if not m.destination.startswith("/"):
            raise InvalidArgument(
                f"mount destination {m.destination!r} must be an absolute path",
                field=f"mounts[{i}].destination",
            )
        if m.type == "bind" and not m.source.startswith("/"):
            raise InvalidArgument(
                f"bind mount source {m.source!r} must be an absolute path", field=f"mounts[{i}].source"
            )

    def apply(spec: Spec) -> None:
        wanted = {os.path.normpath(m.destination) for m in mounts}
        kept = [m for m in spec["mounts"] if os.path.normpath(m["destination"]) not in wanted]
        spec["mounts"] = kept + [
            {"destination": m.destination, "type": m.type, "source": m.source, "options": _mount_options(m)}
            for m in mounts
        ]

    return apply


def _mount_options(mount: domain.Mount) -> list[str]:
    options = list(mount.options)
    if mount.type == "bind":
        options += [o for o in BIND_HARDENING if o not in options]
    return options


def with_netns(path: str) -> SpecOpt:
    """Join the network namespace at ``path`` instead of a fresh one; empty keeps a fresh one."""
    if path and not path.startswith("/"):
        raise InvalidArgument(f"netns path {path!r} must be an absolute path", field="netns_path")

    def apply(spec: Spec) -> None:
        if not path:
            return
        namespaces = [n for n in spec["linux"]["namespaces"] if n["type"] != "network"]
        namespaces.append({"type": "network", "path": path})
        spec["linux"]["namespaces"] = namespaces

    return apply


def with_resources(res: domain.Resources) -> SpecOpt:
    """CPU quota/period from ``cpu_millis``, CPU shares, memory and pids limits; 0 means unlimited."""
    for name in ("cpu_millis", "cpu_shares", "memory_bytes", "pids"):
        if getattr(res, name) < 0:
            raise InvalidArgument(f"resources.{name} must not be negative", field=f"resources.{name}")
    if 0 < res.memory_bytes < 4 * 1024 * 1024:
        raise InvalidArgument("resources.memory_bytes must be at least 4 MiB", field="resources.memory_bytes")
    if 0 < res.cpu_millis < 10:
        raise InvalidArgument("resources.cpu_millis must be at least 10", field="resources.cpu_millis")

    def apply(spec: Spec) -> None:
        resources = spec["linux"].setdefault("resources", {})
        cpu: dict[str, int] = {}
        if res.cpu_millis:
            cpu["quota"] = res.cpu_millis * CPU_PERIOD_US // 1000
            cpu["period"] = CPU_PERIOD_US
        if res.cpu_shares:
            cpu["shares"] = res.cpu_shares
        if cpu:
            resources["cpu"] = cpu
        if res.memory_bytes:
            resources["memory"] = {"limit": res.memory_bytes}
        if res.pids:
            resources["pids"] = {"limit": res.pids}

    return apply


SHIM_GROUP = "io.containerd.runc.v2.group"
"""The annotation by which containerd's runc shim serves every task of a group from one process."""


def with_shim_group(group: str) -> SpecOpt:
    """Run the task in its group's shim (started by the group's first task, gone with its last).

    One shim per environment instead of one per container: each costs about 13 MB RSS (2.5 MB
    PSS) and its start is CPU that a deploy's other containers wait for.
    """

    def apply(spec: Spec) -> None:
        if group:
            spec.setdefault("annotations", {})[SHIM_GROUP] = group

    return apply


def with_readonly_rootfs(read_only: bool) -> SpecOpt:
    """Mount the root filesystem read-only."""

    def apply(spec: Spec) -> None:
        spec["root"]["readonly"] = bool(read_only)

    return apply


def capabilities(security: domain.Security) -> list[str]:
    """The default set with ``cap_drop`` removed (``ALL`` drops all) and ``cap_add`` added, in order.

    Raises:
        InvalidArgument: an unknown capability, naming the field.
    """
    for field_name in ("cap_add", "cap_drop"):
        for i, raw in enumerate(getattr(security, field_name)):
            name = capability_name(raw)
            if name != "ALL" and name not in ALL_CAPABILITIES:
                raise InvalidArgument(f"{raw!r} is not a Linux capability", field=f"security.{field_name}[{i}]")
    dropped = {capability_name(c) for c in security.cap_drop}
    kept = [] if "ALL" in dropped else [c for c in DEFAULT_CAPABILITIES if c not in dropped]
    added = {capability_name(c) for c in security.cap_add}
    wanted = sorted(ALL_CAPABILITIES) if "ALL" in added else sorted(added)
    return kept + [c for c in wanted if c not in kept]


def with_security(security: domain.Security) -> SpecOpt:
    """Capabilities from ``cap_add``/``cap_drop``, then the seccomp profile that fits them."""
    caps = capabilities(security)
    if security.seccomp not in ("", domain.SECCOMP_UNCONFINED):
        raise InvalidArgument(
            f"seccomp {security.seccomp!r} is neither empty (the default profile) nor {domain.SECCOMP_UNCONFINED!r}",
            field="security.seccomp",
        )

    def apply(spec: Spec) -> None:
        spec["process"]["capabilities"] = {"bounding": list(caps), "effective": list(caps), "permitted": list(caps)}
        if security.seccomp == domain.SECCOMP_UNCONFINED:
            spec["linux"].pop("seccomp", None)
        else:
            spec["linux"]["seccomp"] = seccomp.default_profile(caps)

    return apply


def build_spec(
    namespace: str,
    config: domain.ContainerConfig,
    user: ResolvedUser,
    *extra: SpecOpt,
) -> Spec:
    """The complete spec of ``config``: defaults, then the image, then the container's overrides.

    ``user`` must already be resolved against the image (see ``resolve_user``); ``extra`` options run last.

    Raises:
        InvalidArgument: naming the bad field of ``config``.
    """
    spec = default_spec(namespace, config.id)
    compose(
        with_image_config(config.image.config),
        with_args(resolve_args(config.image.config, config.command, config.args)),
        with_env(dict(config.env)),
        with_cwd(config.working_dir),
        with_user(user),
        with_hostname(config.hostname),
        with_mounts(config.mounts),
        with_netns(config.netns_path),
        with_resources(config.resources),
        with_readonly_rootfs(config.read_only_rootfs),
        with_security(config.security),
        with_shim_group(config.group),
        *extra,
    )(spec)
    return spec


def exec_process(spec: Spec, argv: Sequence[str]) -> dict[str, Any]:
    """The container's process with only ``argv`` changed, for an exec (keeps env, user, caps).

    Raises:
        InvalidArgument: when ``argv`` is empty.
    """
    if not argv:
        raise InvalidArgument("exec needs a command", field="argv")
    process: dict[str, Any] = copy.deepcopy(spec.get("process", {}))
    process["args"] = list(argv)
    process["terminal"] = False
    return process
