"""The README's ```sh blocks as commands, and the conventions their comments follow.

The conventions are documented at the end of README.md ("The commands in this file are
tested"); this module is their only reader, so a command added to the README needs no change
here unless it needs a new convention.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_BLOCK = re.compile(r"^```sh\n(.*?)^```", re.S | re.M)
_SHOWS = re.compile(r'shows "([^"]+)"')
_PLACEHOLDER = re.compile(r"<([a-z][a-z0-9_]*)>")


@dataclass(frozen=True)
class Command:
    """One command of a ```sh block: the text to run and what its comment asks of the test."""

    text: str
    comment: str

    @property
    def serves(self) -> bool:
        """Runs in the background until the test ends it with Ctrl-C."""
        return "serves until Ctrl-C" in self.comment

    @property
    def streams(self) -> bool:
        """Runs until its first output (or a short while), then gets Ctrl-C."""
        return "streams until Ctrl-C" in self.comment

    @property
    def skipped(self) -> bool:
        """Not run (only the suite that contains the README test)."""
        return "not run by the README test" in self.comment

    @property
    def expected(self) -> str | None:
        """Text the output must contain."""
        found = _SHOWS.search(self.comment)
        return found.group(1) if found else None

    @property
    def repeats(self) -> bool:
        """Run again until the output shows :attr:`expected`."""
        return "repeat until" in self.comment and self.expected is not None

    @property
    def placeholders(self) -> list[str]:
        """Names of the ``<name>`` placeholders in the command."""
        return _PLACEHOLDER.findall(self.text)


def commands(readme: Path) -> list[Command]:
    """Every command of every ```sh block, in order, continuation lines joined."""
    found = []
    for block in _BLOCK.findall(readme.read_text()):
        for line in block.replace("\\\n", " ").splitlines():
            text, _, comment = line.partition("  #")
            text = " ".join(text.split()) if text.strip() else ""
            if text:
                found.append(Command(text, comment.strip()))
    return found


def fill(command: Command, outputs: list[str]) -> str:
    """The command with each placeholder replaced by that field's value in the newest output having it.

    Raises:
        LookupError: no earlier output has the field.
    """
    text = command.text
    for name in command.placeholders:
        camel = re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), name)
        field = re.compile(rf'"(?:{name}|{camel})"\s*:\s*"?([^"\s,}}]+)')
        value = next((m.group(1) for out in reversed(outputs) if (m := field.search(out))), None)
        if value is None:
            raise LookupError(f"no earlier output has a field {name!r} (or {camel!r}) for <{name}> in {text!r}")
        text = text.replace(f"<{name}>", value)
    return text
