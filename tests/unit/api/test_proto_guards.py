"""buf guards the public proto: a deliberately breaking edit must fail `buf breaking` against the
released v1 snapshot, and an unchanged copy must pass (so the failure is the edit's)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
BUF = ROOT / "tools" / "buf" / "node_modules" / ".bin" / "buf"
PROTO = "scheduler/v1/scheduler.proto"


@pytest.fixture
def buf() -> Path:
    if not BUF.exists():
        message = "buf is not installed: run `make buf`"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return BUF


def _breaking(buf: Path, tmp_path: Path, edit: tuple[str, str] | None) -> subprocess.CompletedProcess[str]:
    """Copy the API (and buf.yaml) to ``tmp_path``, apply ``edit``, run buf breaking against the release."""
    for part in ("scheduler", "google"):
        shutil.copytree(ROOT / "proto" / part, tmp_path / "proto" / part)
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    if edit is not None:
        target = tmp_path / "proto" / PROTO
        text = target.read_text()
        assert edit[0] in text
        target.write_text(text.replace(edit[0], edit[1], 1))
    return subprocess.run(
        [str(buf), "breaking", "proto", "--against", str(ROOT / "proto-released")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_unchanged_api_is_compatible_with_the_release(buf: Path, tmp_path: Path) -> None:
    result = _breaking(buf, tmp_path, None)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("edit", "complaint"),
    [
        (("  string etag = 13", "  string entity_tag = 13"), 'changed name from "etag" to "entity_tag"'),
        (("  bool validate_only = 6", "  string validate_only = 6"), "changed type"),
        (("  EVENT_TYPE_HEARTBEAT = 17;", ""), 'enum value "17" on enum "EventType" was deleted'),
    ],
)
def test_a_breaking_edit_fails_buf_breaking(buf: Path, tmp_path: Path, edit: tuple[str, str], complaint: str) -> None:
    result = _breaking(buf, tmp_path, edit)
    assert result.returncode != 0
    assert complaint in result.stdout, result.stdout + result.stderr


def test_the_vendored_annotations_match_the_released_copies() -> None:
    for path in (ROOT / "proto" / "google").rglob("*.proto"):
        released = ROOT / "proto-released" / path.relative_to(ROOT / "proto")
        assert released.read_text() == path.read_text(), path
