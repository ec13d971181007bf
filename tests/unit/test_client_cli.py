"""The client CLI against an in-process fake SchedulerService over a real gRPC channel."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner, Result
from google.protobuf import json_format

from scheduler.api import filter as list_filter
from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.api._gen.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from scheduler.cli import main
from scheduler.client.spec import SpecError, apply_flags, apply_set, load_file, parse_pairs, parse_size, status_value


def _holds(env: pb.Environment, term: Any) -> bool:
    if term.field == "status":
        actual = pb.EnvironmentStatus.Name(env.status).removeprefix("ENVIRONMENT_STATUS_")
    else:
        actual = env.spec.labels.get(term.field.removeprefix("labels."))
    return (actual in term.values) != term.negate


class FakeScheduler(pb_grpc.SchedulerServiceServicer):
    """Keeps environments in a dict; a deploy takes ``deploy_gets`` Gets, a delete one Get."""

    def __init__(self) -> None:
        self.envs: dict[str, pb.Environment] = {}
        self.requests: list[Any] = []
        self.gets: dict[str, int] = {}
        self.deploy_gets = 2
        self.fail_deploys: set[str] = set()
        self.rollback_updates = False
        self.deleting: set[str] = set()
        self.stale_etags = 0
        self.history: dict[str, list[pb.HistoryEntry]] = {}
        self.lock = threading.Lock()

    def _missing(self, context: grpc.ServicerContext, name: str) -> Any:
        context.abort(grpc.StatusCode.NOT_FOUND, f'environment "{name}" not found\nsecond line')

    def CreateEnvironment(self, request: pb.CreateEnvironmentRequest, context: grpc.ServicerContext) -> pb.Environment:
        with self.lock:
            self.requests.append(request)
            if request.name in self.envs:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, f'environment "{request.name}" already exists')
            env = pb.Environment(
                name=request.name,
                uid="u-" + request.name,
                spec=request.spec,
                generation=1,
                status=pb.ENVIRONMENT_STATUS_PENDING,
            )
            env.create_time.GetCurrentTime()
            self.envs[request.name] = env
            self.gets[request.name] = 0
            self.history[request.name] = [pb.HistoryEntry(generation=1, action="create", actor="ipv4:127.0.0.1:1")]
            return env

    def CloneEnvironment(self, request: pb.CloneEnvironmentRequest, context: grpc.ServicerContext) -> pb.Environment:
        with self.lock:
            self.requests.append(request)
            source = self.envs.get(request.source)
        if source is None:
            return self._missing(context, request.source)
        spec = pb.EnvironmentSpecification()
        spec.CopyFrom(source.spec)
        spec.labels.update(request.spec.labels)
        spec.parameters.update(request.spec.parameters)
        return self.CreateEnvironment(pb.CreateEnvironmentRequest(name=request.name, spec=spec), context)

    def GetEnvironment(self, request: pb.GetEnvironmentRequest, context: grpc.ServicerContext) -> pb.Environment:
        with self.lock:
            env = self.envs.get(request.name)
            if env is None:
                return self._missing(context, request.name)
            if request.name in self.deleting:
                del self.envs[request.name]
                self.deleting.discard(request.name)
                return env
            self.gets[request.name] += 1
            if env.observed_generation < env.generation and self.gets[request.name] >= self.deploy_gets:
                self._settle(env)
            else:
                env.status = pb.ENVIRONMENT_STATUS_DEPLOYING if env.observed_generation < env.generation else env.status
            return env

    def _settle(self, env: pb.Environment) -> None:
        del env.containers[:], env.conditions[:]
        if env.name in self.fail_deploys:
            env.status = pb.ENVIRONMENT_STATUS_FAILED
            env.conditions.add(
                type="Ready",
                status=pb.CONDITION_STATUS_FALSE,
                reason="HealthCheckFailed",
                service="toolbox",
                message="health check failed:\nexit code 1",
            )
        else:
            env.status = pb.ENVIRONMENT_STATUS_RUNNING
            env.containers.add(
                service="toolbox",
                replica=0,
                container_id="c" * 64,
                state=pb.CONTAINER_STATE_RUNNING,
                health=pb.HEALTH_STATUS_NONE,
                pid=4242,
                ip="10.9.0.2",
            )
            env.endpoints.add(service="toolbox", host_ip="127.0.0.1", host_port=31000, container_port=80)
        if self.rollback_updates and env.generation > 1:
            env.generation += 1
            env.conditions.add(
                type="RolledBack", status=pb.CONDITION_STATUS_TRUE, service="toolbox", message="health check: HTTP 404"
            )
        env.update_time.GetCurrentTime()
        # As the daemon does: a failed rollout is not an observed generation.
        if env.status != pb.ENVIRONMENT_STATUS_FAILED:
            env.observed_generation = env.generation

    def UpdateEnvironment(
        self, request: pb.UpdateEnvironmentRequest, context: grpc.ServicerContext
    ) -> pb.UpdateEnvironmentResponse:
        with self.lock:
            self.requests.append(request)
            env = self.envs.get(request.name)
            if env is None:
                return self._missing(context, request.name)
            plan = [pb.ServiceChange(service="toolbox", action=pb.CHANGE_ACTION_REPLACE, reason="env changed")]
            if self.stale_etags:
                # Someone else changed it between the client's Get and this Update.
                self.stale_etags -= 1
                env.etag = f"e{self.stale_etags}"
                context.abort(grpc.StatusCode.ABORTED, "etag mismatch")
            if request.validate_only:
                return pb.UpdateEnvironmentResponse(environment=env, plan=plan)
            env.spec.CopyFrom(request.spec)
            env.generation += 1
            self.gets[request.name] = 0
            return pb.UpdateEnvironmentResponse(environment=env, plan=plan)

    def DeleteEnvironment(self, request: pb.DeleteEnvironmentRequest, context: grpc.ServicerContext) -> pb.Environment:
        with self.lock:
            self.requests.append(request)
            env = self.envs.get(request.name)
            if env is None:
                return self._missing(context, request.name)
            env.status = pb.ENVIRONMENT_STATUS_DELETING
            self.deleting.add(request.name)
            return env

    def ListEnvironments(
        self, request: pb.ListEnvironmentsRequest, context: grpc.ServicerContext
    ) -> pb.ListEnvironmentsResponse:
        with self.lock:
            self.requests.append(request)
            terms = list_filter.parse(request.filter).terms
            matching = [e for e in self.envs.values() if all(_holds(e, t) for t in terms)]
            # Pages of two whatever the client asks, so that paging is exercised.
            start = int(request.page_token or 0)
            page = matching[start : start + 2]
            token = str(start + 2) if start + 2 < len(matching) else ""
            return pb.ListEnvironmentsResponse(environments=page, next_page_token=token)

    def GetEnvironmentLogs(
        self, request: pb.GetEnvironmentLogsRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.LogLine]:
        self.requests.append(request)
        if request.name not in self.envs:
            self._missing(context, request.name)
        for replica in range(2):
            for index in range(3):
                yield pb.LogLine(service="backend", replica=replica, line=f"line {index}", stream=pb.LOG_STREAM_STDOUT)

    def GetEnvironmentMetrics(
        self, request: pb.GetEnvironmentMetricsRequest, context: grpc.ServicerContext
    ) -> pb.EnvironmentMetrics:
        self.requests.append(request)
        return pb.EnvironmentMetrics(
            name=request.name,
            containers=[
                pb.ContainerMetrics(
                    service="toolbox",
                    replica=0,
                    cpu_cores=0.987,
                    memory_usage_bytes=52_428_800,
                    memory_limit_bytes=268_435_456,
                    pids_current=3,
                )
            ],
        )

    def ListStacks(self, request: pb.ListStacksRequest, context: grpc.ServicerContext) -> pb.ListStacksResponse:
        return pb.ListStacksResponse(
            stacks=[
                pb.Stack(
                    name="web-postgres",
                    description="A web app.",
                    services=[pb.ServiceDescription(name=n) for n in ("postgres", "backend", "frontend")],
                    parameters=[
                        pb.StackParameter(name="postgres_db", default_value="app"),
                        pb.StackParameter(name="postgres_password", secret=True),
                    ],
                ),
                pb.Stack(name="toolbox", description="One box.", services=[pb.ServiceDescription(name="toolbox")]),
            ]
        )

    def WatchEvents(self, request: pb.WatchEventsRequest, context: grpc.ServicerContext) -> Iterator[pb.Event]:
        self.requests.append(request)
        for sequence in range(1, 1000):
            if not context.is_active():
                return
            yield pb.Event(
                type=pb.EVENT_TYPE_CONTAINER_STARTED,
                environment=request.name or "any",
                service="backend",
                replica=1,
                sequence=sequence,
                message=f"event {sequence}",
            )

    def GetEnvironmentHistory(
        self, request: pb.GetEnvironmentHistoryRequest, context: grpc.ServicerContext
    ) -> pb.GetEnvironmentHistoryResponse:
        if request.name not in self.history:
            return self._missing(context, request.name)
        return pb.GetEnvironmentHistoryResponse(entries=self.history[request.name])


@pytest.fixture
def fake() -> Iterator[tuple[FakeScheduler, str]]:
    servicer = FakeScheduler()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_SchedulerServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        server.stop(0).wait(5)


def run(address: str, *args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, [*args, "--address", address], env=env)


def assert_one_line_error(result: Result, code: str, *words: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {code}: "), result.stderr
    assert all(w in lines[0] for w in words), lines[0]
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)


# ----------------------------------------------------------------------------------------------
# Commands against the fake
# ----------------------------------------------------------------------------------------------


def test_stacks_table_and_json(fake: tuple[FakeScheduler, str]) -> None:
    _, address = fake
    result = run(address, "stacks")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "SERVICES", "PARAMETERS", "DESCRIPTION"]
    assert lines[1].split()[:3] == ["web-postgres", "postgres,backend,frontend", "postgres_db,"]
    assert "postgres_password=<secret>" in lines[1]
    as_json = json.loads(run(address, "stacks", "-o", "json").stdout)
    assert [s["name"] for s in as_json["stacks"]] == ["web-postgres", "toolbox"]


def test_clone_sends_overrides_as_a_mask_and_waits(fake: tuple[FakeScheduler, str]) -> None:
    servicer, address = fake
    assert run(address, "env", "create", "staging", "--stack", "toolbox", "--wait").exit_code == 0
    result = run(
        address, "env", "clone", "staging", "pr-1", "--label", "tier=preview", "--param", "command=true", "--wait"
    )
    assert result.exit_code == 0, result.output
    request = next(r for r in servicer.requests if isinstance(r, pb.CloneEnvironmentRequest))
    assert (request.source, request.name) == ("staging", "pr-1") and request.request_id
    assert list(request.update_mask.paths) == ["parameters.`command`", "labels.`tier`"]
    assert dict(request.spec.labels) == {"tier": "preview"} and "pr-1" in result.stdout
    missing = run(address, "env", "clone", "nope", "pr-2")
    assert missing.exit_code != 0 and "nope" in missing.output


def test_create_builds_the_spec_from_file_and_flags_and_waits(fake: tuple[FakeScheduler, str], tmp_path: Path) -> None:
    servicer, address = fake
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(
        "stack: toolbox\nlabels: {team: web}\nservices:\n  toolbox:\n    env: {A: '1'}\n    replicas: 2\n"
    )
    result = run(
        address,
        "env",
        "create",
        "demo",
        "--file",
        str(spec_file),
        "--param",
        "command=sh -c 'echo hi'",
        "--set",
        "toolbox.env.B=x=y",
        "--set",
        "toolbox.resources.memory_bytes=256Mi",
        "--label",
        "tier=dev",
        "--wait",
    )
    assert result.exit_code == 0, result.output
    request = next(r for r in servicer.requests if isinstance(r, pb.CreateEnvironmentRequest))
    assert request.name == "demo" and request.spec.stack == "toolbox" and request.request_id
    box = request.spec.services["toolbox"]
    assert dict(box.env) == {"A": "1", "B": "x=y"}
    assert box.replicas == 2 and box.resources.memory_bytes == 256 * 1024**2
    assert dict(request.spec.parameters) == {"command": "sh -c 'echo hi'"}
    assert dict(request.spec.labels) == {"team": "web", "tier": "dev"}
    # --wait polled until RUNNING and printed the settled environment.
    assert servicer.gets["demo"] >= servicer.deploy_gets
    assert "Status:      RUNNING" in result.stdout
    assert "toolbox 127.0.0.1:31000->80/tcp" in result.stdout
    row = next(line for line in result.stdout.splitlines() if line.startswith("toolbox "))
    assert row.split()[:6] == ["toolbox", "0", "RUNNING", "NONE", "10.9.0.2", "4242"]


def test_create_without_wait_prints_pending_json(fake: tuple[FakeScheduler, str]) -> None:
    servicer, address = fake
    result = run(address, "env", "create", "quick", "--stack", "toolbox", "-o", "json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["name"] == "quick" and body["status"] == "ENVIRONMENT_STATUS_PENDING"
    assert servicer.gets["quick"] == 0


def test_create_wait_on_a_failing_deploy_exits_1_with_the_condition(fake: tuple[FakeScheduler, str]) -> None:
    servicer, address = fake
    servicer.fail_deploys.add("sick")
    result = run(address, "env", "create", "sick", "--stack", "toolbox", "--wait")
    assert_one_line_error(result, "FAILED_PRECONDITION", "sick", "FAILED", "toolbox", "exit code 1")


def test_rpc_errors_print_code_and_message_on_one_line(fake: tuple[FakeScheduler, str]) -> None:
    _, address = fake
    assert_one_line_error(run(address, "env", "get", "ghost"), "NOT_FOUND", '"ghost" not found second line')
    run(address, "env", "create", "twice", "--stack", "toolbox")
    assert_one_line_error(run(address, "env", "create", "twice", "--stack", "toolbox"), "ALREADY_EXISTS", "twice")
    assert_one_line_error(run(address, "env", "history", "ghost"), "NOT_FOUND", "ghost")
    assert_one_line_error(run(address, "env", "delete", "ghost"), "NOT_FOUND", "ghost")


def test_an_unreachable_daemon_is_one_line_and_exit_1() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = CliRunner().invoke(main, ["env", "list", "--timeout", "3"], env={"SCHEDULER_ADDRESS": f"127.0.0.1:{port}"})
    assert_one_line_error(result, "UNAVAILABLE", f"127.0.0.1:{port}")


def test_address_comes_from_the_environment_variable(fake: tuple[FakeScheduler, str]) -> None:
    _, address = fake
    result = CliRunner().invoke(main, ["stacks"], env={"SCHEDULER_ADDRESS": address})
    assert result.exit_code == 0 and "web-postgres" in result.stdout


def test_get_json_is_the_api_message(fake: tuple[FakeScheduler, str]) -> None:
    _, address = fake
    run(address, "env", "create", "demo", "--stack", "toolbox", "--wait")
    body = json.loads(run(address, "env", "get", "demo", "-o", "json").stdout)
    env = json_format.ParseDict(body, pb.Environment())
    assert env.name == "demo" and env.status == pb.ENVIRONMENT_STATUS_RUNNING and env.containers[0].pid == 4242


def test_list_pages_through_everything_and_passes_filters(fake: tuple[FakeScheduler, str]) -> None:
    servicer, address = fake
    for index in range(5):
        run(address, "env", "create", f"e{index}", "--stack", "toolbox", "--label", f"parity={index % 2}")
    result = run(address, "env", "list")
    assert result.exit_code == 0, result.output
    rows = result.stdout.splitlines()
    assert rows[0].split() == ["NAME", "STATUS", "STACK", "GEN", "RUNNING", "PORTS", "AGE"]
    assert [r.split()[0] for r in rows[1:]] == [f"e{i}" for i in range(5)]
    assert all(r.split()[1] == "PENDING" for r in rows[1:])

    filtered = json.loads(
        run(address, "env", "list", "--label", "parity=1", "--status", "pending", "-o", "json").stdout
    )
    assert [e["name"] for e in filtered["environments"]] == ["e1", "e3"]
    request = [r for r in servicer.requests if isinstance(r, pb.ListEnvironmentsRequest)][-1]
    assert request.filter == 'status=PENDING labels.parity="1"'

    none = run(address, "env", "list", "--status", "RUNNING", "-o", "json")
    assert json.loads(none.stdout) == {}


def test_update_applies_flags_on_top_of_the_current_spec(fake: tuple[FakeScheduler, str]) -> None:
    servicer, address = fake
    run(address, "env", "create", "demo", "--stack", "toolbox", "--set", "toolbox.env.A=1", "--wait")
    dry = run(address, "env", "update", "demo", "--set", "toolbox.env.B=2", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert dry.stdout.splitlines()[1].split()[:2] == ["toolbox", "REPLACE"]
    assert servicer.envs["demo"].generation == 1

    result = run(address, "env", "update", "demo", "--set", "toolbox.env.B=2", "--drain", "1.5", "--wait")
    assert result.exit_code == 0, result.output
    request = [r for r in servicer.requests if isinstance(r, pb.UpdateEnvironmentRequest)][-1]
    assert request.spec.stack == "toolbox" and dict(request.spec.services["toolbox"].env) == {"A": "1", "B": "2"}
    assert request.drain.seconds == 1 and request.drain.nanos == 500_000_000 and not request.validate_only
    assert "Generation:  2 (observed 2)" in result.stdout


def test_update_retries_on_top_of_a_concurrent_change(fake: tuple[FakeScheduler, str]) -> None:
    servicer, address = fake
    run(address, "env", "create", "demo", "--stack", "toolbox", "--wait")
    servicer.stale_etags = 2
    result = run(address, "env", "update", "demo", "--set", "toolbox.env.B=2")
    assert result.exit_code == 0, result.output
    updates = [r for r in servicer.requests if isinstance(r, pb.UpdateEnvironmentRequest)]
    assert [u.etag for u in updates] == ["", "e1", "e0"]
    servicer.stale_etags = 9
    assert_one_line_error(run(address, "env", "update", "demo", "--set", "toolbox.env.B=3"), "ABORTED", "etag")


def test_update_that_rolls_back_exits_1(fake: tuple[FakeScheduler, str]) -> None:
    servicer, address = fake
    run(address, "env", "create", "demo", "--stack", "toolbox", "--wait")
    servicer.rollback_updates = True
    result = run(address, "env", "update", "demo", "--set", "toolbox.image=busybox:2", "--wait")
    assert_one_line_error(result, "ABORTED", "rolled back", "HTTP 404")


def test_delete_waits_until_gone(fake: tuple[FakeScheduler, str]) -> None:
    servicer, address = fake
    run(address, "env", "create", "demo", "--stack", "toolbox")
    result = run(address, "env", "delete", "demo", "--keep-volumes", "--wait")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "demo: deleted" and "demo" not in servicer.envs
    request = next(r for r in servicer.requests if isinstance(r, pb.DeleteEnvironmentRequest))
    assert request.keep_volumes


def test_logs_prefix_each_line_with_its_replica(fake: tuple[FakeScheduler, str]) -> None:
    servicer, address = fake
    run(address, "env", "create", "demo", "--stack", "toolbox")
    result = run(address, "env", "logs", "demo", "--service", "backend", "--tail", "3", "--stream", "stdout")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [f"backend-{r} | line {i}" for r in range(2) for i in range(3)]
    request = next(r for r in servicer.requests if isinstance(r, pb.GetEnvironmentLogsRequest))
    assert list(request.services) == ["backend"] and request.tail == 3 and request.stream == pb.LOG_STREAM_STDOUT
    as_json = run(address, "env", "logs", "demo", "-o", "json").stdout.splitlines()
    assert json.loads(as_json[0])["line"] == "line 0"


def test_metrics_history_and_events(fake: tuple[FakeScheduler, str]) -> None:
    servicer, address = fake
    run(address, "env", "create", "demo", "--stack", "toolbox")
    metrics = run(address, "env", "metrics", "demo", "--window", "0.5")
    assert metrics.exit_code == 0, metrics.output
    assert metrics.stdout.splitlines()[1].split()[:6] == ["toolbox", "0", "0.99", "50.0MiB", "256.0MiB", "3"]
    request = next(r for r in servicer.requests if isinstance(r, pb.GetEnvironmentMetricsRequest))
    assert request.window.nanos == 500_000_000

    history = run(address, "env", "history", "demo")
    assert history.stdout.splitlines()[1].split()[0] == "1" and "create" in history.stdout

    events = run(address, "events", "--env", "demo", "--count", "3")
    assert events.exit_code == 0, events.output
    lines = events.stdout.splitlines()
    assert len(lines) == 3 and lines[0].endswith("CONTAINER_STARTED demo backend-1 event 1")
    watch = next(r for r in servicer.requests if isinstance(r, pb.WatchEventsRequest))
    assert watch.name == "demo"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["env", "create", "x", "--stack", "toolbox", "--set", "toolbox.colour=red"], ["--set", "colour"]),
        (["env", "create", "x", "--stack", "toolbox", "--set", "toolbox.replicas=many"], ["replicas", "many"]),
        (["env", "create", "x", "--stack", "toolbox", "--param", "novalue"], ["--param", "KEY=VALUE"]),
        (["env", "create", "x"], ["stack"]),
        (["env", "create", "x", "--stack", "toolbox", "--file", "/nonexistent.yaml"], ["--file", "nonexistent"]),
        (["env", "list", "--status", "sleepy"], ["--status", "sleepy", "running"]),
        (["env", "get"], ["NAME"]),
        (["env", "get", "x", "-o", "xml"], ["xml"]),
    ],
    ids=["unknown-field", "bad-int", "pair", "no-stack", "no-file", "status", "no-name", "output"],
)
def test_usage_errors_exit_2_and_name_the_option(
    fake: tuple[FakeScheduler, str], args: list[str], words: list[str]
) -> None:
    servicer, address = fake
    result = run(address, *args)
    assert result.exit_code == 2, result.output
    assert all(w in result.stderr for w in words), result.stderr
    assert "Traceback" not in result.output
    assert not any(isinstance(r, pb.CreateEnvironmentRequest) for r in servicer.requests)


# ----------------------------------------------------------------------------------------------
# Spec building (pure)
# ----------------------------------------------------------------------------------------------


def test_set_walks_the_descriptors_for_every_kind_of_field() -> None:
    spec = pb.EnvironmentSpecification(stack="web-postgres")
    for assignment in [
        "backend.replicas=3",
        "backend.command=sh -c 'echo a b'",
        "backend.restart_policy.mode=on-failure",
        "backend.restartPolicy.maxRetries=4",
        "backend.health_check.interval=2.5s",
        "backend.health_check.timeout=3",
        'backend.health_check.http={"port": 8080, "path": "/health"}',
        'backend.ports=[{"containerPort": 8080, "publish": true}]',
        "backend.read_only_rootfs=yes",
        "backend.user=1000:1000",
        "backend.resources.memory_bytes=1G",
        "backend.resources.cpu_millis=1500",
        "frontend.env.V=2",
    ]:
        apply_set(spec, assignment)
    backend = spec.services["backend"]
    assert backend.replicas == 3 and list(backend.command) == ["sh", "-c", "echo a b"]
    assert backend.restart_policy.mode == pb.RESTART_MODE_ON_FAILURE and backend.restart_policy.max_retries == 4
    assert backend.health_check.interval.ToMilliseconds() == 2500 and backend.health_check.timeout.seconds == 3
    assert backend.health_check.http.port == 8080 and backend.health_check.http.path == "/health"
    assert backend.ports[0].container_port == 8080 and backend.ports[0].publish
    assert backend.read_only_rootfs and backend.user == "1000:1000"
    assert backend.resources.memory_bytes == 10**9 and backend.resources.cpu_millis == 1500
    assert dict(spec.services["frontend"].env) == {"V": "2"}


@pytest.mark.parametrize(
    ("assignment", "words"),
    [
        ("backend", ["SERVICE.FIELD"]),
        ("backend=3", ["SERVICE.FIELD"]),
        ("backend.env=3", ["map", "backend.env.KEY"]),
        ("backend.replicas.x=3", ["backend.replicas", "'x'"]),
        ("backend.replicas=-1", ["backend.replicas", "negative"]),
        ("backend.replicas=99999999999", ["too large"]),
        ("backend.restart_policy.mode=sometimes", ["sometimes", "always", "on_failure"]),
        ("backend.read_only_rootfs=maybe", ["maybe"]),
        ("backend.health_check.interval=soon", ["interval", "duration"]),
        ("backend.ports=[1", ["ports", "JSON"]),
        ("backend.resources.memory_bytes=lots", ["memory_bytes", "size"]),
        ("backend.resources=3", ["resources", "JSON object"]),
    ],
)
def test_bad_set_assignments_name_the_field(assignment: str, words: list[str]) -> None:
    with pytest.raises(SpecError) as err:
        apply_set(pb.EnvironmentSpecification(), assignment)
    assert err.value.option == "--set"
    assert all(w in err.value.message for w in words), err.value.message


def test_flags_apply_on_a_copy() -> None:
    base = pb.EnvironmentSpecification(stack="toolbox", parameters={"a": "1"})
    result = apply_flags(base, params={"b": "2"}, labels={"l": "v"}, sets=["toolbox.env.X=1"])
    assert dict(result.parameters) == {"a": "1", "b": "2"} and dict(result.labels) == {"l": "v"}
    assert dict(base.parameters) == {"a": "1"} and not base.services


def test_spec_files_yaml_json_and_request_bodies(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text('{"name": "x", "spec": {"stack": "toolbox", "parameters": {"command": "true"}}}')
    assert load_file(tmp_path / "a.json").parameters["command"] == "true"
    (tmp_path / "b.yml").write_text("stack: web-postgres\nservices:\n  backend: {healthCheck: {tcp: {port: 8080}}}\n")
    assert load_file(tmp_path / "b.yml").services["backend"].health_check.tcp.port == 8080
    (tmp_path / "c.yaml").write_text("- not a mapping\n")
    with pytest.raises(SpecError, match="mapping"):
        load_file(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("stack: toolbox\nservices: {toolbox: {replicas: lots}}\n")
    with pytest.raises(SpecError, match="replicas"):
        load_file(tmp_path / "d.yaml")


def test_pairs_sizes_and_statuses() -> None:
    assert parse_pairs("--param", ["a=1", "b=x=y", "c="]) == {"a": "1", "b": "x=y", "c": ""}
    with pytest.raises(SpecError, match="KEY=VALUE"):
        parse_pairs("--label", ["=v"])
    assert [parse_size(s) for s in ["10", "1k", "2Ki", "256Mi", "1.5G", "3GiB"]] == [
        10,
        1000,
        2048,
        256 * 1024**2,
        1_500_000_000,
        3 * 1024**3,
    ]
    assert status_value("running") == status_value("ENVIRONMENT_STATUS_RUNNING") == pb.ENVIRONMENT_STATUS_RUNNING
    with pytest.raises(SpecError, match="unspecified|not one of"):
        status_value("unspecified")


def test_create_wait_fails_fast_on_failed_and_never_waits_out_the_timeout(fake: tuple[FakeScheduler, str]) -> None:
    servicer, address = fake
    servicer.fail_deploys.add("sick")
    started = time.monotonic()
    result = run(address, "env", "create", "sick", "--stack", "toolbox", "--wait", "--wait-timeout", "120")
    assert_one_line_error(result, "FAILED_PRECONDITION", "sick", "FAILED", "health check failed")
    assert time.monotonic() - started < 60, "the wait ran on after the environment turned FAILED"
    assert servicer.envs["sick"].observed_generation == 0


def test_connection_options_work_before_the_subcommand(fake: tuple[FakeScheduler, str]) -> None:
    _, address = fake
    run(address, "env", "create", "a", "--stack", "toolbox")
    before = CliRunner().invoke(main, ["--address", address, "--timeout", "5", "env", "list"])
    assert before.exit_code == 0, before.output
    assert before.output.splitlines()[1].split()[0] == "a"
    # After the subcommand wins over before it, which wins over the variable.
    after = CliRunner().invoke(
        main, ["--address", "127.0.0.1:1", "env", "list", "--address", address], env={"SCHEDULER_ADDRESS": "x:1"}
    )
    assert after.exit_code == 0, after.output
    variable = CliRunner().invoke(main, ["env", "list"], env={"SCHEDULER_ADDRESS": address})
    assert variable.exit_code == 0, variable.output
    unreachable = CliRunner().invoke(main, ["--address", "127.0.0.1:1", "--timeout", "1", "env", "list"])
    assert unreachable.exit_code == 1 and "127.0.0.1:1" in unreachable.stderr


def test_tables_print_whole_names_and_elide_only_to_fit_a_terminal() -> None:
    from scheduler.client import render

    rows = [("demo.frontend.0.410724", "RUNNING"), ("demo.backend.0.123456", "EXITED")]
    whole = render.table(("CONTAINER", "STATE"), rows)
    assert "demo.frontend.0.410724" in whole and "demo.backend.0.123456" in whole
    narrow = render.table(("CONTAINER", "STATE"), rows, width=24)
    first = narrow.splitlines()[1]
    assert "…" in first and first.startswith("demo.") and first.split()[0].endswith("410724")
    assert render.table(("CONTAINER", "STATE"), rows, width=200) == whole
    assert render.elide("abcdefghij", 5) == "ab…ij" and render.elide("abc", 5) == "abc"


def test_progress_names_each_service_phase_once_per_change() -> None:
    from scheduler.client.progress import Progress

    progress = Progress(["postgres", "backend"])
    env = pb.Environment(name="e")
    assert progress.lines(env) == ["  postgres  pending", "  backend   pending"]
    env.containers.add(service="postgres", state=pb.CONTAINER_STATE_RUNNING, health=pb.HEALTH_STATUS_STARTING)
    assert progress.lines(env) == ["  postgres  waiting for health"]
    assert progress.lines(env) == []
    env.containers[0].health = pb.HEALTH_STATUS_HEALTHY
    env.containers.add(service="backend", state=pb.CONTAINER_STATE_CREATED)
    assert progress.lines(env) == ["  postgres  healthy", "  backend   starting"]
