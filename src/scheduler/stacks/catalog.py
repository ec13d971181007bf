"""The registry of precomposed stacks, by name."""

from __future__ import annotations

from collections.abc import Iterable

from scheduler.errors import AlreadyExists, NotFound
from scheduler.stacks.stack import Stack


class Catalog:
    """Stacks by name; ``default_catalog()`` holds the built-in ones."""

    def __init__(self, stacks: Iterable[Stack] = ()) -> None:
        self._stacks: dict[str, Stack] = {}
        for stack in stacks:
            self.register(stack)

    def register(self, stack: Stack) -> None:
        """Add a stack.

        Raises:
            AlreadyExists: naming the stack, when one has that name already.
        """
        if stack.name in self._stacks:
            raise AlreadyExists(f"stack {stack.name!r} is registered already", stack=stack.name)
        self._stacks[stack.name] = stack

    def find(self, name: str) -> Stack | None:
        """Return the stack called ``name``, or None."""
        return self._stacks.get(name)

    def get(self, name: str) -> Stack:
        """Return the stack called ``name``.

        Raises:
            NotFound: naming the stack.
        """
        stack = self._stacks.get(name)
        if stack is None:
            raise NotFound(f"stack {name!r} not found", stack=name)
        return stack

    def names(self) -> list[str]:
        """Names of the registered stacks, sorted."""
        return sorted(self._stacks)

    def stacks(self) -> list[Stack]:
        """The registered stacks, sorted by name."""
        return [self._stacks[name] for name in self.names()]


def default_catalog() -> Catalog:
    """A catalog of the stacks that ship with the scheduler."""
    from scheduler.stacks import api_postgres, postgres, toolbox, web_postgres

    return Catalog([web_postgres.STACK, api_postgres.STACK, postgres.STACK, toolbox.STACK])
