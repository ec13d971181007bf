from pathlib import Path

import pytest

from scheduler import errors
from scheduler.runtime.fake import FakeRuntime
from scheduler.runtime.preload import preload


class CountingRuntime(FakeRuntime):
    def __init__(self) -> None:
        super().__init__()
        self.imports = 0

    async def import_archive(self, path: Path):  # type: ignore[override]
        self.imports += 1
        self.with_image("docker.io/library/demo:1")
        return [self.images["docker.io/library/demo:1"]]


async def test_an_archive_is_imported_once_until_it_changes_or_its_image_goes(tmp_path: Path) -> None:
    archive = tmp_path / "demo.tar"
    archive.write_bytes(b"x" * 10)
    record = tmp_path / "state" / "preloaded.json"
    runtime = CountingRuntime()
    assert await preload(runtime, [archive], record) == ["docker.io/library/demo:1"]
    assert await preload(runtime, [archive], record) == ["docker.io/library/demo:1"]
    assert runtime.imports == 1
    archive.write_bytes(b"y" * 11)
    await preload(runtime, [archive], record)
    assert runtime.imports == 2
    runtime.images.clear()
    await preload(runtime, [archive], record)
    assert runtime.imports == 3


async def test_a_missing_archive_is_named(tmp_path: Path) -> None:
    with pytest.raises(errors.InvalidArgument, match="missing.tar"):
        await preload(FakeRuntime(), [tmp_path / "missing.tar"], tmp_path / "r.json")
