"""What a hostile request costs a real daemon: bounded, refused with INVALID_ARGUMENT naming the
bound, while other clients are still answered; secrets given as overrides never come back."""

from __future__ import annotations

import base64
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from google.protobuf import duration_pb2, json_format, timestamp_pb2

from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.api._gen.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from tests.support.daemon import VENV_BIN, DaemonProcess, running_daemon

pytestmark = pytest.mark.integration

SECRET = "hunter2-override-secret"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, image_archives: dict[str, Path]) -> Iterator[DaemonProcess]:
    with running_daemon(tmp_path_factory.mktemp("cost"), image_archives.values()) as process:
        yield process


@pytest.fixture(scope="module")
def stub(daemon: DaemonProcess) -> Iterator[pb_grpc.SchedulerServiceStub]:
    with daemon.channel() as channel:
        yield pb_grpc.SchedulerServiceStub(channel)


def _code(call: object) -> tuple[grpc.StatusCode, str]:
    try:
        call()  # type: ignore[operator]
    except grpc.RpcError as err:
        return err.code(), err.details() or ""
    return grpc.StatusCode.OK, ""


def _wait(stub: pb_grpc.SchedulerServiceStub, name: str, wanted: set[int], timeout: float = 120) -> pb.Environment:
    deadline = time.monotonic() + timeout
    env = stub.GetEnvironment(pb.GetEnvironmentRequest(name=name), timeout=10)
    while env.status not in wanted and time.monotonic() < deadline:
        time.sleep(0.2)
        env = stub.GetEnvironment(pb.GetEnvironmentRequest(name=name), timeout=10)
    assert env.status in wanted, env
    return env


def _wait_gone(stub: pb_grpc.SchedulerServiceStub, name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code, _ = _code(lambda: stub.GetEnvironment(pb.GetEnvironmentRequest(name=name), timeout=10))
        if code == grpc.StatusCode.NOT_FOUND:
            return
        time.sleep(0.2)
    raise AssertionError(f"{name} was not deleted within {timeout}s")


@pytest.fixture(scope="module")
def bystander(stub: pb_grpc.SchedulerServiceStub) -> str:
    """An environment that must keep running through every hostile request."""
    stub.CreateEnvironment(
        pb.CreateEnvironmentRequest(name="bystander", spec=pb.EnvironmentSpecification(stack="toolbox")), timeout=10
    )
    _wait(stub, "bystander", {pb.ENVIRONMENT_STATUS_RUNNING})
    return "bystander"


def _toolbox(**config: object) -> pb.EnvironmentSpecification:
    return pb.EnvironmentSpecification(stack="toolbox", services={"toolbox": pb.ContainerConfiguration(**config)})


def test_a_one_megabyte_command_is_refused_while_others_are_answered(
    stub: pb_grpc.SchedulerServiceStub, bystander: str
) -> None:
    answered: list[float] = []

    def get_meanwhile() -> None:
        for _ in range(20):
            started = time.monotonic()
            stub.GetEnvironment(pb.GetEnvironmentRequest(name=bystander), timeout=5)
            answered.append(time.monotonic() - started)

    reader = threading.Thread(target=get_meanwhile)
    reader.start()
    results = []
    for size in (1024 * 1024 - 4096, 600 * 1024, 70 * 1024):
        request = pb.CreateEnvironmentRequest(
            name="big", spec=pb.EnvironmentSpecification(stack="toolbox", parameters={"command": "echo " + "x" * size})
        )
        results.append(_code(lambda request=request: stub.CreateEnvironment(request, timeout=10)))
    reader.join(60)
    for code, details in results:
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        assert "spec" in details and len(details) < 2200
    assert "spec.parameters.command" in results[2][1] and "65536" in results[2][1]
    assert len(answered) == 20, "GetEnvironment calls failed while the large commands were refused"
    print(f"concurrent GetEnvironment: slowest {max(answered) * 1000:.0f} ms over {len(answered)} calls")
    assert _code(lambda: stub.GetEnvironment(pb.GetEnvironmentRequest(name="big"), timeout=5))[0] == (
        grpc.StatusCode.NOT_FOUND
    )


def test_ten_thousand_ports_are_refused_before_any_rule(
    daemon: DaemonProcess, stub: pb_grpc.SchedulerServiceStub, bystander: str
) -> None:
    instance = yaml.safe_load(daemon.config_path.read_text())["network"]["instance"]

    def own_rules() -> list[str]:
        saved = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True, check=True).stdout
        return [line for line in saved.splitlines() if line.startswith("-A") and instance in line]

    before = own_rules()
    ports = [pb.PortMapping(container_port=p, publish=True) for p in range(1, 10001)]
    code, details = _code(
        lambda: stub.CreateEnvironment(
            pb.CreateEnvironmentRequest(name="ports", spec=_toolbox(ports=ports)), timeout=10
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "spec.services.toolbox.ports" in details and "at most 64" in details
    assert own_rules() == before
    assert _wait(stub, bystander, {pb.ENVIRONMENT_STATUS_RUNNING}, timeout=5).status == pb.ENVIRONMENT_STATUS_RUNNING


def test_an_override_password_is_stored_but_never_returned_or_logged(
    daemon: DaemonProcess, stub: pb_grpc.SchedulerServiceStub
) -> None:
    spec = _toolbox(env={"POSTGRES_PASSWORD": SECRET, "LOG_LEVEL": "debug"})
    spec.parameters["command"] = (
        "sh -c 'echo password-length-${#POSTGRES_PASSWORD}; trap \"exit 0\" TERM; while :; do sleep 1; done'"
    )
    created = stub.CreateEnvironment(pb.CreateEnvironmentRequest(name="secretive", spec=spec), timeout=10)
    env = _wait(stub, "secretive", {pb.ENVIRONMENT_STATUS_RUNNING})
    listed = stub.ListEnvironments(pb.ListEnvironmentsRequest(), timeout=10)
    dry = stub.UpdateEnvironment(
        pb.UpdateEnvironmentRequest(name="secretive", spec=spec, validate_only=True), timeout=10
    )
    cli = subprocess.run(
        [str(VENV_BIN / "scheduler"), "env", "get", "secretive", "-o", "json", "--address", daemon.address],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert cli.returncode == 0, cli.stderr
    for shown in (str(created), str(env), str(listed), str(dry), cli.stdout):
        assert SECRET not in shown
        assert "<redacted>" in shown
    assert json.loads(cli.stdout)  # the CLI printed JSON
    assert env.spec.services["toolbox"].env["LOG_LEVEL"] == "debug"
    # Stored as given: the container received the real value.
    deadline = time.monotonic() + 30
    text = ""
    while f"password-length-{len(SECRET)}" not in text and time.monotonic() < deadline:
        lines = stub.GetEnvironmentLogs(pb.GetEnvironmentLogsRequest(name="secretive"), timeout=10)
        text = " ".join(line.line for line in lines)
        time.sleep(0.3)
    assert f"password-length-{len(SECRET)}" in text
    assert SECRET not in daemon.log()
    stub.DeleteEnvironment(pb.DeleteEnvironmentRequest(name="secretive"), timeout=10)
    _wait_gone(stub, "secretive")


def test_hostile_values_get_invalid_argument_never_unknown_or_internal(
    daemon: DaemonProcess, stub: pb_grpc.SchedulerServiceStub, bystander: str
) -> None:
    deep = base64.urlsafe_b64encode(b"[" * 50_000).decode()
    huge_seq = base64.urlsafe_b64encode(json.dumps({"v": 1, "s": 10**40, "n": "x"}).encode()).decode()
    calls = {
        "huge drain": lambda: stub.UpdateEnvironment(
            pb.UpdateEnvironmentRequest(
                name=bystander,
                spec=pb.EnvironmentSpecification(stack="toolbox"),
                drain=duration_pb2.Duration(seconds=315576000000),
            ),
            timeout=10,
        ),
        "huge ttl": lambda: stub.CreateEnvironment(
            pb.CreateEnvironmentRequest(
                name="ttl", spec=pb.EnvironmentSpecification(stack="toolbox", ttl=duration_pb2.Duration(seconds=2**40))
            ),
            timeout=10,
        ),
        "since out of range": lambda: list(
            stub.GetEnvironmentLogs(
                pb.GetEnvironmentLogsRequest(name=bystander, since_time=timestamp_pb2.Timestamp(seconds=-(2**40))),
                timeout=10,
            )
        ),
        "huge window": lambda: stub.GetEnvironmentMetrics(
            pb.GetEnvironmentMetricsRequest(name=bystander, window=duration_pb2.Duration(seconds=10**9)), timeout=10
        ),
        "deep page token": lambda: stub.ListEnvironments(pb.ListEnvironmentsRequest(page_token=deep), timeout=10),
        "huge page token number": lambda: stub.ListEnvironments(
            pb.ListEnvironmentsRequest(page_token=huge_seq), timeout=10
        ),
        "1500 label filters": lambda: stub.ListEnvironments(
            pb.ListEnvironmentsRequest(filter=" AND ".join(f"labels.k{i} = v" for i in range(1500))), timeout=10
        ),
        "a 1 MB name": lambda: stub.GetEnvironment(pb.GetEnvironmentRequest(name="n" * 1_000_000), timeout=10),
        "tail": lambda: list(
            stub.GetEnvironmentLogs(pb.GetEnvironmentLogsRequest(name=bystander, tail=2**31 - 1), timeout=10)
        ),
    }
    for what, call in calls.items():
        code, details = _code(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, f"{what}: {code} {details}"
        assert len(details) < 2200, what
    with daemon.channel() as channel:
        raw = channel.unary_unary("/scheduler.v1.SchedulerService/GetEnvironment")
        code, details = _code(lambda: raw(b"\x0a\xff\xff\xff\xff\x0f", timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "request" in details


def test_a_registry_outside_the_allow_list_is_never_contacted(stub: pb_grpc.SchedulerServiceStub) -> None:
    spec = _toolbox(image="127.0.0.1:22/probe/image:1")
    stub.CreateEnvironment(pb.CreateEnvironmentRequest(name="probe", spec=spec), timeout=10)
    env = _wait(stub, "probe", {pb.ENVIRONMENT_STATUS_FAILED})
    text = json_format.MessageToJson(env)
    assert "is not allowed" in text and "refused" not in text.lower().replace("is not allowed", "")
    stub.DeleteEnvironment(pb.DeleteEnvironmentRequest(name="probe"), timeout=10)
    _wait_gone(stub, "probe")


def test_list_pages_stay_under_four_megabytes(stub: pb_grpc.SchedulerServiceStub) -> None:
    # Eight environments of ~480 KB each: ~3.8 MB in one page would pass the client's limit.
    env_values = {f"BLOB_{i}": "v" * 30_000 for i in range(16)}
    spec = _toolbox(image="blocked.invalid/never/pulled:1", env=env_values)
    names = [f"wide-{i}" for i in range(8)]
    for name in names:
        stub.CreateEnvironment(pb.CreateEnvironmentRequest(name=name, spec=spec), timeout=10)
    seen: list[str] = []
    token = ""
    for _ in range(20):
        page = stub.ListEnvironments(pb.ListEnvironmentsRequest(page_size=500, page_token=token), timeout=10)
        assert page.ByteSize() < 4 * 1024 * 1024
        seen += [e.name for e in page.environments]
        token = page.next_page_token
        if not token:
            break
    assert set(names) <= set(seen)
    for name in names:
        stub.DeleteEnvironment(pb.DeleteEnvironmentRequest(name=name), timeout=10)
    for name in names:
        _wait_gone(stub, name)
