"""``scheduler admin backup-state`` while the daemon serves and writes; restore it, and the next start adopts."""

from __future__ import annotations

import sqlite3
import subprocess
import threading
from pathlib import Path

import grpc
import pytest

from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.api._gen.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from tests.integration.test_environments import wait_gone, wait_status
from tests.support.daemon import VENV_BIN, DaemonProcess, start_daemon

pytestmark = pytest.mark.integration

TOOLBOX = "docker.io/schedulerdemo/toolbox:1.0"


def admin(daemon: DaemonProcess, *words: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "scheduler"), "admin", *words, "--config", str(daemon.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def pids(stub: pb_grpc.SchedulerServiceStub, name: str) -> list[int]:
    env = stub.GetEnvironment(pb.GetEnvironmentRequest(name=name), timeout=10)
    return sorted(c.pid for c in env.containers)


def test_a_state_backup_taken_under_writes_restores_and_the_daemon_adopts_what_runs(
    tmp_path: Path, image_archives: dict[str, Path]
) -> None:
    (tmp_path / "d").mkdir()
    daemon = start_daemon(tmp_path / "d", {"images": {"preload": [str(image_archives[TOOLBOX])]}})
    backup = tmp_path / "state-backup.db"
    try:
        with daemon.channel() as channel:
            stub = pb_grpc.SchedulerServiceStub(channel)
            for name in ("kept", "gone-later"):
                spec = pb.EnvironmentSpecification(stack="toolbox", labels={"team": "ops"})
                stub.CreateEnvironment(pb.CreateEnvironmentRequest(name=name, spec=spec), timeout=10)
            for name in ("kept", "gone-later"):
                assert wait_status(stub, name, {pb.ENVIRONMENT_STATUS_RUNNING}, timeout=120)
            before = pids(stub, "kept")
            assert all(before), before

            # A writer changes the other environment's labels (a store write and a history entry
            # each) meanwhile; "kept" is left alone, so that the backup holds its current spec.
            stop = threading.Event()
            writes = [0]

            def write() -> None:
                while not stop.is_set():
                    spec = pb.EnvironmentSpecification(stack="toolbox", labels={"team": "ops", "n": str(writes[0])})
                    request = pb.UpdateEnvironmentRequest(name="gone-later", spec=spec)
                    request.update_mask.paths.append("labels.n")
                    try:
                        stub.UpdateEnvironment(request, timeout=10)
                        writes[0] += 1
                    except grpc.RpcError as err:
                        assert err.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ABORTED), err

            writer = threading.Thread(target=write)
            writer.start()
            while writes[0] < 2 and writer.is_alive():
                threading.Event().wait(0.05)
            try:
                taken = admin(daemon, "backup-state", str(backup))
            finally:
                stop.set()
                writer.join(30)
            assert taken.returncode == 0, taken.stderr
            assert writes[0] >= 2 and not writer.is_alive()
            assert "backed up" in taken.stdout
            again = admin(daemon, "backup-state", str(backup))
            assert again.returncode == 1 and "already exists" in again.stderr

            # After the backup: one environment deleted (its containers go with it).
            stub.DeleteEnvironment(pb.DeleteEnvironmentRequest(name="gone-later"), timeout=10)
            wait_gone(stub, "gone-later")

        with sqlite3.connect(f"file:{backup}?mode=ro", uri=True) as db:
            names = {row[0] for row in db.execute("SELECT name FROM environments")}
            entries = db.execute("SELECT count(*) FROM history WHERE env = 'gone-later'").fetchone()[0]
        assert names == {"kept", "gone-later"}, names
        assert entries >= 1

        refused = admin(daemon, "restore-state", str(backup))
        assert refused.returncode == 1 and "--replace" in refused.stderr, refused.stderr

        assert daemon.stop() == 0
        # The state database is lost; its containers keep running under their shims.
        state = daemon.data_dir / "state.db"
        for path in (state, Path(f"{state}-wal"), Path(f"{state}-shm")):
            path.unlink(missing_ok=True)
        restored = admin(daemon, "restore-state", str(backup))
        assert restored.returncode == 0, restored.stderr

        daemon = start_daemon(tmp_path / "d", reuse_config=True)
        with daemon.channel() as channel:
            stub = pb_grpc.SchedulerServiceStub(channel)
            env = wait_status(stub, "kept", {pb.ENVIRONMENT_STATUS_RUNNING}, timeout=60)
            assert dict(env.spec.labels) == {"team": "ops"}
            assert pids(stub, "kept") == before, "adopted, not restarted"
            history = stub.GetEnvironmentHistory(pb.GetEnvironmentHistoryRequest(name="kept"), timeout=10)
            assert history.entries
            # The backup still listed gone-later, whose containers no longer exist: the start
            # reconciles it instead of pretending it runs.
            ghost = stub.GetEnvironment(pb.GetEnvironmentRequest(name="gone-later"), timeout=10)
            assert ghost.status != pb.ENVIRONMENT_STATUS_RUNNING or all(c.pid not in before for c in ghost.containers)
    finally:
        daemon.delete_all_environments()
        daemon.stop()
        daemon.cleanup()


def test_restore_refuses_a_file_that_is_not_a_state_database(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\n")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    result = subprocess.run(
        [str(VENV_BIN / "scheduler"), "admin", "restore-state", "--config", str(config), str(junk)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and "not an intact database" in result.stderr, result.stderr
    assert not (tmp_path / "data" / "state.db").exists()
