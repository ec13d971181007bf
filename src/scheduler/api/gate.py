"""The door every SchedulerService call passes: identify the caller, check its role and scope.

Identification, first match wins: a bearer token (``authorization: Bearer ...``; a wrong one is
UNAUTHENTICATED even if the transport knows the caller), a verified client certificate, the unix
socket's ``SO_PEERCRED``, the owner of a loopback TCP socket. Then the caller's role must cover
the method (PERMISSION_DENIED names the permission), and a scoped role must cover the
environment: named ones are checked before the call, lists and event streams are filtered.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc

from scheduler import errors
from scheduler.api import fieldmask
from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.api.auth import Authenticator, Grant, LocalUsers, Principal, in_scope, permission, unscoped
from scheduler.api.loopback import loopback_owner
from scheduler.api.peers import UnixListener
from scheduler.config import AuthSettings, RoleBinding

SERVICE_PREFIX = "/scheduler.v1.SchedulerService/"
LabelsOf = Callable[[str], Awaitable[Mapping[str, str] | None]]
"""Labels of a stored environment, None when there is no such environment."""

CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="")
"""The principal of the current RPC: the actor in history and the access log."""


@dataclass(frozen=True)
class Admission:
    """An admitted call: who, and within which scopes the method applies."""

    principal: Principal
    scopes: tuple[RoleBinding, ...]
    method: str = ""
    """The SchedulerService method (``GetEnvironment``) it admits."""
    grant: Grant = field(default_factory=Grant)
    """Everything the caller may do, for the message of a refusal."""
    unrestricted: bool = field(init=False)
    """Whether the caller's role covers every environment for this method."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "unrestricted", any(unscoped(b) for b in self.scopes))

    def covers(self, name: str, labels: Mapping[str, str]) -> bool:
        """Whether the environment lies within one of the caller's scopes."""
        return self.unrestricted or any(in_scope(b, name, labels) for b in self.scopes)


class Gate:
    """Authenticates and authorises SchedulerService calls (other services pass freely)."""

    def __init__(
        self,
        settings: AuthSettings,
        labels_of: LabelsOf,
        unix: UnixListener | None = None,
        tcp_port: Callable[[], int] = lambda: 0,
        *,
        client_certificates: bool = True,
    ) -> None:
        self._settings = settings
        self._certificates = client_certificates
        """Whether clients may present certificates (TLS with a client CA): else none is looked for."""
        self._auth = Authenticator(settings)
        self._users = LocalUsers()
        self._admissions: dict[tuple[int, str], Admission] = {}
        """Admissions worked out, per principal and method, under the authenticator ``_admitted_by``.

        Keyed by the principal object's identity (the authenticator and the user table hand out
        the same object for a caller while they remember it), each checked against the admission's
        own principal: hashing a ``Principal`` is a Python-level call, made on every RPC otherwise.
        """
        self._admitted_by = self._auth
        self._labels_of = labels_of
        self._unix = unix
        self._tcp_port = tcp_port

    def apply(self, settings: AuthSettings) -> None:
        """Use new tokens and role bindings from the next call on (a configuration reload)."""
        self._auth = Authenticator(settings)
        self._users = LocalUsers()
        self._settings = settings

    def identify(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        peer: str,
        metadata: Mapping[str, str | bytes] | None = None,
    ) -> Principal:
        """Who is calling (``metadata``: the call's, if already read).

        Raises:
            Unauthenticated: no credentials, or a bearer token the daemon does not know.
        """
        if metadata is None:
            metadata = dict(context.invocation_metadata() or ())
        authorization = metadata.get("authorization")
        if isinstance(authorization, str) and authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise errors.Unauthenticated("the authorization header must be 'Bearer <token>'")
            return self._auth.from_token(token.strip())
        if self._certificates:
            names = list((context.auth_context() or {}).get("x509_common_name") or [])
            if names:
                return self._auth.from_certificate(names[0].decode(errors="replace"))
        if self._unix is not None:
            creds = self._unix.credentials(peer)
            if creds is not None:
                return self._users.principal(creds.uid, creds.gid, creds.pid)
        if self._settings.loopback_ident and self._tcp_port():
            uid = loopback_owner(peer, self._tcp_port())
            if uid is not None:
                return self._users.principal(uid)
        raise errors.Unauthenticated(
            "no credentials: connect over the unix socket, or send 'authorization: Bearer <token>', "
            "or present a client certificate"
        )

    async def admit(
        self,
        method: str,
        request: Any,
        context: grpc.aio.ServicerContext[Any, Any],
        peer: str,
        metadata: Mapping[str, str | bytes] | None = None,
    ) -> Admission | None:
        """Let the call in or raise; None for methods outside SchedulerService (health, reflection).

        Raises:
            Unauthenticated: see :meth:`identify`.
            PermissionDenied: naming the permission the caller lacks.
        """
        admission = self.admission(method, context, peer, metadata)
        if admission is not None and not admission.unrestricted:
            await self.check_scope(admission, request)
        return admission

    def admission(
        self,
        method: str,
        context: grpc.aio.ServicerContext[Any, Any],
        peer: str,
        metadata: Mapping[str, str | bytes] | None = None,
    ) -> Admission | None:
        """Who calls and whether their role covers ``method``, without looking at environments.

        The part of :meth:`admit` that never waits: a caller whose admission is not
        ``unrestricted`` must still pass :meth:`check_scope`. None outside SchedulerService.

        Raises:
            Unauthenticated: see :meth:`identify`.
            PermissionDenied: naming the permission the caller lacks.
        """
        if not method.startswith(SERVICE_PREFIX):
            return None
        name = method.removeprefix(SERVICE_PREFIX)
        principal = self.identify(context, peer, metadata)
        CALLER.set(principal.name)
        auth = self._auth
        key = (id(principal), name)
        admission = self._admissions.get(key)
        if admission is None or admission.principal is not principal or self._admitted_by is not auth:
            grant = auth.grant(principal)
            if not grant.allows(name):
                raise _denied(principal, grant, name)
            if self._admitted_by is not auth or len(self._admissions) >= 1024:
                self._admissions, self._admitted_by = {}, auth
            admission = self._admissions[key] = Admission(principal, grant.scopes(name), name, grant)
        return admission

    async def check_scope(self, admission: Admission, request: Any) -> None:
        """Refuse a scoped caller an environment outside its scopes (lists are filtered later instead).

        Raises:
            PermissionDenied: naming the environment.
        """
        method, grant = admission.method, admission.grant
        if method == "CreateEnvironment":
            if not admission.covers(request.name, dict(request.spec.labels)):
                raise _denied(admission.principal, grant, method, request.name)
            return
        if method == "CloneEnvironment":
            await self._check_clone_scope(admission, request, grant)
            return
        target = getattr(request, "name", "")
        if method in ("ListEnvironments", "ListStacks", "ListNodes") or (method == "WatchEvents" and not target):
            return  # filtered on the way out
        labels = await self._labels_of(target) if target else None
        if labels is None:
            # Unknown environment: answer as if it were in scope only if its name could be.
            if any(target.startswith(b.name_prefix) for b in admission.scopes):
                return
            raise _denied(admission.principal, grant, method, target)
        if not admission.covers(target, labels):
            raise _denied(admission.principal, grant, method, target)

    async def _check_clone_scope(self, admission: Admission, request: Any, grant: Grant) -> None:
        """A clone reads its source and creates its target: the scope must cover both.

        The target's labels are the source's with the request's label overrides applied.
        """
        labels = await self._labels_of(request.source)
        if labels is None or not admission.covers(request.source, labels):
            if labels is not None or not any(request.source.startswith(b.name_prefix) for b in admission.scopes):
                raise _denied(admission.principal, grant, "CloneEnvironment", request.source)
            return  # an unknown source whose name the scope could cover: NOT_FOUND follows
        paths = [p for p in request.update_mask.paths if p == "labels" or p.startswith("labels.")]
        base = pb.EnvironmentSpecification(labels=dict(labels))
        target = fieldmask.apply(base, request.spec, paths).labels if paths else labels
        if not admission.covers(request.name, dict(target)):
            raise _denied(admission.principal, grant, "CloneEnvironment", request.name)

    async def visible(self, admission: Admission | None, response: Any) -> Any:
        """The response as the caller may see it (lists and events filtered by scope), or None."""
        if admission is None or admission.unrestricted:
            return response
        environments = getattr(response, "environments", None)
        if environments is not None:
            # Into a copy: the servicer may serve the same reply object to other callers.
            kept = [e for e in environments if admission.covers(e.name, dict(e.spec.labels))]
            shown = type(response)()
            shown.CopyFrom(response)
            del shown.environments[:]
            shown.environments.extend(kept)
            return shown
        environment = getattr(response, "environment", None)
        if isinstance(environment, str) and environment:
            labels = await self._labels_of(environment)
            return response if admission.covers(environment, labels or {}) else None
        return response


def _denied(principal: Principal, grant: Grant, method: str, env: str = "") -> errors.PermissionDenied:
    where = f" on environment {env!r}" if env else ""
    return errors.PermissionDenied(
        f"{principal.name} lacks permission {permission(method)}{where} (roles: {grant.roles()})",
        reason="MISSING_PERMISSION",
        permission=permission(method),
    )
