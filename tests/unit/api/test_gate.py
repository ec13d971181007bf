"""The gate's decisions for scoped callers: what they may name, create, list and watch."""

from collections.abc import Mapping
from typing import Any

import pytest

from scheduler import errors
from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.api.auth import LocalUsers, new_token
from scheduler.api.gate import SERVICE_PREFIX, Gate
from scheduler.config import AuthSettings, RoleBinding, TokenSettings

TOKEN, DIGEST = new_token()
STORED = {"shop-b": {"team": "b"}, "shop-a": {"team": "a"}}


class _Context:
    """What the gate reads from a call: metadata and the TLS auth context."""

    def __init__(self, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}


async def _labels(name: str) -> Mapping[str, str] | None:
    return STORED.get(name)


def _gate(binding: RoleBinding) -> Gate:
    return Gate(AuthSettings(tokens=[TokenSettings(name="team", sha256=DIGEST)], bindings=[binding]), _labels)


async def _admit(gate: Gate, method: str, request: Any, token: str = TOKEN) -> Any:
    context: Any = _Context((("authorization", f"Bearer {token}"),))
    return await gate.admit(SERVICE_PREFIX + method, request, context, "ipv4:10.0.0.1:1")


async def test_label_scoped_operator() -> None:
    gate = _gate(RoleBinding(role="operator", principals=["token:team"], labels={"team": "b"}))
    labelled = pb.EnvironmentSpecification(stack="toolbox", labels={"team": "b"})
    assert await _admit(gate, "CreateEnvironment", pb.CreateEnvironmentRequest(name="x", spec=labelled))
    with pytest.raises(errors.PermissionDenied, match="environments.create"):
        await _admit(gate, "CreateEnvironment", pb.CreateEnvironmentRequest(name="x"))
    assert await _admit(gate, "DeleteEnvironment", pb.DeleteEnvironmentRequest(name="shop-b"))
    with pytest.raises(errors.PermissionDenied, match="environments.delete on environment 'shop-a'"):
        await _admit(gate, "DeleteEnvironment", pb.DeleteEnvironmentRequest(name="shop-a"))
    # An unknown name passes (the call answers NOT_FOUND); nothing of another team is revealed.
    assert await _admit(gate, "GetEnvironment", pb.GetEnvironmentRequest(name="nowhere"))
    admission = await _admit(gate, "ListEnvironments", pb.ListEnvironmentsRequest())
    listed = pb.ListEnvironmentsResponse(
        environments=[
            pb.Environment(name=n, spec=pb.EnvironmentSpecification(labels=labels)) for n, labels in STORED.items()
        ]
    )
    assert [e.name for e in (await gate.visible(admission, listed)).environments] == ["shop-b"]
    watch = await _admit(gate, "WatchEvents", pb.WatchEventsRequest())
    assert await gate.visible(watch, pb.Event(environment="shop-b")) is not None
    assert await gate.visible(watch, pb.Event(environment="shop-a")) is None


async def test_prefix_scoped_viewer_and_unknown_callers() -> None:
    gate = _gate(RoleBinding(role="viewer", principals=["token:team"], name_prefix="shop-a"))
    assert await _admit(gate, "GetEnvironment", pb.GetEnvironmentRequest(name="shop-a"))
    with pytest.raises(errors.PermissionDenied):
        await _admit(gate, "GetEnvironment", pb.GetEnvironmentRequest(name="nowhere"))
    with pytest.raises(errors.PermissionDenied, match="environments.update"):
        await _admit(gate, "UpdateEnvironment", pb.UpdateEnvironmentRequest(name="shop-a"))
    with pytest.raises(errors.Unauthenticated):
        await _admit(gate, "GetEnvironment", pb.GetEnvironmentRequest(name="shop-a"), token="sch_nope")
    with pytest.raises(errors.Unauthenticated, match="no credentials"):
        await gate.admit(SERVICE_PREFIX + "ListStacks", pb.ListStacksRequest(), _Context(), "ipv4:10.0.0.1:1")  # type: ignore[arg-type]
    assert await gate.admit("/grpc.health.v1.Health/Check", None, _Context(), "") is None  # type: ignore[arg-type]


async def test_what_the_gate_remembers_gives_way_to_a_reload() -> None:
    operator = RoleBinding(role="operator", principals=["token:team"])
    gate = _gate(operator)
    for _ in range(2):  # the second time from what the gate remembers
        assert await _admit(gate, "DeleteEnvironment", pb.DeleteEnvironmentRequest(name="shop-a"))
    tokens = [TokenSettings(name="team", sha256=DIGEST)]
    gate.apply(AuthSettings(tokens=tokens, bindings=[RoleBinding(role="viewer", principals=["token:team"])]))
    with pytest.raises(errors.PermissionDenied, match="environments.delete"):
        await _admit(gate, "DeleteEnvironment", pb.DeleteEnvironmentRequest(name="shop-a"))
    gate.apply(AuthSettings(tokens=tokens, bindings=[operator]))
    assert await _admit(gate, "DeleteEnvironment", pb.DeleteEnvironmentRequest(name="shop-a"))


async def test_a_callers_admission_is_worked_out_once_and_kept_per_principal() -> None:
    gate = _gate(RoleBinding(role="operator", principals=["token:team"]))
    first = await _admit(gate, "GetEnvironment", pb.GetEnvironmentRequest(name="shop-a"))
    assert await _admit(gate, "GetEnvironment", pb.GetEnvironmentRequest(name="shop-a")) is first
    assert await _admit(gate, "ListEnvironments", pb.ListEnvironmentsRequest()) is not first
    other, _ = new_token()
    with pytest.raises(errors.Unauthenticated):  # an unknown token is never taken for a remembered one
        await _admit(gate, "GetEnvironment", pb.GetEnvironmentRequest(name="shop-a"), token=other)


def test_local_users_are_looked_up_again_after_their_time() -> None:
    users = LocalUsers(ttl=60)
    first = users.principal(0, 0, 1)
    assert users.principal(0, 0, 1) is first and first.name == "user:root" and "uid:0" in first.ids
    assert users.principal(0, 0, 2) is not first  # another process: its own entry
    expired = LocalUsers(ttl=0)
    assert expired.principal(0, 0) is not expired.principal(0, 0)


async def test_stop_and_start_need_an_operator() -> None:
    viewer = _gate(RoleBinding(role="viewer", principals=["token:team"]))
    with pytest.raises(errors.PermissionDenied, match="environments.stop"):
        await _admit(viewer, "StopEnvironment", pb.StopEnvironmentRequest(name="shop-a"))
    with pytest.raises(errors.PermissionDenied, match="environments.start"):
        await _admit(viewer, "StartEnvironment", pb.StartEnvironmentRequest(name="shop-a"))
    operator = _gate(RoleBinding(role="operator", principals=["token:team"], labels={"team": "b"}))
    assert await _admit(operator, "StopEnvironment", pb.StopEnvironmentRequest(name="shop-b"))
    assert await _admit(operator, "StartEnvironment", pb.StartEnvironmentRequest(name="shop-b"))
    with pytest.raises(errors.PermissionDenied, match="environments.stop on environment 'shop-a'"):
        await _admit(operator, "StopEnvironment", pb.StopEnvironmentRequest(name="shop-a"))
