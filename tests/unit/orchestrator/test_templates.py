"""Template logic over a fake runtime whose "initdb" writes files: single-flight builds, failed
and interrupted builds leave nothing used, spares, the first-start wrapper and collection.
The real PostgreSQL path (passwords, init scripts, isolation) is tests/integration/test_templates.py."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from scheduler import domain
from scheduler.orchestrator import pgscripts
from scheduler.orchestrator.templates import Templates, TemplateSettings, plan, wrapped
from scheduler.runtime.fake import FakeRuntime, fake_image
from scheduler.stacks.components import POSTGRES
from scheduler.volumes import overlay
from scheduler.volumes.host import HostVolumeStore
from scheduler.volumes.templates import TemplateStore

IMAGE = fake_image(
    "docker.io/library/postgres:15",
    domain.ImageConfig(entrypoint=("docker-entrypoint.sh",), cmd=("postgres",), env=("PATH=/usr/bin",)),
)
SERVICE = dataclasses.replace(
    POSTGRES,
    image=IMAGE.name,
    env={"POSTGRES_USER": "app", "POSTGRES_DB": "app", "POSTGRES_PASSWORD": "secret"},
)


class InitdbRuntime(FakeRuntime):
    """Template builds "run": they fill their mount as initdb would, then exit with ``code``."""

    def __init__(self, code: int = 0) -> None:
        super().__init__({IMAGE.name: IMAGE})
        self.code = code
        self.builds = 0

    async def start(self, container_id: str) -> int:
        pid = await super().start(container_id)
        config = self.containers[container_id].config
        if container_id.startswith("template."):
            self.builds += 1
            data = Path(config.mounts[0].source)
            (data / "PG_VERSION").write_text("15\n")
            (data / "base").mkdir()
            (data / "base" / "1259").write_bytes(b"x" * 8192)
            (data / pgscripts.MARKER).touch()
            asyncio.get_running_loop().call_later(0.01, self.crash, container_id, self.code)
        return pid


def make(tmp_path: Path, runtime: FakeRuntime, **settings: object) -> tuple[Templates, HostVolumeStore]:
    volumes = HostVolumeStore(tmp_path / "volumes")
    store = TemplateStore(tmp_path / "templates")
    options = {"spare_delay": timedelta(0), "spares": 0, **settings}
    return Templates(store, volumes, runtime, TemplateSettings(**options)), volumes  # type: ignore[arg-type]


async def test_twenty_environments_at_once_share_one_build(tmp_path: Path) -> None:
    runtime = InitdbRuntime()
    templates, volumes = make(tmp_path, runtime)
    services = await asyncio.gather(*(templates.prepare(f"env-{i}", SERVICE, IMAGE) for i in range(20)))
    assert runtime.builds == 1
    assert not runtime.containers, "the build container is removed"
    for i, service in enumerate(services):
        data = volumes.path(f"env-{i}", "pgdata")
        assert (data / "PG_VERSION").read_text() == "15\n"
        # The first start of each copy runs the first-start script, then the image's own process.
        assert service.command[:2] == ("/bin/sh", "-c") and service.command[2] == pgscripts.CLONE_INIT
        assert service.args == ("docker-entrypoint.sh", "postgres")
    [template] = await templates.list()
    assert template.kind == "postgres" and template.image_digest == IMAGE.digest
    assert sorted(template.environments) == sorted(f"env-{i}" for i in range(20))
    assert template.parameters["user"] == "app" and "password" not in str(template.parameters).lower()


async def test_a_volume_with_data_is_left_alone_and_runs_the_entrypoint_directly(tmp_path: Path) -> None:
    templates, volumes = make(tmp_path, InitdbRuntime())
    path = volumes.ensure("kept", "pgdata")
    (path / "PG_VERSION").write_text("14\n")
    assert await templates.prepare("kept", SERVICE, IMAGE) is SERVICE
    assert (path / "PG_VERSION").read_text() == "14\n"
    # A copy whose first start did not finish (the marker is still there) runs it again.
    (path / pgscripts.MARKER).touch()
    assert (await templates.prepare("kept", SERVICE, IMAGE)).command[:2] == ("/bin/sh", "-c")


async def test_a_failed_build_leaves_no_template_and_falls_back_to_the_image(tmp_path: Path) -> None:
    templates, volumes = make(tmp_path, InitdbRuntime(code=1))
    assert await templates.prepare("one", SERVICE, IMAGE) is SERVICE
    assert await templates.list() == []
    assert [p.name for p in (tmp_path / "templates").iterdir()] == []
    assert not volumes.exists("one", "pgdata")


async def test_a_build_interrupted_by_a_crash_is_never_used_and_is_swept(tmp_path: Path) -> None:
    store = TemplateStore(tmp_path / "templates")
    build = store.begin()
    (build.data / "PG_VERSION").write_text("15\n")  # initdb got this far, then the daemon died
    templates, _ = make(tmp_path, InitdbRuntime())
    assert await templates.list() == []
    await templates.start()
    assert list((tmp_path / "templates").iterdir()) == []


async def test_spares_make_a_seed_a_rename(tmp_path: Path) -> None:
    runtime = InitdbRuntime()
    templates, volumes = make(tmp_path, runtime, spares=2)
    await templates.prepare("first", SERVICE, IMAGE)
    [template] = await templates.list()
    spares = tmp_path / "templates" / template.key / "spares"
    for _ in range(100):
        if len([p for p in spares.iterdir() if not p.name.startswith(".")]) == 2:
            break
        await asyncio.sleep(0.02)
    before = {p.name for p in spares.iterdir()}
    assert len(before) == 2
    inode = {(spares / name / "PG_VERSION").stat().st_ino for name in before}
    await templates.prepare("second", SERVICE, IMAGE)
    # The volume's files are one of the spares, moved: same inode, no copy.
    assert (volumes.path("second", "pgdata") / "PG_VERSION").stat().st_ino in inode
    await templates.close()


async def test_collection_keeps_used_templates_and_removes_unused_or_orphaned_ones(tmp_path: Path) -> None:
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    runtime = InitdbRuntime()
    volumes = HostVolumeStore(tmp_path / "volumes")
    settings = TemplateSettings(unused_after=timedelta(hours=1), spares=0)
    templates = Templates(TemplateStore(tmp_path / "templates"), volumes, runtime, settings, clock=lambda: now[0])
    await templates.prepare("a", SERVICE, IMAGE)
    assert await templates.collect(["a"]) == []  # used by a live environment
    assert await templates.collect([]) == []  # unused, but not for an hour yet
    now[0] += timedelta(hours=2)
    [template] = await templates.list()
    assert await templates.collect([]) == [template.key]
    assert await templates.list() == []
    assert volumes.exists("a", "pgdata"), "copies never depend on their template"
    # A template whose image reference now names another digest goes at once when unused.
    await templates.prepare("b", SERVICE, IMAGE)
    runtime.images[IMAGE.name] = dataclasses.replace(IMAGE, digest="sha256:" + "e" * 64)
    assert await templates.collect(["b"]) == []
    assert len(await templates.collect([])) == 1


async def test_a_template_under_a_layered_volume_is_kept(tmp_path: Path) -> None:
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    runtime = InitdbRuntime()
    volumes = HostVolumeStore(tmp_path / "volumes")
    store = TemplateStore(tmp_path / "templates")
    settings = TemplateSettings(unused_after=timedelta(0), spares=0)
    templates = Templates(store, volumes, runtime, settings, clock=lambda: now[0])
    await templates.prepare("a", SERVICE, IMAGE)
    [template] = await templates.list()
    # A layered volume's record names the template as its lower layer (no mount needed to read it),
    # even where no user record says so (a crash between the mount and that record).
    held = tmp_path / "volumes" / "gone" / f"{overlay.PREFIX}pgdata"
    held.mkdir(parents=True)
    (held / overlay.RECORD).write_text(str(store.data(template.key)))
    now[0] += timedelta(hours=2)
    assert await templates.collect([]) == []
    (held / overlay.RECORD).unlink()
    assert await templates.collect([]) == [template.key]
    await templates.close()


async def test_a_spare_is_taken_before_an_overlay_is_made(tmp_path: Path) -> None:
    runtime = InitdbRuntime()
    volumes = HostVolumeStore(tmp_path / "volumes")
    store = TemplateStore(tmp_path / "templates")
    copying = Templates(store, volumes, runtime, TemplateSettings(spares=0))
    await copying.prepare("a", SERVICE, IMAGE)  # builds the template; a's volume is a copy
    await copying.close()
    [template] = await copying.list()
    assert store.add_spare(template.key) and store.spares(template.key) == 1
    [spare] = [p for p in (tmp_path / "templates" / template.key / "spares").iterdir() if not p.name.startswith(".")]
    inode = (spare / "PG_VERSION").stat().st_ino
    layering = Templates(store, volumes, runtime, TemplateSettings(spares=0, overlay=True))
    await layering.prepare("b", SERVICE, IMAGE)
    # b's volume is the spare, moved (same inode), not an overlay on the template.
    assert store.spares(template.key) == 0
    assert (volumes.path("b", "pgdata") / "PG_VERSION").stat().st_ino == inode
    assert not (volumes.path("b", "pgdata").parent / f"{overlay.PREFIX}pgdata").exists()
    await layering.close()


async def test_templates_and_spares_are_flushed_before_they_appear(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import scheduler.volumes.templates as stored

    flushed: list[tuple[Path, int]] = []
    store = TemplateStore(tmp_path / "templates")

    def spy(path: Path) -> None:
        # What was flushed, and how many templates and spares were visible at that moment.
        visible = [p for p in (tmp_path / "templates").rglob("*") if p.parent.name in ("templates", "spares")]
        flushed.append((path, len([p for p in visible if not p.name.startswith(".")])))

    monkeypatch.setattr(stored, "sync_filesystem", spy)
    templates = Templates(store, HostVolumeStore(tmp_path / "volumes"), InitdbRuntime(), TemplateSettings(spares=0))
    await templates.prepare("a", SERVICE, IMAGE)
    await templates.close()
    [template] = await templates.list()
    assert len(flushed) == 1 and flushed[0][1] == 0  # the build, before it became the template
    assert store.add_spare(template.key)
    [spare] = [p for p in (tmp_path / "templates" / template.key / "spares").iterdir()]
    assert len(flushed) == 2 and flushed[1][1] == 1  # the copy, before it became a spare (only the template then)
    assert flushed[1][0].parent == spare.parent and flushed[1][0].name.startswith(".")


def test_plan_keys_on_the_digest_and_the_parameters_and_skips_what_it_cannot_copy() -> None:
    base = plan(SERVICE, IMAGE)
    assert base is not None and base.subpath == "" and base.mount.name == "pgdata"
    assert plan(dataclasses.replace(SERVICE, env={**SERVICE.env, "POSTGRES_PASSWORD": "other"}), IMAGE) == base
    for change in ({"POSTGRES_DB": "shop"}, {"POSTGRES_USER": "x"}, {"LANG": "de_DE.UTF-8"}):
        other = plan(dataclasses.replace(SERVICE, env={**SERVICE.env, **change}), IMAGE)
        assert other is not None and other.key != base.key
    moved = plan(SERVICE, dataclasses.replace(IMAGE, digest="sha256:" + "f" * 64))
    assert moved is not None and moved.key != base.key
    nested = plan(dataclasses.replace(SERVICE, env={**SERVICE.env, "PGDATA": "/var/lib/postgresql/data/pg"}), IMAGE)
    assert nested is not None and nested.subpath == "pg"
    for hidden in ("POSTGRES_INITDB_WALDIR", "POSTGRES_USER_FILE", "POSTGRES_DB_FILE"):
        assert plan(dataclasses.replace(SERVICE, env={**SERVICE.env, hidden: "/x"}), IMAGE) is None
    assert plan(dataclasses.replace(SERVICE, volumes=()), IMAGE) is None
    assert plan(dataclasses.replace(SERVICE, env={}), IMAGE) is None


def test_the_wrapper_keeps_the_docker_rule_for_entrypoint_and_cmd() -> None:
    assert wrapped(SERVICE, IMAGE.config).args == ("docker-entrypoint.sh", "postgres")
    custom = dataclasses.replace(SERVICE, command=("my-entry",))
    assert wrapped(custom, IMAGE.config).args == ("my-entry",)
    custom = dataclasses.replace(SERVICE, args=("postgres", "-c", "fsync=off"))
    assert wrapped(custom, IMAGE.config).args == ("docker-entrypoint.sh", "postgres", "-c", "fsync=off")


@pytest.mark.parametrize("script", [pgscripts.BUILD, pgscripts.CLONE_INIT])
def test_the_scripts_parse_as_posix_shell(script: str, tmp_path: Path) -> None:
    import subprocess

    checked = subprocess.run(["sh", "-n", "-c", script], capture_output=True, text=True, timeout=10)
    assert checked.returncode == 0, checked.stderr


@pytest.mark.parametrize(
    ("user", "password", "statement"),
    [
        ("app", "AKcELm-8vTR20HMhD2EI10eKq", """ALTER ROLE "app" PASSWORD 'AKcELm-8vTR20HMhD2EI10eKq';"""),
        ("app", "it's", """ALTER ROLE "app" PASSWORD 'it''s';"""),
        ('we"ird', "back\\slash $HOME `id` $(id)", """ALTER ROLE "we""ird" PASSWORD 'back\\slash $HOME `id` $(id)';"""),
        ("app", "a'b\\c\"d%s", """ALTER ROLE "app" PASSWORD 'a''b\\c"d%s';"""),
        ("app", "two\nlines\n", """ALTER ROLE "app" PASSWORD 'two\nlines';"""),
    ],
)
def test_the_first_start_of_a_copy_sets_the_password_it_is_given(
    user: str, password: str, statement: str, tmp_path: Path
) -> None:
    """CLONE_INIT hands single-user mode the one statement, quoted (with or without sed), and
    then runs the entrypoint; the marker goes. ``postgres`` here records what it reads."""
    import subprocess

    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "id").write_text("#!/bin/sh\necho 1000\n")  # not root: no chown, no su
    (tools / "postgres").write_text(f'#!/bin/sh\necho "$*" > {tmp_path}/args\ncat > {tmp_path}/stdin\n')
    for tool in tools.iterdir():
        tool.chmod(0o755)
    data = tmp_path / "data"
    data.mkdir()
    (data / pgscripts.MARKER).touch()
    env = {"PATH": f"{tools}:/usr/bin:/bin", "PGDATA": str(data), "POSTGRES_USER": user, "POSTGRES_PASSWORD": password}
    done = subprocess.run(
        ["sh", "-c", pgscripts.CLONE_INIT, "first-start", "sh", "-c", f"touch {tmp_path}/entrypoint"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "stdin").read_text() == statement + "\n\n"
    assert "--single" in (tmp_path / "args").read_text()
    assert (tmp_path / "entrypoint").exists() and not (data / pgscripts.MARKER).exists()
