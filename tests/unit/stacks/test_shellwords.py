"""The linear command splitter agrees with shlex.split, and stays linear on huge input."""

import shlex

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.stacks import shellwords

_PIECES = st.sampled_from(["a", "bc", " ", "\t", "\n", "'", '"', "\\", "$", "x y", "é"])


def _shlex(line: str) -> list[str] | str:
    try:
        return shlex.split(line)
    except ValueError:
        return "error"


def _ours(line: str) -> list[str] | str:
    try:
        return shellwords.split(line)
    except ValueError:
        return "error"


@settings(max_examples=3000, deadline=None)
@given(st.lists(_PIECES, max_size=16).map("".join))
def test_splits_like_shlex(line: str) -> None:
    assert _ours(line) == _shlex(line)


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("sh -c 'echo \"hi\"; exit 3'", ["sh", "-c", 'echo "hi"; exit 3']),
        ('a"b c"d', ["ab cd"]),
        ("''", [""]),
        (r'"a\"b\\c\d"', ['a"b\\c\\d']),
        (r"a\ b", ["a b"]),
    ],
)
def test_known_lines(line: str, words: list[str]) -> None:
    assert shellwords.split(line) == words


@pytest.mark.timeout(20)
def test_one_megabyte_arguments_split() -> None:
    # shlex takes about a minute for the first one (it grows a token character by character).
    big = "x" * (1024 * 1024)
    assert shellwords.split(big) == [big]
    assert len(shellwords.split("a " * (512 * 1024))) == 512 * 1024
