"""Split a command line like a POSIX shell (as ``shlex.split`` does), in linear time.

``shlex`` grows each token one character at a time, which is quadratic in the token's length: a
1 MB argument took close to a minute. This splitter matches whole runs with one regular
expression and joins each word's pieces once.
"""

from __future__ import annotations

import re

# Alternatives, in order: blanks; a single-quoted run; a double-quoted run (backslash escapes
# inside); a backslash escape; a run of ordinary characters; a lone quote or backslash (an error).
_PIECE = re.compile(
    r"""(?P<blank>\s+)"""
    r"""|'(?P<single>[^']*)'"""
    r'''|"(?P<double>[^"\\]*(?:\\.[^"\\]*)*)"'''
    r"""|\\(?P<escaped>.)"""
    r"""|(?P<plain>[^\s'"\\]+)"""
    r"""|(?P<bad>['"\\])""",
    re.DOTALL,
)
_DOUBLE_ESCAPE = re.compile(r'\\([\\"])')


def split(line: str) -> list[str]:
    """Split ``line`` into words.

    Raises:
        ValueError: on an unclosed quote or a trailing backslash (the messages ``shlex`` uses).
    """
    words: list[str] = []
    pieces: list[str] = []
    in_word = False
    for match in _PIECE.finditer(line):
        kind = match.lastgroup
        if kind == "blank":
            if in_word:
                words.append("".join(pieces))
                pieces, in_word = [], False
            continue
        if kind == "bad":
            raise ValueError("No escaped character" if match.group() == "\\" else "No closing quotation")
        text = match.group(kind or "plain")
        pieces.append(_DOUBLE_ESCAPE.sub(r"\1", text) if kind == "double" else text)
        in_word = True
    if in_word:
        words.append("".join(pieces))
    return words
