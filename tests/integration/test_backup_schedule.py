"""Scheduled backups with retention, switched on for one environment by a reload."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.api._gen.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from tests.integration.test_environments import wait_status
from tests.support.daemon import DaemonProcess
from tests.support.images import TOOLBOX

pytestmark = pytest.mark.integration


def scheduled(daemon: DaemonProcess, env: str) -> int:
    lines = [json.loads(line) for line in daemon.log().splitlines() if line.startswith("{")]
    return sum(1 for r in lines if r.get("event") == "backup.scheduled" and r.get("env") == env)


def test_a_policy_backs_up_its_environment_on_time_and_keeps_the_newest(
    daemon_factory: Any, image_archives: dict[str, Path]
) -> None:
    daemon: DaemonProcess = daemon_factory({"images": {"preload": [str(image_archives[TOOLBOX])]}})
    with daemon.channel() as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)
        for name in ("tick", "other"):
            stub.CreateEnvironment(
                pb.CreateEnvironmentRequest(name=name, spec=pb.EnvironmentSpecification(stack="toolbox")), timeout=10
            )
        for name in ("tick", "other"):
            wait_status(stub, name, {pb.ENVIRONMENT_STATUS_RUNNING}, timeout=120)

        config = yaml.safe_load(daemon.config_path.read_text())
        config["backups"] = {"environments": {"tick": {"every": 1, "keep": 2}}}
        daemon.config_path.write_text(yaml.safe_dump(config))
        daemon.process.send_signal(signal.SIGHUP)

        deadline = time.monotonic() + 90
        while scheduled(daemon, "tick") < 4 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert scheduled(daemon, "tick") >= 4, daemon.log()[-3000:]
        kept = stub.ListBackups(pb.ListBackupsRequest(name="tick"), timeout=10).backups
        assert len(kept) == 2, kept
        assert kept[0].create_time.ToDatetime() > kept[1].create_time.ToDatetime()
        assert len(list((daemon.data_dir / "backups" / "tick").glob("tick-*.tar"))) == 2
        assert scheduled(daemon, "other") == 0
        assert not stub.ListBackups(pb.ListBackupsRequest(name="other"), timeout=10).backups
