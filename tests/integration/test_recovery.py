"""Self-healing and crash recovery against a real daemon process, containerd, runc and CNI.

Each test runs its own daemon (a kill -9 must not take other tests' daemons with it) with only the
toolbox image preloaded. Every wait is bounded; every environment is deleted at teardown, by a
restarted daemon if the test left it dead.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import yaml
from google.protobuf import duration_pb2

from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.api._gen.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from scheduler.runtime.containerd import labels
from scheduler.runtime.containerd.runtime import ContainerdRuntime
from tests.support.daemon import DaemonProcess, start_daemon
from tests.support.images import TOOLBOX

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

TICKER = "trap 'exit 0' TERM INT; i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.2; done"
IDLE = "trap 'exit 0' TERM INT; while :; do sleep 0.2; done"


def duration(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromNanoseconds(int(seconds * 1e9))
    return value


def toolbox(
    script: str,
    mode: int = pb.RESTART_MODE_ALWAYS,
    *,
    initial: float = 0.2,
    cap: float = 2.0,
    reset_after: float = 1.0,
    replicas: int = 1,
    health: pb.HealthCheck | None = None,
) -> pb.EnvironmentSpecification:
    config = pb.ContainerConfiguration(
        command=["sh", "-c", script],
        restart_policy=pb.RestartPolicy(
            mode=mode,
            initial_backoff=duration(initial),
            max_backoff=duration(cap),
            reset_after=duration(reset_after),
        ),
        replicas=replicas,
    )
    if health is not None:
        config.health_check.CopyFrom(health)
    return pb.EnvironmentSpecification(stack="toolbox", services={"toolbox": config})


@dataclass
class Harness:
    """One daemon under test, restartable, and the environments it was asked for."""

    tmp: Path
    daemon: DaemonProcess
    names: list[str] = field(default_factory=list)
    finished: bool = False
    _channel: grpc.Channel | None = None

    @property
    def stub(self) -> pb_grpc.SchedulerServiceStub:
        if self._channel is None:
            self._channel = self.daemon.channel()
        return pb_grpc.SchedulerServiceStub(self._channel)

    def kill9(self) -> None:
        self.daemon.process.kill()
        self.daemon.process.wait(10)
        self._close_channel()

    def restart(self) -> float:
        """Start the daemon again on the same data; return the seconds until it served."""
        started = time.monotonic()
        self.daemon = start_daemon(self.tmp, reuse_config=True)
        return time.monotonic() - started

    def _close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def create(self, name: str, spec: pb.EnvironmentSpecification) -> None:
        self.names.append(name)
        self.stub.CreateEnvironment(pb.CreateEnvironmentRequest(name=name, spec=spec), timeout=30)

    def get(self, name: str) -> pb.Environment:
        return self.stub.GetEnvironment(pb.GetEnvironmentRequest(name=name), timeout=10)

    def until(
        self, name: str, what: str, check: Callable[[pb.Environment], bool], timeout: float = 60
    ) -> pb.Environment:
        deadline = time.monotonic() + timeout
        env = self.get(name)
        while not check(env):
            if time.monotonic() > deadline:
                raise AssertionError(f"{name}: timed out waiting for {what}: {env}\n{self.daemon.log()[-4000:]}")
            time.sleep(0.1)
            env = self.get(name)
        return env

    def running(self, name: str, timeout: float = 90) -> pb.Environment:
        return self.until(name, "RUNNING", lambda e: e.status == pb.ENVIRONMENT_STATUS_RUNNING, timeout)

    def runtime_containers(self, name: str) -> list[str]:
        """Ids of the environment's containers as containerd itself lists them."""
        settings = yaml.safe_load(self.daemon.config_path.read_text())

        async def listing() -> list[str]:
            runtime = await ContainerdRuntime.connect(
                str(self.daemon.data_dir / "containerd" / "containerd.sock"),
                namespace=settings["containerd"]["namespace"],
                state_dir=self.tmp / "probe",
            )
            try:
                return sorted(info.id for info in await runtime.list({labels.ENV: name}))
            finally:
                await runtime.close()

        return asyncio.run(listing())

    def teardown(self) -> None:
        if self.finished:
            return
        self.finished = True
        if self.daemon.process.poll() is not None:
            self.restart()
        for name in self.names:
            try:
                self.stub.DeleteEnvironment(pb.DeleteEnvironmentRequest(name=name), timeout=10)
            except grpc.RpcError:
                continue
        deadline = time.monotonic() + 60
        for name in self.names:
            while time.monotonic() < deadline:
                try:
                    self.get(name)
                except grpc.RpcError:
                    break
                time.sleep(0.2)
        self._close_channel()
        self.daemon.stop()


@pytest.fixture
def harness(tmp_path: Path, image_archives: dict[str, Path]) -> Iterator[Harness]:
    daemon = start_daemon(tmp_path, {"images": {"preload": [str(image_archives[TOOLBOX])]}})
    h = Harness(tmp_path, daemon)
    try:
        yield h
    finally:
        h.teardown()


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except OSError:
        return False


def log_size(h: Harness, name: str, container: pb.ContainerStatus) -> int:
    path = h.daemon.data_dir / "logs" / name / container.container_id / "stdout.log"
    return path.stat().st_size if path.exists() else -1


class EventRecorder:
    """WatchEvents of one environment in a background thread."""

    def __init__(self, h: Harness, name: str) -> None:
        self.events: list[pb.Event] = []
        self._channel = h.daemon.channel()
        self._stream = pb_grpc.SchedulerServiceStub(self._channel).WatchEvents(
            pb.WatchEventsRequest(name=name), timeout=200
        )
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for event in self._stream:
                self.events.append(event)
        except grpc.RpcError:
            pass

    def of(self, kind: int) -> list[pb.Event]:
        return [e for e in self.events if e.type == kind]

    def close(self) -> None:
        self._stream.cancel()
        self._thread.join(5)
        self._channel.close()


# --- tests -----------------------------------------------------------------------------------------


def test_sigkill_of_the_daemon_leaves_containers_running_and_they_are_adopted(harness: Harness) -> None:
    h = harness
    for name in ("keep-a", "keep-b"):
        h.create(name, toolbox(TICKER))
    before = {name: h.running(name).containers[0] for name in ("keep-a", "keep-b")}
    assert all(c.pid > 0 and alive(c.pid) for c in before.values())

    h.kill9()
    sizes = {name: log_size(h, name, c) for name, c in before.items()}
    time.sleep(1.5)
    for name, container in before.items():
        assert alive(container.pid), f"{name}: the container died with the daemon"
        assert log_size(h, name, container) > sizes[name], f"{name}: logs stopped while the daemon was down"

    took = h.restart()
    for name, container in before.items():
        env = h.running(name, timeout=30)
        (after,) = env.containers
        assert after.container_id == container.container_id and after.pid == container.pid
        assert after.state == pb.CONTAINER_STATE_RUNNING and after.restart_count == 0
        assert h.runtime_containers(name) == [container.container_id]
    log = h.daemon.log()
    assert '"adopted": 2' in log or "adopted=2" in log, log[-3000:]
    assert took < 30

    # The new daemon supervises what it adopted: a crash is restarted in place.
    victim = before["keep-a"]
    os.kill(victim.pid, signal.SIGKILL)
    env = h.until(
        "keep-a",
        "restart after adoption",
        lambda e: e.containers[0].restart_count == 1 and e.containers[0].state == pb.CONTAINER_STATE_RUNNING,
    )
    assert env.containers[0].container_id == victim.container_id and env.containers[0].pid != victim.pid
    assert env.containers[0].exit_code == 137


def test_a_killed_process_restarts_per_policy_and_policy_no_degrades(harness: Harness) -> None:
    h = harness
    h.create("always", toolbox(IDLE, pb.RESTART_MODE_ALWAYS, initial=0.3, reset_after=1.0))
    h.create("never", toolbox(IDLE, pb.RESTART_MODE_NO))
    first = h.running("always").containers[0]
    lone = h.running("never").containers[0]
    events = EventRecorder(h, "always")
    try:
        time.sleep(0.3)
        killed_at = time.monotonic()
        os.kill(first.pid, signal.SIGKILL)
        os.kill(lone.pid, signal.SIGKILL)

        env = h.until(
            "always",
            "restart",
            lambda e: e.containers[0].restart_count == 1 and e.containers[0].state == pb.CONTAINER_STATE_RUNNING,
            timeout=30,
        )
        restarted_after = time.monotonic() - killed_at
        (again,) = env.containers
        assert again.container_id == first.container_id and again.pid != first.pid and alive(again.pid)
        assert again.exit_code == 137
        assert restarted_after >= 0.3  # the initial backoff was honoured
        h.running("always", timeout=15)  # back to RUNNING once it ran reset_after

        env = h.until("never", "DEGRADED", lambda e: e.status == pb.ENVIRONMENT_STATUS_DEGRADED, timeout=30)
        (dead,) = env.containers
        assert dead.state == pb.CONTAINER_STATE_EXITED and dead.exit_code == 137 and dead.restart_count == 0
        ready = next(c for c in env.conditions if c.type == "Ready")
        assert ready.status == pb.CONDITION_STATUS_FALSE and ready.service == "toolbox" and "137" in ready.message
        time.sleep(1.0)
        assert h.get("never").containers[0].state == pb.CONTAINER_STATE_EXITED  # stays down

        deadline = time.monotonic() + 10
        while not events.of(pb.EVENT_TYPE_CONTAINER_RESTARTED) and time.monotonic() < deadline:
            time.sleep(0.1)
        kinds = [e.type for e in events.events]
        assert pb.EVENT_TYPE_CONTAINER_EXITED in kinds and pb.EVENT_TYPE_CONTAINER_RESTARTED in kinds
        assert kinds.index(pb.EVENT_TYPE_CONTAINER_EXITED) < kinds.index(pb.EVENT_TYPE_CONTAINER_RESTARTED)
    finally:
        events.close()


def test_a_crash_loop_backs_off_to_its_cap_and_an_update_fixes_it(harness: Harness) -> None:
    h = harness
    h.create("loop", toolbox("echo boom; exit 3", pb.RESTART_MODE_ALWAYS, initial=0.1, cap=0.8, reset_after=5))
    events = EventRecorder(h, "loop")
    try:
        env = h.until("loop", "6 restarts", lambda e: bool(e.containers) and e.containers[0].restart_count >= 6, 60)
        env = h.until("loop", "DEGRADED", lambda e: e.status == pb.ENVIRONMENT_STATUS_DEGRADED, 10)
        ready = next(c for c in env.conditions if c.type == "Ready")
        assert ready.status == pb.CONDITION_STATUS_FALSE and ready.service == "toolbox"
        assert ready.reason == "CrashLoopBackOff"
        assert "crash-looping" in ready.message and "last exit code 3" in ready.message
        assert env.containers[0].exit_code == 3
        delays = [e.message.rsplit("restarting in ", 1)[1] for e in events.of(pb.EVENT_TYPE_CONTAINER_EXITED)]
        assert delays[:6] == ["0.1s", "0.2s", "0.4s", "0.8s", "0.8s", "0.8s"], delays
        # The deploy itself was not a failure: the service keeps being restarted, not given up on.
        assert env.containers[0].container_id

        fixed = toolbox(IDLE, pb.RESTART_MODE_ALWAYS, initial=0.1, cap=0.8, reset_after=5)
        h.stub.UpdateEnvironment(pb.UpdateEnvironmentRequest(name="loop", spec=fixed, drain=duration(0.1)), timeout=30)
        env = h.running("loop", timeout=60)
        (container,) = env.containers
        assert container.state == pb.CONTAINER_STATE_RUNNING and container.restart_count == 0
        time.sleep(1.5)
        env = h.get("loop")
        assert env.status == pb.ENVIRONMENT_STATUS_RUNNING and env.containers[0].restart_count == 0
        assert h.runtime_containers("loop") == [container.container_id]
    finally:
        events.close()


def test_a_container_that_turns_unhealthy_is_restarted_and_healthy_again(harness: Harness) -> None:
    h = harness
    check = pb.HealthCheck(
        exec=pb.HealthCheck.Exec(command=["test", "-f", "/tmp/ok"]),
        interval=duration(0.2),
        timeout=duration(2),
        retries=2,
    )
    # Healthy for two seconds after every start, then the probe fails.
    script = f"touch /tmp/ok; sleep 2; rm -f /tmp/ok; {IDLE}"
    h.create("sickly", toolbox(script, pb.RESTART_MODE_ON_FAILURE, initial=0.2, reset_after=30, health=check))
    first = h.running("sickly").containers[0]
    events = EventRecorder(h, "sickly")
    try:
        env = h.until(
            "sickly",
            "a restart after turning unhealthy",
            lambda e: e.containers[0].restart_count >= 1 and e.containers[0].health == pb.HEALTH_STATUS_HEALTHY,
            timeout=60,
        )
        again = env.containers[0]
        assert again.container_id == first.container_id and again.pid != first.pid
        deadline = time.monotonic() + 10
        while not events.of(pb.EVENT_TYPE_CONTAINER_HEALTHY) and time.monotonic() < deadline:
            time.sleep(0.1)
        kinds = [e.type for e in events.events]
        order = [
            pb.EVENT_TYPE_CONTAINER_UNHEALTHY,
            pb.EVENT_TYPE_CONTAINER_EXITED,
            pb.EVENT_TYPE_CONTAINER_RESTARTED,
            pb.EVENT_TYPE_CONTAINER_HEALTHY,
        ]
        positions = [kinds.index(kind) for kind in order]
        assert positions == sorted(positions), kinds
        assert "was unhealthy" in events.of(pb.EVENT_TYPE_CONTAINER_EXITED)[0].message
    finally:
        events.close()


def test_sigkill_in_the_middle_of_a_deploy_converges_without_duplicates(harness: Harness) -> None:
    h = harness
    slow = pb.HealthCheck(
        exec=pb.HealthCheck.Exec(command=["test", "-f", "/tmp/ready"]),
        interval=duration(0.2),
        timeout=duration(2),
        retries=3,
        start_period=duration(30),
    )
    script = f"sleep 4; touch /tmp/ready; {IDLE}"
    h.create("midway", toolbox(script, replicas=3, health=slow))
    h.until(
        "midway",
        "containers started",
        lambda e: e.status == pb.ENVIRONMENT_STATUS_DEPLOYING and sum(1 for c in e.containers if c.pid) == 3,
        timeout=60,
    )
    h.kill9()
    h.restart()
    env = h.running("midway", timeout=90)
    assert len(env.containers) == 3
    assert sorted(c.replica for c in env.containers) == [0, 1, 2]
    assert all(c.state == pb.CONTAINER_STATE_RUNNING and c.health == pb.HEALTH_STATUS_HEALTHY for c in env.containers)
    ids = sorted(c.container_id for c in env.containers)
    assert h.runtime_containers("midway") == ids  # nothing left over from the interrupted attempt
    assert any(c.type == "Ready" and c.status == pb.CONDITION_STATUS_TRUE for c in env.conditions)
    assert '"redeployed": ["midway"]' in h.daemon.log()


def test_sigkill_in_the_middle_of_an_update_resumes_it(harness: Harness) -> None:
    h = harness
    ready = pb.HealthCheck(
        exec=pb.HealthCheck.Exec(command=["test", "-f", "/tmp/ready"]),
        interval=duration(0.2),
        timeout=duration(2),
        retries=3,
        start_period=duration(30),
    )
    h.create("rolling", toolbox(f"touch /tmp/ready; {IDLE}", replicas=2, health=ready))
    original = {c.container_id for c in h.running("rolling").containers}
    # The new generation takes a few seconds to become healthy: time to kill the daemon mid-rollout.
    newer = toolbox(f"sleep 3; touch /tmp/ready; {IDLE}", replicas=2, health=ready)
    h.stub.UpdateEnvironment(pb.UpdateEnvironmentRequest(name="rolling", spec=newer, drain=duration(0.1)), timeout=30)
    h.until(
        "rolling",
        "a replica of the new generation",
        lambda e: any(c.container_id not in original and c.pid for c in e.containers),
        timeout=60,
    )
    h.kill9()
    h.restart()
    env = h.until(
        "rolling",
        "the update rolled out",
        lambda e: e.status == pb.ENVIRONMENT_STATUS_RUNNING and e.observed_generation == e.generation == 2,
        timeout=90,
    )
    assert sorted(c.replica for c in env.containers) == [0, 1]
    assert not original & {c.container_id for c in env.containers}
    assert all(c.state == pb.CONTAINER_STATE_RUNNING and c.health == pb.HEALTH_STATUS_HEALTHY for c in env.containers)
    assert h.runtime_containers("rolling") == sorted(c.container_id for c in env.containers)
    assert '"resumed": ["rolling"]' in h.daemon.log()


def test_containerd_restart_is_survived(harness: Harness) -> None:
    """The managed containerd goes away for a few seconds; a crash meanwhile is still healed."""
    h = harness
    h.create("steady", toolbox(IDLE, pb.RESTART_MODE_ALWAYS, initial=0.2, reset_after=1.0))
    before = h.running("steady").containers[0]
    base = h.daemon.data_dir / "containerd"
    old_pid = int((base / "containerd.pid").read_text())
    os.kill(old_pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while alive(old_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(old_pid)
    os.kill(before.pid, signal.SIGKILL)  # dies while containerd is down
    assert h.get("steady").name == "steady"  # the API still answers from the store
    time.sleep(2)
    replacement = subprocess.Popen(
        ["containerd", "--config", str(base / "config.toml")],
        stdin=subprocess.DEVNULL,
        stdout=open(base / "containerd.log", "ab"),  # noqa: SIM115 - handed to the child
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    (base / "containerd.pid").write_text(f"{replacement.pid}\n")
    try:
        env = h.until(
            "steady",
            "restart after containerd came back",
            lambda e: e.containers[0].restart_count >= 1 and e.containers[0].state == pb.CONTAINER_STATE_RUNNING,
            timeout=60,
        )
        assert env.containers[0].container_id == before.container_id and env.containers[0].pid != before.pid
        h.running("steady", timeout=30)
    finally:
        h.teardown()
        if replacement.poll() is None:
            replacement.terminate()
            try:
                replacement.wait(15)
            except subprocess.TimeoutExpired:
                replacement.kill()
                replacement.wait(5)
