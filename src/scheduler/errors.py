"""The one exception tree of the scheduler.

Every layer raises these; ``api/interceptors.py`` maps them to gRPC status codes in one table.
The names follow containerd's errdefs so that translating containerd's own errors is one-to-one.
This module must not import grpc.
"""

from __future__ import annotations

from collections.abc import Mapping


class SchedulerError(Exception):
    """Base of every error the scheduler raises on purpose.

    Attributes:
        message: what went wrong, naming the field or resource concerned.
        reason: a machine-readable UPPER_SNAKE_CASE cause for clients (the API's ErrorInfo
            reason); empty means the default of the error's class.
        details: identifying attributes (``env``, ``service``, ``container_id``, ``field``...).
    """

    def __init__(self, message: str, *, reason: str = "", **details: str) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.details: Mapping[str, str] = details

    @property
    def cause(self) -> BaseException | None:
        """The lower-level error this one was raised from, if any."""
        return self.__cause__

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


# --- the caller asked for something that is not there, or is there already ---------------------


class NotFound(SchedulerError):
    """The named environment, stack, image, container or resource does not exist."""


class AlreadyExists(SchedulerError):
    """A resource with that name or identity exists already (or a port is held)."""


# --- the request itself is wrong ---------------------------------------------------------------


class FieldViolation:
    """One bad field of a request: its path (``spec.services.backend.image``) and what is wrong."""

    __slots__ = ("field", "description")

    def __init__(self, field: str, description: str) -> None:
        self.field = field
        self.description = description

    def __repr__(self) -> str:
        return f"FieldViolation({self.field!r}, {self.description!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FieldViolation) and (self.field, self.description) == (other.field, other.description)

    def __hash__(self) -> int:
        return hash((self.field, self.description))


class InvalidArgument(SchedulerError):
    """The request is malformed; ``violations`` names each bad field."""

    def __init__(
        self, message: str, violations: list[FieldViolation] | None = None, *, reason: str = "", **details: str
    ) -> None:
        super().__init__(message, reason=reason, **details)
        self.violations: list[FieldViolation] = violations or []

    @classmethod
    def of(cls, violations: list[FieldViolation]) -> InvalidArgument:
        """Build one error from several violations, its message listing them all."""
        text = "; ".join(f"{v.field}: {v.description}" for v in violations)
        return cls(f"invalid request: {text}", violations)


# --- the system is not in a state that allows the operation -----------------------------------


class FailedPrecondition(SchedulerError):
    """The operation is not allowed in the current state (e.g. a deploy is still running)."""


class Conflict(SchedulerError):
    """A write named a revision that is no longer current: someone else changed the resource first.

    Read it again and retry the change (gRPC ABORTED, as for a failed optimistic transaction).
    """


class OutOfRange(SchedulerError):
    """A position (an event sequence, a page) lies outside what is kept; details say what is."""


class ResourceExhausted(SchedulerError):
    """A quota would be exceeded; ``details['quota']`` names it (``limits.env_max_memory_bytes``...)."""


class Unavailable(SchedulerError):
    """A dependency (containerd, a registry, the state store) cannot be reached right now."""


class DeadlineExceeded(SchedulerError):
    """An operation did not finish within its deadline (a health gate, a stop grace...)."""


class Internal(SchedulerError):
    """A bug or an invariant broken inside the scheduler or a dependency."""


class Unimplemented(SchedulerError):
    """The operation is part of the API contract but not built yet."""


class PermissionDenied(SchedulerError):
    """Credentials were refused (a registry login, a socket the daemon may not open)."""


class Unauthenticated(SchedulerError):
    """The caller could not be identified: no credentials, or credentials the daemon does not know."""
