from datetime import timedelta

from scheduler.cluster.fence import FENCED, Fence, as_fenced, to_resume, to_stop
from scheduler.domain import (
    ContainerState,
    ContainerStatus,
    Environment,
    EnvironmentSpec,
    EnvironmentStatus,
    Health,
    ServiceSpec,
)
from scheduler.orchestrator.sleep import SLEEPING

SPEC = EnvironmentSpec("web", (ServiceSpec("web", "nginx"),))


def container(cid: str, state: ContainerState) -> ContainerStatus:
    return ContainerStatus("web", 0, cid, state, health=Health.HEALTHY, pid=42)


def env(name: str, node: str, status: EnvironmentStatus = EnvironmentStatus.RUNNING, uid: str = "") -> Environment:
    containers = (container(f"{name}-1", ContainerState.RUNNING), container(f"{name}-2", ContainerState.EXITED))
    return Environment(name, uid or f"uid-{name}", SPEC, status=status, node=node, containers=containers)


def test_a_fenced_node_stops_the_live_containers_of_its_own_environments_only() -> None:
    envs = [env("mine", "n1"), env("theirs", "n2"), env("going", "n1", EnvironmentStatus.DELETING)]
    assert to_stop(envs, "n1") == {"mine": ("uid-mine", ["mine-1"])}


def test_only_environments_still_placed_here_as_the_same_incarnation_are_resumed() -> None:
    fenced = {"kept": "uid-kept", "moved": "uid-moved", "recreated": "uid-old", "deleted": "uid-deleted"}
    now = [
        env("kept", "n1"),
        env("moved", "n2"),
        env("recreated", "n1", uid="uid-new"),
        env("other", "n1"),
    ]
    assert to_resume(fenced, now, "n1") == ["kept"]
    assert to_resume({"busy": "uid-busy"}, [env("busy", "n1", EnvironmentStatus.DELETING)], "n1") == []


def test_a_fenced_environment_is_recorded_as_asleep_so_that_a_start_brings_it_back() -> None:
    stopped = as_fenced(env("mine", "n1"), "cut off")
    assert stopped.status is EnvironmentStatus.STOPPED
    assert [(c.state, c.pid) for c in stopped.containers] == [(ContainerState.STOPPED, 0), (ContainerState.EXITED, 42)]
    sleeping = next(c for c in stopped.conditions if c.type == SLEEPING)
    assert sleeping.status and sleeping.reason == FENCED
    assert next(c for c in stopped.conditions if c.type == "Ready").status is False


def test_while_fenced_the_node_owns_nothing() -> None:
    fence = Fence("n1", failover_grace=timedelta(seconds=20))
    assert (fence.delay, fence.grace) == (timedelta(seconds=10), timedelta(seconds=5))
    assert fence.owns(env("mine", "n1")) and not fence.owns(env("theirs", "n2"))
    fence.active = True
    assert not fence.owns(env("mine", "n1"))
    fence.lift()
    assert fence.owns(env("mine", "n1"))
