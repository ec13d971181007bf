"""The v1 API contract against a real daemon: etags, field masks, resumable watches, paging,
filters, and a machine-readable ErrorInfo on every failure of every RPC."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, json_format
from google.rpc import error_details_pb2, status_pb2

from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.api._gen.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from tests.integration.test_environments import wait_gone as _gone
from tests.support.daemon import DaemonProcess, running_daemon

pytestmark = pytest.mark.integration

TIMEOUT = 120


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, image_archives: dict[str, Path]) -> Iterator[DaemonProcess]:
    toolbox = [p for name, p in image_archives.items() if "toolbox" in name]
    with running_daemon(tmp_path_factory.mktemp("apiv1"), toolbox) as process:
        yield process


@pytest.fixture(scope="module")
def stub(daemon: DaemonProcess) -> Iterator[pb_grpc.SchedulerServiceStub]:
    with daemon.channel() as channel:
        yield pb_grpc.SchedulerServiceStub(channel)


def _create(stub: pb_grpc.SchedulerServiceStub, name: str, **env: str) -> pb.Environment:
    spec = pb.EnvironmentSpecification(stack="toolbox", services={"toolbox": pb.ContainerConfiguration(env=env)})
    return stub.CreateEnvironment(pb.CreateEnvironmentRequest(name=name, spec=spec), timeout=30)


def _until(
    stub: pb_grpc.SchedulerServiceStub, name: str, check: Callable[[pb.Environment], bool], what: str
) -> pb.Environment:
    deadline = time.monotonic() + TIMEOUT
    while True:
        env = stub.GetEnvironment(pb.GetEnvironmentRequest(name=name), timeout=10)
        if check(env):
            return env
        assert time.monotonic() < deadline, f"{name} never {what}: {env}"
        time.sleep(0.2)


def _running(stub: pb_grpc.SchedulerServiceStub, name: str) -> pb.Environment:
    return _until(stub, name, lambda e: e.status == pb.ENVIRONMENT_STATUS_RUNNING, "ran")


def _delete(stub: pb_grpc.SchedulerServiceStub, *names: str) -> None:
    for name in names:
        stub.DeleteEnvironment(pb.DeleteEnvironmentRequest(name=name), timeout=10)
    for name in names:
        _gone(stub, name)


def error_details(err: grpc.RpcError) -> dict[str, Any]:
    """The google.rpc details of a failed call, by type name."""
    found: dict[str, Any] = {}
    for key, value in err.trailing_metadata() or ():  # type: ignore[attr-defined]
        if key != "grpc-status-details-bin":
            continue
        status = status_pb2.Status.FromString(value)
        assert status.code == err.code().value[0] and status.message == err.details()  # type: ignore[attr-defined]
        for item in status.details:
            for kind in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest, error_details_pb2.RetryInfo):
                if item.Is(kind.DESCRIPTOR):
                    detail = kind()
                    item.Unpack(detail)
                    found[kind.__name__] = detail
    return found


def test_two_updates_with_the_same_etag_one_wins_the_other_is_aborted(stub: pb_grpc.SchedulerServiceStub) -> None:
    _create(stub, "race", A="0")
    read = _running(stub, "race")
    assert read.etag

    def update(value: str) -> Any:
        spec = pb.EnvironmentSpecification(
            stack="toolbox", services={"toolbox": pb.ContainerConfiguration(env={"A": value})}
        )
        return stub.UpdateEnvironment.future(
            pb.UpdateEnvironmentRequest(name="race", spec=spec, etag=read.etag), timeout=30
        )

    calls = [update("1"), update("2")]
    outcomes = []
    for call in calls:
        try:
            outcomes.append(("ok", call.result()))
        except grpc.RpcError as err:
            outcomes.append(("error", err))
    assert sorted(kind for kind, _ in outcomes) == ["error", "ok"], outcomes
    err = next(value for kind, value in outcomes if kind == "error")
    winner = next(value for kind, value in outcomes if kind == "ok")
    assert err.code() == grpc.StatusCode.ABORTED
    info = error_details(err)["ErrorInfo"]
    assert info.domain == "scheduler.v1" and info.reason == "ETAG_MISMATCH"
    assert info.metadata["environment"] == "race"
    current = stub.GetEnvironment(pb.GetEnvironmentRequest(name="race"), timeout=10)
    assert info.metadata["etag"] != read.etag
    assert "RetryInfo" in error_details(err)
    assert current.generation == read.generation + 1
    assert current.spec.services["toolbox"].env == winner.environment.spec.services["toolbox"].env

    # A delete with the stale etag is refused too; with the current one it goes through.
    with pytest.raises(grpc.RpcError) as stale:
        stub.DeleteEnvironment(pb.DeleteEnvironmentRequest(name="race", etag=read.etag), timeout=10)
    assert stale.value.code() == grpc.StatusCode.ABORTED
    # Every stored change moves the etag, and the winning update is still rolling out: read the
    # etag once it is done, as a client deleting what it saw settle would.
    latest = _until(
        stub,
        "race",
        lambda e: e.status == pb.ENVIRONMENT_STATUS_RUNNING and e.observed_generation == e.generation,
        "rolled out",
    )
    stub.DeleteEnvironment(pb.DeleteEnvironmentRequest(name="race", etag=latest.etag), timeout=10)
    _gone(stub, "race")


def test_an_update_mask_of_one_env_entry_changes_only_that(stub: pb_grpc.SchedulerServiceStub) -> None:
    spec = pb.EnvironmentSpecification(
        stack="toolbox",
        labels={"team": "web"},
        services={"toolbox": pb.ContainerConfiguration(env={"A": "1", "B": "1"})},
    )
    stub.CreateEnvironment(pb.CreateEnvironmentRequest(name="masked", spec=spec), timeout=30)
    before = _running(stub, "masked")
    given = pb.EnvironmentSpecification(
        stack="toolbox",
        labels={"team": "ops"},
        services={"toolbox": pb.ContainerConfiguration(env={"A": "9", "B": "2"}, replicas=3)},
    )
    mask = field_mask_pb2.FieldMask(paths=["services.toolbox.env.B"])
    planned = stub.UpdateEnvironment(
        pb.UpdateEnvironmentRequest(name="masked", spec=given, update_mask=mask, validate_only=True), timeout=30
    )
    assert [(c.service, c.action) for c in planned.plan] == [("toolbox", pb.CHANGE_ACTION_REPLACE)]
    assert stub.GetEnvironment(pb.GetEnvironmentRequest(name="masked"), timeout=10).generation == before.generation

    stub.UpdateEnvironment(pb.UpdateEnvironmentRequest(name="masked", spec=given, update_mask=mask), timeout=30)
    after = _until(
        stub, "masked", lambda e: e.observed_generation == before.generation + 1 and e.status == 3, "rolled out"
    )
    expected = pb.EnvironmentSpecification()
    expected.CopyFrom(before.spec)
    expected.services["toolbox"].env["B"] = "2"
    assert after.spec == expected
    (service,) = after.services
    assert service.config.env["A"] == "1" and service.config.env["B"] == "2" and service.config.replicas == 1
    _delete(stub, "masked")


class Watcher:
    """WatchEvents in a thread, recording every non-heartbeat event."""

    def __init__(self, daemon: DaemonProcess, since: int | None = None) -> None:
        self.events: list[pb.Event] = []
        self.heartbeats: list[pb.Event] = []
        self._channel = daemon.channel()
        request = pb.WatchEventsRequest(since=since) if since is not None else pb.WatchEventsRequest()
        request.heartbeat_interval.FromSeconds(1)
        self._call = pb_grpc.SchedulerServiceStub(self._channel).WatchEvents(request, timeout=300)
        self.error: grpc.RpcError | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for event in self._call:
                (self.heartbeats if event.type == pb.EVENT_TYPE_HEARTBEAT else self.events).append(event)
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.CANCELLED:
                self.error = err

    def wait(self, check: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert self.error is None, self.error
            assert time.monotonic() < deadline, f"watcher never saw {what}: {self.events}"
            time.sleep(0.1)

    def close(self) -> None:
        self._call.cancel()
        self._thread.join(10)
        self._channel.close()


def _key(event: pb.Event) -> tuple[Any, ...]:
    return (event.sequence, event.type, event.environment, event.service, event.container_id, event.message)


def test_a_watcher_resumes_with_since_and_gets_exactly_the_missed_events_then_live_ones(
    daemon: DaemonProcess, stub: pb_grpc.SchedulerServiceStub
) -> None:
    reference = Watcher(daemon)  # stays connected throughout: the truth to compare against
    watcher = Watcher(daemon)
    try:
        _create(stub, "w-0")
        watcher.wait(lambda: any(e.environment == "w-0" for e in watcher.events), "w-0 created")
        watcher.close()
        last = watcher.events[-1].sequence

        # Disconnected while three environments change.
        for name in ("w-1", "w-2", "w-3"):
            _create(stub, name)
        for name in ("w-1", "w-2", "w-3"):
            _running(stub, name)
        reference.wait(
            lambda: (
                {"w-1", "w-2", "w-3"}
                <= {e.environment for e in reference.events if e.type == pb.EVENT_TYPE_ENVIRONMENT_RUNNING}
            ),
            "three running",
        )
        missed = [e for e in reference.events if e.sequence > last]

        resumed = Watcher(daemon, since=last)
        try:
            resumed.wait(lambda: len(resumed.events) >= len(missed), f"{len(missed)} missed events")
            assert [_key(e) for e in resumed.events[: len(missed)]] == [_key(e) for e in missed]
            # Then live ones, in sequence.
            stub.DeleteEnvironment(pb.DeleteEnvironmentRequest(name="w-1"), timeout=10)
            resumed.wait(
                lambda: any(
                    e.type == pb.EVENT_TYPE_ENVIRONMENT_DELETED and e.environment == "w-1" for e in resumed.events
                ),
                "w-1 deleted",
            )
            sequences = [e.sequence for e in resumed.events]
            assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
            assert sequences[0] == last + 1
            # Once things are quiet, a heartbeat carries the latest sequence (to resume from).
            resumed.wait(
                lambda: bool(resumed.heartbeats) and resumed.heartbeats[-1].sequence >= resumed.events[-1].sequence,
                "a heartbeat after the last event",
                timeout=60,
            )
        finally:
            resumed.close()
    finally:
        watcher.close()
        reference.close()
    _delete(stub, "w-0", "w-2", "w-3")
    _gone(stub, "w-1")


def test_lists_page_and_filter(stub: pb_grpc.SchedulerServiceStub) -> None:
    for name in ("pr-1", "pr-2", "main-1"):
        _create(stub, name)
    prefixed = stub.ListEnvironments(pb.ListEnvironmentsRequest(filter="name=pr-* stack=toolbox"), timeout=10)
    assert [e.name for e in prefixed.environments] == ["pr-1", "pr-2"]
    names, token = [], ""
    for _ in range(10):
        page = stub.ListEnvironments(
            pb.ListEnvironmentsRequest(page_size=1, page_token=token, filter="name!=pr-1"), timeout=10
        )
        names += [e.name for e in page.environments]
        token = page.next_page_token
        if not token:
            break
    assert names == ["pr-2", "main-1"]
    stacks, token = [], ""
    for _ in range(10):
        reply = stub.ListStacks(pb.ListStacksRequest(page_size=1, page_token=token), timeout=10)
        stacks += [s.name for s in reply.stacks]
        token = reply.next_page_token
        if not token:
            break
    assert stacks == sorted(stacks) and "toolbox" in stacks and len(stacks) > 1
    _delete(stub, "pr-1", "pr-2", "main-1")
    entries, token = [], ""
    for _ in range(10):
        history = stub.GetEnvironmentHistory(
            pb.GetEnvironmentHistoryRequest(name="pr-1", page_size=1, page_token=token), timeout=10
        )
        entries += [h.action for h in history.entries]
        token = history.next_page_token
        if not token:
            break
    assert entries[0] == "create" and "delete" in entries


def _call(stub: pb_grpc.SchedulerServiceStub, rpc: str, request: dict[str, Any]) -> None:
    input_type = pb.DESCRIPTOR.services_by_name["SchedulerService"].methods_by_name[rpc].input_type
    message = json_format.ParseDict(request, getattr(pb, input_type.name)())
    reply = getattr(stub, rpc)(message, timeout=15)
    if rpc in ("GetEnvironmentLogs", "WatchEvents"):
        next(iter(reply))


# Every RPC with each way a client can make it fail: (rpc, request, code, reason, bad field or None).
FAILURES = [
    (
        "CreateEnvironment",
        {"name": "Bad_Name", "spec": {"stack": "toolbox"}},
        "INVALID_ARGUMENT",
        "INVALID_ARGUMENT",
        "name",
    ),
    (
        "CreateEnvironment",
        {"name": "x", "spec": {"stack": "nope"}},
        "INVALID_ARGUMENT",
        "INVALID_ARGUMENT",
        "spec.stack",
    ),
    ("CreateEnvironment", {"name": "fm", "spec": {"stack": "toolbox"}}, "ALREADY_EXISTS", "ALREADY_EXISTS", None),
    (
        "CreateEnvironment",
        {"name": "fm", "spec": {"stack": "toolbox"}, "validateOnly": True},
        "ALREADY_EXISTS",
        "ALREADY_EXISTS",
        None,
    ),
    ("GetEnvironment", {"name": "missing"}, "NOT_FOUND", "NOT_FOUND", None),
    ("GetEnvironment", {"name": ""}, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "name"),
    ("CloneEnvironment", {"source": "missing", "name": "fm-copy"}, "NOT_FOUND", "NOT_FOUND", None),
    ("CloneEnvironment", {"source": "fm", "name": "Bad_Name"}, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "name"),
    ("StopEnvironment", {"name": "missing"}, "NOT_FOUND", "NOT_FOUND", None),
    ("StartEnvironment", {"name": "missing"}, "NOT_FOUND", "NOT_FOUND", None),
    ("UpdateEnvironment", {"name": "missing", "spec": {"stack": "toolbox"}}, "NOT_FOUND", "NOT_FOUND", None),
    (
        "UpdateEnvironment",
        {"name": "fm", "spec": {"stack": "postgres"}},
        "INVALID_ARGUMENT",
        "INVALID_ARGUMENT",
        "spec.stack",
    ),
    (
        "UpdateEnvironment",
        {"name": "fm", "spec": {"stack": "toolbox"}, "updateMask": "nope"},
        "INVALID_ARGUMENT",
        "INVALID_ARGUMENT",
        "update_mask.paths[0]",
    ),
    (
        "UpdateEnvironment",
        {"name": "fm", "spec": {"stack": "toolbox"}, "etag": "stale"},
        "ABORTED",
        "ETAG_MISMATCH",
        None,
    ),
    ("DeleteEnvironment", {"name": "missing"}, "NOT_FOUND", "NOT_FOUND", None),
    ("DeleteEnvironment", {"name": "fm", "etag": "stale"}, "ABORTED", "ETAG_MISMATCH", None),
    ("ListEnvironments", {"filter": "colour=red"}, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "filter"),
    ("ListEnvironments", {"pageToken": "bogus"}, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "page_token"),
    ("ListEnvironments", {"pageSize": -1}, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "page_size"),
    ("GetEnvironmentLogs", {"name": "missing"}, "NOT_FOUND", "NOT_FOUND", None),
    ("GetEnvironmentLogs", {"name": "fm", "services": ["nope"]}, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "services"),
    ("GetEnvironmentMetrics", {"name": "missing"}, "NOT_FOUND", "NOT_FOUND", None),
    ("ListStacks", {"pageToken": "bogus"}, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "page_token"),
    ("WatchEvents", {"since": "999999999"}, "OUT_OF_RANGE", "SEQUENCE_IN_FUTURE", None),
    ("WatchEvents", {"heartbeatInterval": "0.1s"}, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "heartbeat_interval"),
    ("GetEnvironmentHistory", {"name": "never-existed"}, "NOT_FOUND", "NOT_FOUND", None),
    (
        "GetEnvironmentHistory",
        {"name": "fm", "pageToken": "bogus"},
        "INVALID_ARGUMENT",
        "INVALID_ARGUMENT",
        "page_token",
    ),
    ("BackupEnvironment", {"name": "missing"}, "NOT_FOUND", "NOT_FOUND", None),
    ("BackupEnvironment", {"name": ""}, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "name"),
    ("ListBackups", {"name": ""}, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "name"),
    ("ListOperations", {"name": ""}, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "name"),
    ("RestoreEnvironment", {"backup": "no-slash"}, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "backup"),
    ("RestoreEnvironment", {"backup": "missing/missing-20260101T000000Z.tar"}, "NOT_FOUND", "NOT_FOUND", None),
    ("ListOperations", {"name": ""}, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "name"),
    ("CloneEnvironment", {"source": "missing", "name": "copy"}, "NOT_FOUND", "NOT_FOUND", None),
    ("StopEnvironment", {"name": "missing"}, "NOT_FOUND", "NOT_FOUND", None),
    ("StartEnvironment", {"name": "missing"}, "NOT_FOUND", "NOT_FOUND", None),
    ("DrainNode", {"node": ""}, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "node"),
    ("DrainNode", {"node": "no-such-node"}, "NOT_FOUND", "NOT_FOUND", None),
    ("UndrainNode", {"node": ""}, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "node"),
    ("UndrainNode", {"node": "no-such-node"}, "NOT_FOUND", "NOT_FOUND", None),
    # Run with the daemon's configuration file made invalid (see the test).
    ("ReloadConfiguration", {}, "FAILED_PRECONDITION", "FAILED_PRECONDITION", None),
]
INFALLIBLE = {"ListNodes", "ListTemplates"}
"""RPCs with no argument a client could get wrong (ListNodes fails only with etcd unreachable)."""


def test_every_rpc_failure_carries_error_info(daemon: DaemonProcess, stub: pb_grpc.SchedulerServiceStub) -> None:
    _create(stub, "fm")
    rpcs = {name for name, *_ in FAILURES}
    assert rpcs | INFALLIBLE == set(pb.DESCRIPTOR.services_by_name["SchedulerService"].methods_by_name)
    config = daemon.config_path.read_text()
    try:
        for rpc, request, code, reason, field in FAILURES:
            if rpc == "ReloadConfiguration":
                daemon.config_path.write_text(config + "\nlimits: {max_replicas: -5}\n")
            with pytest.raises(grpc.RpcError) as caught:
                _call(stub, rpc, request)
            daemon.config_path.write_text(config)
            err = caught.value
            where = f"{rpc} {request}"
            assert err.code().name == code, f"{where}: {err.code()} {err.details()}"
            details = error_details(err)
            info = details["ErrorInfo"]
            assert info.domain == "scheduler.v1" and info.reason == reason, f"{where}: {info}"
            assert info.metadata["request_id"], where
            if field is not None:
                assert field in [v.field for v in details["BadRequest"].field_violations], f"{where}: {details}"
            if code == "OUT_OF_RANGE":
                assert int(info.metadata["latest_sequence"]) >= 1 and "oldest_sequence" in info.metadata
    finally:
        daemon.config_path.write_text(config)
        _delete(stub, "fm")
