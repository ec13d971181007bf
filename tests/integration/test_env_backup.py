"""Back up an environment with PostgreSQL rows written through the demo backend, delete it,
restore it (same name and a new one) and read the same rows, byte for byte."""

from __future__ import annotations

import io
import json
import tarfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.api._gen.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from tests.integration.test_client_cli import cli
from tests.integration.test_environments import http_get, wait_gone, wait_status
from tests.support.daemon import DaemonProcess, running_daemon
from tests.support.images import BACKEND, POSTGRES

pytestmark = pytest.mark.integration

VALUES = ["first row", "zweite Zeile ü", "third; DROP TABLE items --"]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, image_archives: dict[str, Path]) -> Iterator[DaemonProcess]:
    archives = [image_archives[POSTGRES], image_archives[BACKEND]]
    with running_daemon(tmp_path_factory.mktemp("envbackup"), archives) as process:
        yield process


def backend_url(env: pb.Environment) -> str:
    endpoint = next(e for e in env.endpoints if e.service == "backend")
    return f"http://127.0.0.1:{endpoint.host_port}"


def test_backup_delete_restore_reads_the_same_rows(daemon: DaemonProcess) -> None:
    with daemon.channel() as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)
        stub.CreateEnvironment(
            pb.CreateEnvironmentRequest(
                name="shop", spec=pb.EnvironmentSpecification(stack="api-postgres", labels={"team": "web"})
            ),
            timeout=10,
        )
        env = wait_status(stub, "shop", {pb.ENVIRONMENT_STATUS_RUNNING, pb.ENVIRONMENT_STATUS_FAILED}, timeout=240)
        assert env.status == pb.ENVIRONMENT_STATUS_RUNNING, env
        for value in VALUES:
            request = urllib.request.Request(
                backend_url(env) + "/items?" + urllib.parse.urlencode({"value": value}), method="POST"
            )
            with urllib.request.urlopen(request, timeout=30) as reply:
                assert reply.status == 201
        status, rows = http_get(backend_url(env) + "/items")
        assert status == 200 and [r["value"] for r in json.loads(rows)] == VALUES, rows
        history_before = stub.GetEnvironmentHistory(pb.GetEnvironmentHistoryRequest(name="shop"), timeout=10).entries

        taken = cli(daemon, "env", "backup", "shop", "-o", "json")
        assert taken.returncode == 0, taken.stderr
        backup = json.loads(taken.stdout)
        assert backup["environment"] == "shop" and backup["databases"] == ["postgres"], backup
        listed = cli(daemon, "env", "backups", "shop")
        assert listed.returncode == 0 and backup["id"] in listed.stdout, listed

        archive = daemon.data_dir / "backups" / backup["id"]
        with tarfile.open(archive) as tar:
            manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
            dump = tar.extractfile("databases/postgres.sql").read().decode()  # type: ignore[union-attr]
        assert set(manifest["files"]) == {"environment.json", "history.json", "databases/postgres.sql"}
        assert all(len(f["sha256"]) == 64 for f in manifest["files"].values())
        assert "third; DROP TABLE items --" in dump

        stub.DeleteEnvironment(pb.DeleteEnvironmentRequest(name="shop"), timeout=10)
        wait_gone(stub, "shop")
        assert not (daemon.data_dir / "volumes" / "shop").exists()

        restored = cli(daemon, "env", "restore", backup["id"], "-o", "json", timeout=600)
        assert restored.returncode == 0, restored.stderr
        again = wait_status(stub, "shop", {pb.ENVIRONMENT_STATUS_RUNNING}, timeout=30)
        assert again.spec == env.spec
        status, rows_again = http_get(backend_url(again) + "/items")
        assert status == 200 and rows_again == rows, (rows, rows_again)
        history = stub.GetEnvironmentHistory(pb.GetEnvironmentHistoryRequest(name="shop"), timeout=10).entries
        actions = [h.action for h in history]
        assert [h.action for h in history_before] == actions[: len(history_before)]
        assert "restore" in actions[len(history_before) :], actions

        # The same archive under a new name, next to the original.
        copy = stub.RestoreEnvironment(pb.RestoreEnvironmentRequest(backup=backup["id"], name="shop-copy"), timeout=600)
        assert copy.status == pb.ENVIRONMENT_STATUS_RUNNING and copy.spec == env.spec
        status, rows_copy = http_get(backend_url(copy) + "/items")
        assert status == 200 and rows_copy == rows

        with pytest.raises(grpc.RpcError) as taken_name:
            stub.RestoreEnvironment(pb.RestoreEnvironmentRequest(backup=backup["id"]), timeout=60)
        assert taken_name.value.code() == grpc.StatusCode.ALREADY_EXISTS


def test_a_damaged_or_unknown_archive_is_refused_and_creates_nothing(daemon: DaemonProcess, tmp_path: Path) -> None:
    with daemon.channel() as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)
        with pytest.raises(grpc.RpcError) as bad_id:
            stub.RestoreEnvironment(pb.RestoreEnvironmentRequest(backup="../../etc/passwd"), timeout=30)
        assert bad_id.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "backup" in bad_id.value.details()
        with pytest.raises(grpc.RpcError) as missing:
            stub.RestoreEnvironment(pb.RestoreEnvironmentRequest(backup="nope/nope-20260101T000000Z.tar"), timeout=30)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND

        # An archive whose history was altered after the manifest was written.
        source = next((daemon.data_dir / "backups" / "shop").glob("shop-*.tar"))
        forged = daemon.data_dir / "backups" / "shop" / "shop-20000101T000000Z.tar"
        with tarfile.open(source) as tar, tarfile.open(forged, "w") as out:
            for member in tar.getmembers():
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
                if member.name == "history.json":
                    data = data.replace(b"create", b"forged")
                member.size = len(data)
                out.addfile(member, io.BytesIO(data))
        with pytest.raises(grpc.RpcError) as damaged:
            stub.RestoreEnvironment(
                pb.RestoreEnvironmentRequest(backup=f"shop/{forged.name}", name="forged"), timeout=60
            )
        assert damaged.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "checksum" in damaged.value.details()
        with pytest.raises(grpc.RpcError) as absent:
            stub.GetEnvironment(pb.GetEnvironmentRequest(name="forged"), timeout=10)
        assert absent.value.code() == grpc.StatusCode.NOT_FOUND
        forged.unlink()
