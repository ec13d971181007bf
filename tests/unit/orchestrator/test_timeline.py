"""Operation timelines: steps belong to the operation under way, are bounded, and are stored at its end."""

from __future__ import annotations

from pathlib import Path

from scheduler.orchestrator import timeline as tl
from scheduler.storage.timeline import KEEP_PER_ENV, SqliteTimeline


async def test_steps_are_kept_per_operation_bounded_and_stored(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(tl, "MAX_STEPS", 3)
    store = SqliteTimeline(tmp_path / "t.db")
    timeline = tl.Timeline(store)
    timeline.step("demo", "pull")  # no operation under way: not recorded
    timeline.operation_started("deploy", "demo")
    for i in range(5):
        timeline.step("demo", "probe", "web", f"attempt {i}")
    timeline.step("other", "start")
    running = await timeline.of("demo")
    assert [r.outcome for r in running] == [""] and len(running[0].steps) == 3
    timeline.operation_finished("deploy", "demo", "toolbox", "succeeded", 1.0)
    await timeline.close()

    reopened = SqliteTimeline(tmp_path / "t.db")
    (record,) = reopened.of("demo")
    assert record.operation == "deploy" and record.outcome == "succeeded" and record.dropped_steps == 2
    assert [s.detail for s in record.steps] == ["attempt 0", "attempt 1", "attempt 2"]
    assert record.finished_at is not None and record.started_at <= record.steps[0].at <= record.finished_at
    for _ in range(KEEP_PER_ENV + 5):
        reopened.append(record)
    assert len(reopened.of("demo")) == KEEP_PER_ENV and reopened.of("other") == []
    reopened.close()
