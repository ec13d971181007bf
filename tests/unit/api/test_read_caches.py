"""Get and List reuse what they built for an unchanged environment, and never serve a stale copy.

The service keeps one redacted copy per stored state, the servicer one message per copy and
one reply per page; any change to an environment (a new revision) must show at once, secrets
must stay redacted, and a scoped caller's filtered list must not alter what others are served.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.api.auth import new_token
from scheduler.api.gate import SERVICE_PREFIX, Gate
from scheduler.api.servicer import SchedulerServicer
from scheduler.config import AuthSettings, LimitSettings, RoleBinding, TokenSettings
from scheduler.domain import Condition, EnvironmentRequest, EnvironmentStatus, etag
from scheduler.service import REDACTED, EnvironmentService
from scheduler.stacks.catalog import Catalog
from tests.unit.orchestrator.test_supervisor import World, make_world
from tests.unit.test_service import SECRETIVE

TOKEN, DIGEST = new_token()


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[SchedulerServicer, EnvironmentService, World]]:
    world = await make_world(tmp_path)
    service = EnvironmentService(world.ledger, world.orchestrator, world.bus, Catalog([SECRETIVE]), LimitSettings())
    for name, team in (("shop-a", "a"), ("shop-b", "b")):
        request = EnvironmentRequest(stack="secretive", parameters={"password": "s3cret"}, labels={"team": team})
        await service.create(name, request)
        await world.orchestrator.wait_idle(name)
    yield SchedulerServicer(service), service, world
    await world.supervisor.close()
    await world.orchestrator.close()


async def _get(servicer: SchedulerServicer, name: str) -> pb.Environment:
    return await servicer.GetEnvironment(pb.GetEnvironmentRequest(name=name), context=None)  # type: ignore[arg-type]


async def _list(servicer: SchedulerServicer) -> pb.ListEnvironmentsResponse:
    return await servicer.ListEnvironments(pb.ListEnvironmentsRequest(page_size=10), context=None)  # type: ignore[arg-type]


def _password(env: pb.Environment) -> str:
    return dict(env.services[0].config.env)["PASSWORD"]


async def test_an_unchanged_environment_is_served_from_what_was_built(api) -> None:
    servicer, service, _ = api
    first = await _get(servicer, "shop-a")
    assert await _get(servicer, "shop-a") is first
    assert (await service.get("shop-a")) is (await service.get("shop-a"))
    page = await _list(servicer)
    assert await _list(servicer) is page
    assert [e.name for e in page.environments] == ["shop-a", "shop-b"]
    assert _password(first) == REDACTED and all(_password(e) == REDACTED for e in page.environments)


async def test_a_stale_copy_is_never_served_after_a_change(api) -> None:
    servicer, _, world = api
    before = await _get(servicer, "shop-a")
    page = await _list(servicer)
    for round_ in range(3):  # each change is seen at once, again and again
        conditions = (Condition("Ready", False, message=f"change {round_}"),)
        await world.ledger.change(
            "shop-a", lambda e, c=conditions: replace(e, status=EnvironmentStatus.FAILED, conditions=c)
        )
        current = world.ledger.find("shop-a")
        assert current is not None
        got = await _get(servicer, "shop-a")
        listed = (await _list(servicer)).environments[0]
        for shown in (got, listed):
            assert shown.conditions[0].message == f"change {round_}" and shown.status == pb.ENVIRONMENT_STATUS_FAILED
            assert shown.etag != before.etag and shown.etag == etag(current)
            assert _password(shown) == REDACTED
    # The untouched environment is still served from its cached message.
    assert (await _list(servicer)).environments[1] == page.environments[1]
    # Deleted and created again under the same name: the new one, never the old.
    old_uid = (await _get(servicer, "shop-b")).uid
    await world.ledger.remove("shop-b")
    assert [e.name for e in (await _list(servicer)).environments] == ["shop-a"]
    await servicer._service.create("shop-b", EnvironmentRequest(stack="secretive"))  # noqa: SLF001
    assert (await _get(servicer, "shop-b")).uid != old_uid


async def test_a_scoped_callers_filtered_list_leaves_the_shared_reply_whole(api) -> None:
    servicer, _, _ = api
    binding = RoleBinding(role="viewer", principals=["token:team"], labels={"team": "b"})
    gate = Gate(AuthSettings(tokens=[TokenSettings(name="team", sha256=DIGEST)], bindings=[binding]), _no_labels)

    class Context:
        def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
            return (("authorization", f"Bearer {TOKEN}"),)

        def auth_context(self) -> dict[str, list[bytes]]:
            return {}

    context: Any = Context()
    request = pb.ListEnvironmentsRequest(page_size=10)
    admission = await gate.admit(SERVICE_PREFIX + "ListEnvironments", request, context, "ipv4:10.0.0.1:1")
    shared = await _list(servicer)
    shown = await gate.visible(admission, shared)
    assert [e.name for e in shown.environments] == ["shop-b"]
    again = await _list(servicer)
    assert again is shared and [e.name for e in again.environments] == ["shop-a", "shop-b"]


async def _no_labels(name: str) -> None:
    return None
