from dataclasses import replace

from scheduler.domain import ChangeAction, EnvironmentSpec, ServiceSpec
from scheduler.orchestrator.plan import plan

WEB = ServiceSpec(name="web", image="nginx:1", env={"A": "1"})
DB = ServiceSpec(name="db", image="postgres:15")


def _spec(*services: ServiceSpec) -> EnvironmentSpec:
    return EnvironmentSpec(stack="s", services=services)


def _actions(old: EnvironmentSpec, new: EnvironmentSpec) -> dict[str, ChangeAction]:
    return {c.service: c.action for c in plan(old, new)}


def test_unchanged_services_are_kept() -> None:
    assert _actions(_spec(WEB, DB), _spec(WEB, DB)) == {"web": ChangeAction.KEEP, "db": ChangeAction.KEEP}


def test_replica_change_alone_is_a_scale() -> None:
    changes = plan(_spec(WEB), _spec(replace(WEB, replicas=3)))
    assert changes[0].action is ChangeAction.SCALE and "1 -> 3" in changes[0].reason


def test_any_other_change_replaces_and_says_what_changed() -> None:
    changes = plan(_spec(WEB), _spec(replace(WEB, image="nginx:2", env={"A": "2", "B": "x"}, replicas=2)))
    assert changes[0].action is ChangeAction.REPLACE
    assert "image nginx:1 -> nginx:2" in changes[0].reason and "env (A, B)" in changes[0].reason


def test_added_and_removed_services() -> None:
    assert _actions(_spec(WEB), _spec(DB)) == {"db": ChangeAction.ADD, "web": ChangeAction.REMOVE}
