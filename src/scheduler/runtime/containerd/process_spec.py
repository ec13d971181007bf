"""The process part of an OCI spec: argv from the image and the service, environment, working directory, user."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from scheduler import domain
from scheduler.errors import InvalidArgument

Spec = dict[str, Any]
SpecOpt = Callable[[Spec], None]
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def compose(*opts: SpecOpt) -> SpecOpt:
    """One option applying ``opts`` in order."""

    def apply(spec: Spec) -> None:
        for opt in opts:
            opt(spec)

    return apply


def merge_env(base: Sequence[str], overrides: Sequence[str]) -> list[str]:
    """``KEY=VALUE`` lists merged: a key in ``overrides`` replaces the same key in ``base`` in place."""
    out = list(base)
    index = {item.partition("=")[0]: i for i, item in enumerate(out)}
    for item in overrides:
        key = item.partition("=")[0]
        if key in index:
            out[index[key]] = item
        else:
            index[key] = len(out)
            out.append(item)
    return out


def with_env(env: Mapping[str, str] | Sequence[str]) -> SpecOpt:
    """Add or replace environment variables (after the image's)."""
    items = [f"{k}={v}" for k, v in env.items()] if isinstance(env, Mapping) else list(env)
    for item in items:
        if not item.partition("=")[0]:
            raise InvalidArgument(f"env entry {item!r} has an empty name", field="env")

    def apply(spec: Spec) -> None:
        spec["process"]["env"] = merge_env(spec["process"]["env"], items)

    return apply


def resolve_args(image: domain.ImageConfig, command: Sequence[str] = (), args: Sequence[str] = ()) -> list[str]:
    """Docker's rule: entrypoint + cmd, where an overridden entrypoint drops the image's cmd."""
    entrypoint = list(command) if command else list(image.entrypoint)
    if args:
        cmd = list(args)
    elif command:
        cmd = []
    else:
        cmd = list(image.cmd)
    return entrypoint + cmd


def with_args(argv: Sequence[str]) -> SpecOpt:
    """Set the process argv.

    Raises:
        InvalidArgument: when ``argv`` is empty (neither the image nor the caller gave a command).
    """
    if not argv:
        raise InvalidArgument("container has no command: the image defines none and none was given", field="command")

    def apply(spec: Spec) -> None:
        spec["process"]["args"] = list(argv)

    return apply


def with_cwd(path: str) -> SpecOpt:
    """Set the working directory; empty keeps the current one."""
    if path and not path.startswith("/"):
        raise InvalidArgument(f"working_dir {path!r} must be an absolute path", field="working_dir")

    def apply(spec: Spec) -> None:
        if path:
            spec["process"]["cwd"] = path

    return apply


def with_image_config(image: domain.ImageConfig) -> SpecOpt:
    """Env, args and working dir from the image. Apply before the container's own overrides."""

    def apply(spec: Spec) -> None:
        spec["process"]["env"] = merge_env(spec["process"]["env"], image.env)
        spec["process"]["args"] = resolve_args(image)
        if image.working_dir:
            spec["process"]["cwd"] = image.working_dir

    return apply


@dataclass(frozen=True)
class ResolvedUser:
    """A user as numeric ids, ready for the spec."""

    uid: int
    gid: int
    additional_gids: tuple[int, ...] = ()


def _parse_db(text: str | None, min_fields: int) -> list[list[str]]:
    rows = []
    for line in (text or "").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) >= min_fields:
            rows.append(parts)
    return rows


def resolve_user(user: str, passwd: str | None, group: str | None) -> ResolvedUser:
    """Resolve ``user``, ``uid``, ``user:group`` or ``uid:gid`` against a rootfs' passwd and group files.

    A numeric uid absent from passwd runs with gid 0, as in Docker. Supplementary groups come from
    the group file's member lists (by user name).

    Raises:
        InvalidArgument: a user or group name is not in the image, naming the ``user`` field.
    """
    if not user:
        user = "0"
    name, _, grp = user.partition(":")
    users = _parse_db(passwd, 4)
    groups = _parse_db(group, 3)
    entry = next((u for u in users if u[0] == name), None)
    if entry is None and name.isdigit():
        entry = next((u for u in users if u[2] == name), None)
    if entry is not None:
        uid, gid, username = int(entry[2]), int(entry[3]), entry[0]
    elif name.isdigit():
        uid, gid, username = int(name), 0, ""
    else:
        raise InvalidArgument(f"user {name!r} is not in the image's /etc/passwd", field="user")
    if grp:
        if grp.isdigit():
            gid = int(grp)
        else:
            found = next((g for g in groups if g[0] == grp), None)
            if found is None:
                raise InvalidArgument(f"group {grp!r} is not in the image's /etc/group", field="user")
            gid = int(found[2])
    extra: list[int] = []
    if username:
        for g in groups:
            members = g[3].split(",") if len(g) > 3 and g[3] else []
            if username in members and g[2].isdigit() and int(g[2]) != gid and int(g[2]) not in extra:
                extra.append(int(g[2]))
    return ResolvedUser(uid=uid, gid=gid, additional_gids=tuple(extra))


def with_user(user: ResolvedUser) -> SpecOpt:
    """Run the process as ``user``."""

    def apply(spec: Spec) -> None:
        entry: dict[str, Any] = {"uid": user.uid, "gid": user.gid}
        if user.additional_gids:
            entry["additionalGids"] = list(user.additional_gids)
        spec["process"]["user"] = entry

    return apply
