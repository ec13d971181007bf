import pytest

from scheduler.api import fieldmask
from scheduler.api import filter as list_filter
from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.domain import FilterTerm
from scheduler.errors import InvalidArgument


def test_filter_grammar() -> None:
    parsed = list_filter.parse(
        'status=running,ENVIRONMENT_STATUS_FAILED AND stack!=toolbox labels.team="web x" name=pr-*'
    )
    assert parsed.terms == (
        FilterTerm("status", ("RUNNING", "FAILED")),
        FilterTerm("stack", ("toolbox",), negate=True),
        FilterTerm("labels.team", ("web x",)),
        FilterTerm("name", ("pr-",), prefix=True),
    )
    assert list_filter.parse("").terms == ()


@pytest.mark.parametrize(
    "text, problem",
    [
        ("status=sleeping", "not an environment status"),
        ("colour=red", "unknown field"),
        ("status", "expected FIELD=VALUE"),
        ("name=a*,b", "prefixes"),
        ("x" * 2000, "at most"),
    ],
)
def test_bad_filters_name_the_field(text: str, problem: str) -> None:
    with pytest.raises(InvalidArgument, match=problem) as err:
        list_filter.parse(text)
    assert err.value.violations[0].field == "filter"


def _stored() -> pb.EnvironmentSpecification:
    return pb.EnvironmentSpecification(
        stack="web-postgres",
        labels={"team": "web", "app.kubernetes.io/name": "shop"},
        services={
            "backend": pb.ContainerConfiguration(env={"A": "1", "B": "2"}, replicas=2),
            "frontend": pb.ContainerConfiguration(env={"F": "1"}),
        },
    )


def test_a_mask_of_one_env_entry_changes_only_that() -> None:
    given = pb.EnvironmentSpecification(
        stack="web-postgres",
        services={"backend": pb.ContainerConfiguration(env={"A": "new", "B": "ignored"}, replicas=9)},
    )
    merged = fieldmask.apply(_stored(), given, ["services.backend.env.A"])
    expected = _stored()
    expected.services["backend"].env["A"] = "new"
    assert merged == expected


def test_masked_paths_absent_from_the_request_are_cleared_and_backticks_quote_dots() -> None:
    merged = fieldmask.apply(
        _stored(),
        pb.EnvironmentSpecification(labels={"tier": "dev"}),
        ["labels.`app.kubernetes.io/name`", "labels.tier", "services.backend.replicas", "services.frontend"],
    )
    assert dict(merged.labels) == {"team": "web", "tier": "dev"}
    assert not merged.services["backend"].HasField("replicas")
    assert "frontend" not in merged.services


def test_bad_mask_paths_are_each_named() -> None:
    with pytest.raises(InvalidArgument) as err:
        fieldmask.apply(_stored(), _stored(), ["services.backend.image.x", "nope", "labels..x"])
    assert [v.field for v in err.value.violations] == [f"update_mask.paths[{i}]" for i in range(3)]


def test_a_whole_map_path_replaces_the_map_with_the_given_one() -> None:
    from scheduler.api import fieldmask
    from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb

    stored = pb.EnvironmentSpecification(stack="toolbox", labels={"team": "ops", "old": "x"})
    given = pb.EnvironmentSpecification(stack="toolbox", labels={"team": "ops", "n": "1"})
    assert dict(fieldmask.apply(stored, given, ["labels"]).labels) == {"team": "ops", "n": "1"}
    assert dict(fieldmask.apply(stored, pb.EnvironmentSpecification(), ["labels"]).labels) == {}
