"""PostgreSQL from a template on real containerd with the PostgreSQL image: two environments
created at once share one initdb, each gets its own password (the other's is refused) and its
own init scripts run, their rows stay apart, the template holds no password, each volume is an
overlay on it (ext4) that its deletion unmounts, and it is listed and collected once nothing uses it."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.api._gen.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from tests.integration.test_environments import wait_gone, wait_status
from tests.support.daemon import start_daemon
from tests.support.images import POSTGRES
from tests.support.processes import mounts_under

pytestmark = pytest.mark.integration

PSQL = "/usr/lib/postgresql/15/bin/psql"
PASSWORDS = {"tpl-a": "alpha-Pw'1\\x", "tpl-b": 'bravo-Pw"2'}
INIT_SQL = "CREATE TABLE notes (body text);\nINSERT INTO notes VALUES ('from init script');\n"


def psql(port: int, password: str, sql: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "10"}
    argv = [PSQL, "-X", "-tA", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(port), "-U", "app", "-d", "app"]
    return subprocess.run([*argv, "-c", sql], env=env, capture_output=True, text=True, timeout=30)


def query(port: int, password: str, sql: str) -> str:
    deadline = time.monotonic() + 30
    while True:  # RUNNING means TCP accepts; the first login may still race the server's start-up
        done = psql(port, password, sql)
        if done.returncode == 0 or time.monotonic() > deadline or "password authentication" in done.stderr:
            break
        time.sleep(0.2)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def files_containing(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and needle in p.read_bytes()]


def test_two_environments_from_one_template(daemon_factory: Any, image_archives: dict[str, Path]) -> None:
    if not Path(PSQL).exists():
        pytest.fail(f"{PSQL} is missing: scripts/install-system.sh installs postgresql-15")
    daemon = daemon_factory(
        {
            "images": {"preload": [str(image_archives[POSTGRES])]},
            "templates": {"gc_interval": 1, "unused_after": 0},
        }
    )
    # Init scripts come from a volume the test fills before the environment exists.
    for name in PASSWORDS:
        scripts = daemon.data_dir / "volumes" / name / "initdb"
        scripts.mkdir(parents=True)
        (scripts / "01-notes.sql").write_text(INIT_SQL + f"INSERT INTO notes VALUES ('only in {name}');\n")
        os.chmod(scripts.parent, 0o700)
    with daemon.channel() as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)
        for name, password in PASSWORDS.items():
            service = pb.ContainerConfiguration(
                volumes=[
                    pb.VolumeMount(name="pgdata", path="/var/lib/postgresql/data"),
                    pb.VolumeMount(name="initdb", path="/docker-entrypoint-initdb.d", read_only=True),
                ]
            )
            spec = pb.EnvironmentSpecification(
                stack="postgres", parameters={"postgres_password": password}, services={"postgres": service}
            )
            stub.CreateEnvironment(pb.CreateEnvironmentRequest(name=name, spec=spec), timeout=10)
        ports = {}
        for name in PASSWORDS:
            env = wait_status(stub, name, {pb.ENVIRONMENT_STATUS_RUNNING, pb.ENVIRONMENT_STATUS_FAILED})
            assert env.status == pb.ENVIRONMENT_STATUS_RUNNING, env
            ports[name] = next(e.host_port for e in env.endpoints if e.service == "postgres")

        # On ext4 (no reflinks) each volume is an overlay mount on the template, not a copy.
        volumes = daemon.data_dir / "volumes"
        assert sorted(mounts_under(volumes)) == sorted(str(volumes / n / "pgdata") for n in PASSWORDS)
        # One initdb for both, and one template on disk, listed with both environments.
        assert daemon.log().count('"templates.built"') == 1, daemon.log()[-3000:]
        templates = [p for p in (daemon.data_dir / "templates").iterdir() if not p.name.startswith(".")]
        assert len(templates) == 1
        template = templates[0]
        listed = stub.ListTemplates(pb.ListTemplatesRequest(), timeout=10).templates
        assert [t.key for t in listed] == [template.name]
        assert listed[0].kind == "postgres" and listed[0].image_digest.startswith("sha256:")
        assert sorted(listed[0].environments) == sorted(PASSWORDS)
        assert listed[0].parameters["user"] == "app" and listed[0].size_bytes > 1_000_000

        a, b = ports["tpl-a"], ports["tpl-b"]
        pa, pb_ = PASSWORDS["tpl-a"], PASSWORDS["tpl-b"]
        # Each environment's own password works; the other's is refused, both ways.
        assert query(a, pa, "SELECT current_user") == "app"
        assert query(b, pb_, "SELECT current_user") == "app"
        for port, wrong in ((a, pb_), (b, pa)):
            refused = psql(port, wrong, "SELECT 1")
            assert refused.returncode != 0 and "password authentication failed" in refused.stderr, refused
        # Each ran its own init scripts, on its own copy; rows written in one stay there.
        assert query(a, pa, "SELECT body FROM notes ORDER BY body") == "from init script\nonly in tpl-a"
        assert query(b, pb_, "SELECT body FROM notes ORDER BY body") == "from init script\nonly in tpl-b"
        query(a, pa, "INSERT INTO notes VALUES ('written in a')")
        assert query(b, pb_, "SELECT count(*) FROM notes WHERE body = 'written in a'") == "0"
        assert query(a, pa, "SELECT count(*) FROM notes WHERE body = 'written in a'") == "1"

        # The template holds no password: no SCRAM verifier at all, while each copy holds its own.
        verifier = query(a, pa, "SELECT rolpassword FROM pg_authid WHERE rolname = 'app'")
        assert verifier.startswith("SCRAM-SHA-256$")
        assert files_containing(template, b"SCRAM-SHA-256$") == []
        assert files_containing(daemon.data_dir / "volumes" / "tpl-a" / "pgdata", verifier.encode())
        assert files_containing(daemon.data_dir / "volumes" / "tpl-b" / "pgdata", verifier.encode()) == []
        # The copy's files belong to the database's user, with no setuid path, like the template's.
        owners = {p.stat().st_uid for p in (daemon.data_dir / "volumes" / "tpl-a" / "pgdata").rglob("*")}
        assert owners == {template.joinpath("data").stat().st_uid} and owners != {0}

        for name in PASSWORDS:
            stub.DeleteEnvironment(pb.DeleteEnvironmentRequest(name=name), timeout=10)
            wait_gone(stub, name)
        assert mounts_under(daemon.data_dir) == [], "a deleted environment leaves no mount behind"
        # Unused now (and unused_after is 0): the collector removes it within a few intervals.
        deadline = time.monotonic() + 30
        while template.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not template.exists()
        assert stub.ListTemplates(pb.ListTemplatesRequest(), timeout=10).templates == []


def test_a_layered_volume_survives_a_restart_and_a_lost_mount(
    daemon_factory: Any, image_archives: dict[str, Path]
) -> None:
    """Adopted as it is after a restart; mounted again at start when its mount is gone (a reboot)."""
    daemon = daemon_factory({"images": {"preload": [str(image_archives[POSTGRES])]}})
    password = "restart-Pw1"
    volume = daemon.data_dir / "volumes" / "tpl-r" / "pgdata"

    def running(stub: pb_grpc.SchedulerServiceStub) -> int:
        env = wait_status(stub, "tpl-r", {pb.ENVIRONMENT_STATUS_RUNNING, pb.ENVIRONMENT_STATUS_FAILED})
        assert env.status == pb.ENVIRONMENT_STATUS_RUNNING, env
        return next(e.host_port for e in env.endpoints if e.service == "postgres")

    with daemon.channel() as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)
        spec = pb.EnvironmentSpecification(stack="postgres", parameters={"postgres_password": password})
        stub.CreateEnvironment(pb.CreateEnvironmentRequest(name="tpl-r", spec=spec), timeout=10)
        query(running(stub), password, "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('before')")
    assert mounts_under(volume.parent.parent) == [str(volume)]
    assert daemon.stop() == 0
    restarted = start_daemon(daemon.config_path.parent, None, wait=True, reuse_config=True)
    try:
        with restarted.channel() as channel:
            stub = pb_grpc.SchedulerServiceStub(channel)
            assert query(running(stub), password, "SELECT v FROM kept") == "before"
            assert mounts_under(volume.parent.parent) == [str(volume)], "adopted, not mounted twice"
            stub.StopEnvironment(pb.StopEnvironmentRequest(name="tpl-r"), timeout=30)
            wait_status(stub, "tpl-r", {pb.ENVIRONMENT_STATUS_STOPPED})
        assert restarted.stop() == 0
        # As after a reboot: nothing runs and the mount is gone; the volume directory is empty.
        subprocess.run(["umount", str(volume)], check=True, timeout=30)
        assert not any(volume.iterdir())
        restarted = start_daemon(daemon.config_path.parent, None, wait=True, reuse_config=True)
        with restarted.channel() as channel:
            stub = pb_grpc.SchedulerServiceStub(channel)
            assert mounts_under(volume.parent.parent) == [str(volume)], "mounted again at start"
            stub.StartEnvironment(pb.StartEnvironmentRequest(name="tpl-r"), timeout=30)
            assert query(running(stub), password, "SELECT v FROM kept") == "before"
            stub.DeleteEnvironment(pb.DeleteEnvironmentRequest(name="tpl-r"), timeout=10)
            wait_gone(stub, "tpl-r")
        assert mounts_under(daemon.data_dir) == []
    finally:
        restarted.delete_all_environments()
        restarted.stop()
