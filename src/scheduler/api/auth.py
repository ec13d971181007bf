"""Who is calling and what they may do: principals, roles, scopes.

A caller is identified once per RPC (see :mod:`scheduler.api.peers` for the transports) as a
:class:`Principal`: a local user (uid, gid, groups, from the unix socket's ``SO_PEERCRED`` or the
owner of a loopback TCP socket), a bearer token's name, or a client certificate's common name.
Role bindings from the config give it ``viewer``, ``operator`` or ``admin``, each possibly scoped
to environments by name prefix or labels. Tokens are compared by their SHA-256 only.
"""

from __future__ import annotations

import functools
import grp
import hashlib
import hmac
import pwd
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from scheduler import errors
from scheduler.config import AuthSettings, RoleBinding

TOKEN_PREFIX = "sch_"

VIEW = frozenset(
    {
        "GetEnvironment",
        "ListEnvironments",
        "GetEnvironmentLogs",
        "GetEnvironmentMetrics",
        "WatchEvents",
        "GetEnvironmentHistory",
        "ListOperations",
        "ListStacks",
        "ListNodes",
    }
)
CHANGE = frozenset(
    {
        "CreateEnvironment",
        "CloneEnvironment",
        "UpdateEnvironment",
        "DeleteEnvironment",
        "StopEnvironment",
        "StartEnvironment",
    }
)
ROLE_METHODS: dict[str, frozenset[str] | None] = {"viewer": VIEW, "operator": VIEW | CHANGE, "admin": None}
"""Methods of SchedulerService each role may call; None: all of them, present and future."""


PERMISSIONS = {
    "CreateEnvironment": "environments.create",
    "CloneEnvironment": "environments.clone",
    "GetEnvironment": "environments.get",
    "UpdateEnvironment": "environments.update",
    "DeleteEnvironment": "environments.delete",
    "StopEnvironment": "environments.stop",
    "StartEnvironment": "environments.start",
    "ListEnvironments": "environments.list",
    "GetEnvironmentLogs": "environments.logs",
    "GetEnvironmentMetrics": "environments.metrics",
    "GetEnvironmentHistory": "environments.history",
    "ListOperations": "environments.operations",
    "WatchEvents": "events.watch",
    "ListStacks": "stacks.list",
    # Admin only (no role but admin covers them): archives hold every secret of an environment.
    "BackupEnvironment": "environments.backup",
    "ListBackups": "environments.backups",
    "RestoreEnvironment": "environments.restore",
    "ReloadConfiguration": "config.reload",
    "ListTemplates": "templates.list",
    "ListNodes": "nodes.list",
    "DrainNode": "nodes.drain",
    "UndrainNode": "nodes.drain",
}


def permission(method: str) -> str:
    """The permission a method needs, as PERMISSION_DENIED names it (``environments.create``)."""
    return PERMISSIONS.get(method, f"admin.{method}")


@dataclass(frozen=True)
class Principal:
    """An identified caller; ``ids`` are every principal string a role binding may name."""

    name: str
    ids: frozenset[str]
    pid: int | None = None
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Looked up in two tables on every call: hashed once, not per lookup.
        object.__setattr__(self, "_hash", hash((self.name, self.ids, self.pid)))

    def __hash__(self) -> int:
        return self._hash


@dataclass(frozen=True)
class Grant:
    """What a caller may do: the union of its bindings' methods, within their scopes."""

    bindings: tuple[RoleBinding, ...] = field(default_factory=tuple)

    def allows(self, method: str) -> bool:
        """Whether some binding's role covers ``method``."""
        return any(_covers(b.role, method) for b in self.bindings)

    def scopes(self, method: str) -> tuple[RoleBinding, ...]:
        """The bindings that cover ``method``; an unscoped one among them means no restriction."""
        return tuple(b for b in self.bindings if _covers(b.role, method))

    def roles(self) -> str:
        """The roles held, for messages."""
        return ", ".join(sorted({b.role for b in self.bindings})) or "none"


def _covers(role: str, method: str) -> bool:
    methods = ROLE_METHODS[role]
    return methods is None or method in methods


def unscoped(binding: RoleBinding) -> bool:
    """Whether a binding applies to every environment."""
    return not binding.name_prefix and not binding.labels


def in_scope(binding: RoleBinding, name: str, labels: Mapping[str, str]) -> bool:
    """Whether an environment (by name and labels) lies within a binding's scope."""
    if not name.startswith(binding.name_prefix):
        return False
    return all(labels.get(k) == v for k, v in binding.labels.items())


@functools.lru_cache(maxsize=1024)
def _named(name: str) -> Principal:
    """The principal known by ``name`` alone (a token's, a certificate's), one object per name.

    The same object each time, so that what is remembered per principal object (the gate's
    admissions) is found again.
    """
    return Principal(name, frozenset({name}))


class Authenticator:
    """Turns what the transport knows about a caller into a principal and its grant."""

    def __init__(self, settings: AuthSettings) -> None:
        self._settings = settings
        self._tokens = {t.sha256: t.name for t in settings.tokens}
        self._bindings = [(b, frozenset(b.principals)) for b in settings.bindings]
        self._grants: dict[Principal, Grant] = {}
        """Grants worked out, per principal: these settings never change (a reload makes a new one)."""

    def from_token(self, token: str) -> Principal:
        """The principal of a bearer token.

        Raises:
            Unauthenticated: the token is not one the config knows.
        """
        digest = hashlib.sha256(token.encode()).hexdigest()
        for known, name in self._tokens.items():
            if hmac.compare_digest(known, digest):
                return _named(f"token:{name}")
        raise errors.Unauthenticated("the bearer token is not valid")

    @staticmethod
    def from_certificate(common_name: str) -> Principal:
        """The principal of a verified client certificate."""
        return _named(f"cert:{common_name}")

    @staticmethod
    def from_user(uid: int, gid: int, pid: int | None = None) -> Principal:
        """The principal of a local process: its user and every group it belongs to."""
        ids = {f"uid:{uid}", f"gid:{gid}"}
        try:
            user = pwd.getpwuid(uid)
        except KeyError:
            name = f"uid:{uid}"
        else:
            name = f"user:{user.pw_name}"
            ids.add(name)
            ids.update(f"gid:{g}" for g in _group_ids(user.pw_name, gid))
        for group_id in [int(i.removeprefix("gid:")) for i in ids if i.startswith("gid:")]:
            try:
                ids.add(f"group:{grp.getgrgid(group_id).gr_name}")
            except KeyError:
                continue
        return Principal(name, frozenset(ids), pid)

    def grant(self, principal: Principal) -> Grant:
        """The role bindings that name any of the principal's ids."""
        grant = self._grants.get(principal)
        if grant is None:
            if len(self._grants) >= 1024:
                self._grants.clear()
            grant = Grant(tuple(b for b, names in self._bindings if not principal.ids.isdisjoint(names)))
            self._grants[principal] = grant
        return grant


class LocalUsers:
    """Principals of local users, looked up in the user database once per ``ttl`` seconds.

    Reading the user and group databases (``getpwuid``, ``getgrouplist``, ``getgrgid`` per
    group) cost more than serving a call; a caller's uid comes from the kernel on every call,
    only what that uid's user and groups are is remembered, for a short while, as nscd does.
    A configuration reload starts afresh.
    """

    def __init__(self, ttl: float = 10.0, capacity: int = 1024) -> None:
        self._ttl = ttl
        self._capacity = capacity
        self._items: dict[tuple[int, int | None, int | None], tuple[float, Principal]] = {}

    def principal(self, uid: int, gid: int | None = None, pid: int | None = None) -> Principal:
        """The principal of a process of ``uid`` (``gid``: its primary group; None: the user's)."""
        key = (uid, gid, pid)
        now = time.monotonic()
        held = self._items.get(key)
        if held is not None and held[0] > now:
            return held[1]
        if gid is None:
            try:
                gid = pwd.getpwuid(uid).pw_gid
            except KeyError:
                gid = -1
        principal = Authenticator.from_user(uid, gid, pid)
        if len(self._items) >= self._capacity:
            self._items = {k: v for k, v in self._items.items() if v[0] > now}
            if len(self._items) >= self._capacity:
                self._items.clear()
        self._items[key] = (now + self._ttl, principal)
        return principal


def _group_ids(user: str, gid: int) -> Iterable[int]:
    import os

    try:
        return os.getgrouplist(user, gid)
    except OSError:
        return (gid,)


def new_token() -> tuple[str, str]:
    """A fresh bearer token and the SHA-256 the config stores instead of it."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    return token, hashlib.sha256(token.encode()).hexdigest()
