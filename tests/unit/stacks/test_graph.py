import pytest

from scheduler.domain import Dependency, ServiceSpec
from scheduler.errors import InvalidArgument
from scheduler.stacks.graph import find_cycle, topological_order


def svc(name, *deps):
    return ServiceSpec(name=name, image="busybox", depends_on=tuple(Dependency(d) for d in deps))


def test_waves_group_services_whose_dependencies_are_met():
    services = [
        svc("frontend", "backend"),
        svc("backend", "db", "cache"),
        svc("db"),
        svc("cache"),
        svc("worker", "db"),
    ]
    assert topological_order(services) == [["db", "cache"], ["backend", "worker"], ["frontend"]]


def test_independent_services_form_one_wave_in_declaration_order():
    assert topological_order([svc("b"), svc("a"), svc("c")]) == [["b", "a", "c"]]
    assert topological_order([]) == []


def test_diamond():
    services = [svc("top", "left", "right"), svc("left", "base"), svc("right", "base"), svc("base")]
    assert topological_order(services) == [["base"], ["left", "right"], ["top"]]


def test_cycles_are_found_and_named():
    services = [svc("a", "b"), svc("b", "c"), svc("c", "a"), svc("d")]
    assert find_cycle(services) == ["a", "b", "c", "a"]
    with pytest.raises(InvalidArgument) as err:
        topological_order(services)
    assert err.value.violations[0].field == "spec.services.a.depends_on"
    assert "a -> b -> c -> a" in err.value.message


def test_self_dependency_is_a_cycle():
    assert find_cycle([svc("a", "a")]) == ["a", "a"]


def test_unknown_dependency_names_the_field():
    with pytest.raises(InvalidArgument) as err:
        topological_order([svc("a", "ghost")])
    assert [v.field for v in err.value.violations] == ["spec.services.a.depends_on[0].service"]
    assert find_cycle([svc("a", "ghost")]) is None
