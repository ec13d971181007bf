"""What a precomposed stack is: services with ``${parameter}`` placeholders, and their parameters.

Stacks are plain data so that they can be listed, documented and tested without deploying. Every
string field of a stack's services may hold ``${name}`` placeholders naming a parameter, a derived
value or ``env`` (the environment's name); ``$$`` is a literal dollar. Non-string knobs (a host port
from a parameter, a command split from one) go through the stack's ``finalize`` hook.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from scheduler.domain import ServiceSpec

Values = Mapping[str, str]
"""Parameter values by name, after defaults and generation, plus derived values and ``env``."""

PARAMETER_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
"""Parameter names: lowercase identifiers, so that ``${name}`` placeholders are unambiguous."""


@dataclass(frozen=True)
class StackParameter:
    """A knob of a stack that a request may set in ``spec.parameters``."""

    name: str
    description: str
    default: str | None = None
    """Value when the request gives none; ``None`` (without ``generate``) makes it required."""
    secret: bool = False
    """Env variables whose value uses this parameter are marked secret in the resolved spec."""
    generate: Callable[[], str] | None = None
    """Makes a fresh value per environment when none is given (a password)."""
    pattern: str | None = None
    """Regular expression a given value must match in full."""
    check: Callable[[str], str | None] | None = None
    """Extra check of a value; returns what is wrong, or None."""
    hint: str = ""
    """What a valid value looks like, for error messages."""

    def __post_init__(self) -> None:
        if not PARAMETER_NAME.fullmatch(self.name):
            raise ValueError(f"stack parameter name {self.name!r} is not a lowercase identifier")

    def problem(self, value: str) -> str | None:
        """Say what is wrong with ``value`` for this parameter, or return None when it is fine."""
        if "\x00" in value:
            return "must not contain NUL characters"
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            return f"{value if not self.secret else '(secret)'!r} is not {self.hint or 'valid'}"
        if self.check is not None:
            return self.check(value)
        return None


@dataclass(frozen=True)
class Derived:
    """A value computed from the parameters (a connection URL), usable as a placeholder."""

    name: str
    compute: Callable[[Values], str]
    secret: bool = False


@dataclass(frozen=True)
class Stack:
    """A precomposed application: services with their defaults, and the parameters they take."""

    name: str
    description: str
    services: tuple[ServiceSpec, ...]
    """Service templates; string fields may hold ``${...}`` placeholders."""
    parameters: tuple[StackParameter, ...] = ()
    derived: tuple[Derived, ...] = ()
    finalize: Callable[[tuple[ServiceSpec, ...], Values], tuple[ServiceSpec, ...]] | None = field(
        default=None, compare=False
    )
    """Applies parameters to non-string fields after substitution."""

    def __post_init__(self) -> None:
        names = [p.name for p in self.parameters] + [d.name for d in self.derived] + ["env"]
        if len(set(names)) != len(names):
            raise ValueError(f"stack {self.name!r} declares a parameter or derived value twice: {names}")
        services = [s.name for s in self.services]
        if len(set(services)) != len(services):
            raise ValueError(f"stack {self.name!r} declares a service twice: {services}")

    def parameter(self, name: str) -> StackParameter | None:
        """Return the parameter called ``name``, if the stack declares one."""
        return next((p for p in self.parameters if p.name == name), None)

    def service(self, name: str) -> ServiceSpec | None:
        """Return the service template called ``name``, if the stack has one."""
        return next((s for s in self.services if s.name == name), None)
