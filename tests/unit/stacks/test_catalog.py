import pytest

from scheduler.config import LimitSettings
from scheduler.domain import EnvironmentRequest
from scheduler.errors import AlreadyExists, NotFound
from scheduler.stacks.catalog import Catalog, default_catalog
from scheduler.stacks.graph import topological_order
from scheduler.stacks.resolve import resolve
from scheduler.validation import validate


def test_default_catalog_lists_the_built_in_stacks_sorted():
    catalog = default_catalog()
    assert catalog.names() == ["api-postgres", "postgres", "toolbox", "web-postgres"]
    assert [s.name for s in catalog.stacks()] == catalog.names()
    assert all(s.description for s in catalog.stacks())


def test_get_and_find():
    catalog = default_catalog()
    assert catalog.get("toolbox").name == "toolbox"
    assert catalog.find("nope") is None
    with pytest.raises(NotFound, match="'nope'"):
        catalog.get("nope")


def test_registering_a_name_twice_is_already_exists():
    stack = default_catalog().get("toolbox")
    catalog = Catalog([stack])
    with pytest.raises(AlreadyExists, match="'toolbox'"):
        catalog.register(stack)


@pytest.mark.parametrize("name", default_catalog().names())
def test_every_built_in_stack_resolves_with_defaults_to_a_valid_ordered_spec(name):
    catalog = default_catalog()
    stack = catalog.get(name)
    spec = resolve(EnvironmentRequest(stack=name), "demo-env", catalog)
    validate("demo-env", spec, LimitSettings())
    waves = topological_order(spec.services)
    assert sorted(n for wave in waves for n in wave) == sorted(s.name for s in stack.services)
    for param in stack.parameters:
        assert param.description, param.name
        if param.secret:
            assert param.default is None, "secret defaults would be shared by every environment"
    for service in spec.services:
        for key, value in service.env.items():
            assert "${" not in value, (service.name, key)
