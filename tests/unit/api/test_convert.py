from datetime import UTC, datetime, timedelta

import pytest

from scheduler import domain
from scheduler.api import convert
from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.errors import InvalidArgument


def test_overrides_keep_unset_fields_as_none_and_convert_set_ones() -> None:
    spec = pb.EnvironmentSpecification(
        stack="web-postgres",
        services={
            "backend": pb.ContainerConfiguration(
                image="registry.local/api:2",
                env={"LOG": "debug"},
                ports=[pb.PortMapping(container_port=8080, publish=True, host_port=18080)],
                health_check=pb.HealthCheck(http=pb.HealthCheck.Http(port=8080, path="/health"), retries=5),
                restart_policy=pb.RestartPolicy(mode=pb.RESTART_MODE_ON_FAILURE, max_retries=3),
                depends_on=[pb.Dependency(service="postgres", condition=pb.DEPENDENCY_CONDITION_HEALTHY)],
                replicas=2,
            )
        },
        parameters={"postgres_db": "shop"},
        labels={"team": "web"},
    )
    request = convert.request_from_proto(spec)
    backend = request.services["backend"]
    assert backend.image == "registry.local/api:2"
    assert backend.command is None and backend.user is None and backend.resources is None
    assert backend.env == {"LOG": "debug"}
    assert backend.ports == (domain.PortSpec(8080, publish=True, host_port=18080),)
    assert backend.health is not None
    assert backend.health.kind is domain.HealthCheckKind.HTTP and backend.health.path == "/health"
    assert backend.health.retries == 5 and backend.health.interval == domain.HealthCheck().interval
    assert backend.restart == domain.RestartOverride(mode=domain.RestartMode.ON_FAILURE, max_retries=3)
    assert backend.depends_on == (domain.Dependency("postgres", domain.DependencyCondition.HEALTHY),)
    assert backend.replicas == 2
    assert request.parameters == {"postgres_db": "shop"} and request.labels == {"team": "web"}

    # And back: the client's own form survives a round trip.
    assert convert.request_from_proto(convert.request_to_proto(request)) == request


def test_health_check_without_a_probe_is_refused_naming_the_field() -> None:
    spec = pb.EnvironmentSpecification(
        stack="s", services={"web": pb.ContainerConfiguration(health_check=pb.HealthCheck(retries=2))}
    )
    with pytest.raises(InvalidArgument) as err:
        convert.request_from_proto(spec)
    assert err.value.violations[0].field == "spec.services.web.health_check"


def test_negative_ttl_is_refused() -> None:
    spec = pb.EnvironmentSpecification(stack="s")
    spec.ttl.FromTimedelta(timedelta(seconds=-5))
    with pytest.raises(InvalidArgument, match="spec.ttl"):
        convert.request_from_proto(spec)


def test_restart_mode_unspecified_keeps_the_stacks_mode_and_applies_the_rest() -> None:
    from scheduler.stacks.catalog import default_catalog
    from scheduler.stacks.resolve import resolve

    spec = pb.EnvironmentSpecification(
        stack="web-postgres",
        services={"backend": pb.ContainerConfiguration(restart_policy=pb.RestartPolicy(max_retries=7))},
    )
    resolved = resolve(convert.request_from_proto(spec), "pr-1", default_catalog())
    backend = next(s for s in resolved.services if s.name == "backend")
    stack_backend = next(s for s in default_catalog().find("web-postgres").services if s.name == "backend")
    assert stack_backend.restart.mode is not domain.RestartMode.NO
    assert backend.restart.mode is stack_backend.restart.mode
    assert backend.restart.max_retries == 7
    # Unset stays unset on the way back out, so a Get shows what the client asked for.
    out = convert.request_to_proto(convert.request_from_proto(spec))
    assert out.services["backend"].restart_policy.mode == pb.RESTART_MODE_UNSPECIFIED
    assert not out.services["backend"].restart_policy.HasField("initial_backoff")


def test_enum_zero_values_are_never_sent() -> None:
    for health in domain.Health:
        status = domain.ContainerStatus("web", 0, "c", health=health)
        env = domain.Environment(
            "e",
            "u",
            domain.EnvironmentSpec(stack="s", services=()),
            containers=(status,),
            conditions=(
                domain.Condition("Ready", True),
                domain.Condition("Deployed", False),
            ),
        )
        out = convert.environment_to_proto(env)
        assert out.containers[0].health != pb.HEALTH_STATUS_UNSPECIFIED
        assert [c.status for c in out.conditions] == [pb.CONDITION_STATUS_TRUE, pb.CONDITION_STATUS_FALSE]


def test_environment_to_proto_carries_status_endpoints_and_containers() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    env = domain.Environment(
        name="pr-1",
        uid="u",
        spec=domain.EnvironmentSpec(stack="web-postgres", services=(domain.ServiceSpec(name="web", image="nginx"),)),
        status=domain.EnvironmentStatus.RUNNING,
        containers=(
            domain.ContainerStatus(
                "web", 0, "pr-1.web.0.abc", domain.ContainerState.EXITED, exit_code=3, started_at=at
            ),
        ),
        endpoints=(domain.Endpoint("web", "127.0.0.1", 20001, 80),),
        created_at=at,
    )
    out = convert.environment_to_proto(env)
    assert out.status == pb.ENVIRONMENT_STATUS_RUNNING
    assert out.endpoints[0].host_port == 20001 and out.endpoints[0].service == "web"
    assert out.containers[0].exit_code == 3 and out.containers[0].HasField("exit_code")
    assert out.containers[0].start_time.ToDatetime().replace(tzinfo=UTC) == at
    assert out.etag and not out.HasField("expire_time")
    assert out.services[0].name == "web" and out.spec.stack == "web-postgres"
    assert out.create_time.seconds == int(at.timestamp())


def test_every_domain_status_has_a_wire_value() -> None:
    for status in domain.EnvironmentStatus:
        env = domain.Environment("e", "u", domain.EnvironmentSpec(stack="s", services=()), status=status)
        assert (
            pb.EnvironmentStatus.Name(convert.environment_to_proto(env).status) == f"ENVIRONMENT_STATUS_{status.value}"
        )
    for kind in domain.EventType:
        event = domain.Event(kind, "e", datetime.now(UTC))
        assert pb.EventType.Name(convert.event_to_proto(event).type) == f"EVENT_TYPE_{kind.value}"
