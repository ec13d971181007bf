import dataclasses
from datetime import timedelta
from urllib.parse import urlsplit

import pytest

from scheduler.config import LimitSettings
from scheduler.domain import (
    EnvironmentRequest,
    HealthCheck,
    HealthCheckKind,
    NetworkSettings,
    PortSpec,
    ServiceOverride,
    ServiceSpec,
)
from scheduler.errors import Internal, InvalidArgument
from scheduler.stacks.catalog import Catalog, default_catalog
from scheduler.stacks.resolve import resolve
from scheduler.stacks.stack import Stack, StackParameter
from scheduler.validation import validate


def _fields(err: InvalidArgument) -> list[str]:
    return [v.field for v in err.violations]


@pytest.fixture(scope="module")
def catalog():
    return default_catalog()


def test_unknown_stack_names_spec_stack_and_lists_known_ones(catalog):
    with pytest.raises(InvalidArgument) as err:
        resolve(EnvironmentRequest(stack="lamp"), "demo", catalog)
    assert _fields(err.value) == ["spec.stack"]
    assert "web-postgres" in err.value.message


def test_every_request_problem_is_reported_at_once(catalog):
    request = EnvironmentRequest(
        stack="web-postgres",
        services={"cache": ServiceOverride(replicas=2), "backend": ServiceOverride(replicas=2)},
        parameters={"colour": "blue", "postgres_user": "bad user!", "frontend_host_port": "70000"},
    )
    with pytest.raises(InvalidArgument) as err:
        resolve(request, "demo", catalog)
    assert sorted(_fields(err.value)) == [
        "spec.parameters.colour",
        "spec.parameters.frontend_host_port",
        "spec.parameters.postgres_user",
        "spec.services.cache",
    ]


def test_web_postgres_defaults(catalog):
    spec = resolve(EnvironmentRequest(stack="web-postgres"), "demo", catalog)
    validate("demo", spec, LimitSettings())
    by_name = {s.name: s for s in spec.services}
    assert list(by_name) == ["postgres", "backend", "frontend"]
    pg, backend, frontend = by_name["postgres"], by_name["backend"], by_name["frontend"]

    assert pg.image == "docker.io/library/postgres:15"
    assert pg.stateful and pg.replicas == 1
    assert [(v.name, v.path) for v in pg.volumes] == [("pgdata", "/var/lib/postgresql/data")]
    assert pg.health.kind is HealthCheckKind.TCP and pg.health.port == 5432
    assert pg.restart.mode.value == "on-failure"
    assert pg.secret_env == {"POSTGRES_PASSWORD"}
    password = pg.env["POSTGRES_PASSWORD"]
    assert len(password) >= 24

    assert backend.image == "docker.io/schedulerdemo/backend:1.0"
    assert backend.env["PGHOST"] == "postgres" and backend.env["PGPORT"] == "5432"
    assert backend.env["PGUSER"] == "app" and backend.env["PGDATABASE"] == "app"
    assert backend.env["PGPASSWORD"] == password
    url = urlsplit(backend.env["DATABASE_URL"])
    assert (url.scheme, url.hostname, url.port, url.username, url.password, url.path) == (
        "postgres", "postgres", 5432, "app", password, "/app"
    )  # fmt: skip
    assert backend.secret_env == {"DATABASE_URL", "PGPASSWORD"}
    assert backend.health.kind is HealthCheckKind.HTTP and backend.health.path == "/health"
    assert backend.health.port == 8080
    assert [(d.service, d.condition.value) for d in backend.depends_on] == [("postgres", "healthy")]
    assert backend.depends_on[0].deadline >= timedelta(seconds=60)
    assert backend.restart.mode.value == "always"
    assert [(p.container_port, p.publish) for p in backend.ports] == [(8080, False)]

    assert frontend.image == "docker.io/schedulerdemo/frontend:1.0"
    assert frontend.env == {"BACKEND_URL": "http://backend:8080"}
    assert frontend.ports == (PortSpec(80, publish=True, host_port=0),)
    assert frontend.health.path == "/healthz" and frontend.health.port == 80
    assert [(d.service, d.condition.value) for d in frontend.depends_on] == [("backend", "healthy")]
    assert frontend.secret_env == frozenset()


def test_passwords_are_generated_per_environment(catalog):
    first = resolve(EnvironmentRequest(stack="web-postgres"), "one", catalog)
    second = resolve(EnvironmentRequest(stack="web-postgres"), "two", catalog)
    assert first.services[0].env["POSTGRES_PASSWORD"] != second.services[0].env["POSTGRES_PASSWORD"]


def test_parameters_flow_into_every_service_and_are_url_quoted(catalog):
    params = {
        "postgres_user": "shop_owner",
        "postgres_db": "shop",
        "postgres_password": "p@ss:w/rd%",
        "backend_image": "127.0.0.1:5000/shop/backend:2.1",
        "frontend_image": "127.0.0.1:5000/shop/frontend@sha256:" + "a" * 64,
        "frontend_host_port": "28080",
        "postgres_image": "docker.io/library/postgres:16",
    }
    spec = resolve(EnvironmentRequest(stack="web-postgres", parameters=params), "demo", catalog)
    validate("demo", spec, LimitSettings())
    pg, backend, frontend = spec.services
    assert pg.image == "docker.io/library/postgres:16"
    assert pg.env == {"POSTGRES_USER": "shop_owner", "POSTGRES_PASSWORD": "p@ss:w/rd%", "POSTGRES_DB": "shop"}
    assert backend.image == "127.0.0.1:5000/shop/backend:2.1"
    assert backend.env["PGPASSWORD"] == "p@ss:w/rd%"
    assert backend.env["DATABASE_URL"] == "postgres://shop_owner:p%40ss%3Aw%2Frd%25@postgres:5432/shop"
    assert urlsplit(backend.env["DATABASE_URL"]).hostname == "postgres"
    assert frontend.image.endswith("@sha256:" + "a" * 64)
    assert frontend.ports[0].host_port == 28080


def test_a_dollar_in_a_parameter_value_is_kept_literally(catalog):
    spec = resolve(EnvironmentRequest(stack="postgres", parameters={"postgres_password": "a$b${c}$$"}), "demo", catalog)
    assert spec.services[0].env["POSTGRES_PASSWORD"] == "a$b${c}$$"


def test_overrides_replace_fields_and_merge_env(catalog):
    override = ServiceOverride(
        image="docker.io/library/nginx:1.25",
        env={"BACKEND_URL": "http://elsewhere:1", "EXTRA": "${not_expanded}"},
        ports=(PortSpec(8080, publish=True),),
        replicas=2,
        health=HealthCheck(),
        command=("nginx",),
    )
    request = EnvironmentRequest(
        stack="web-postgres",
        services={"frontend": override},
        labels={"team": "web"},
        network=NetworkSettings(subnet="10.88.50.0/24"),
        ttl=timedelta(hours=1),
    )
    spec = resolve(request, "demo", catalog)
    frontend = spec.services[2]
    assert frontend.image == "docker.io/library/nginx:1.25"
    assert frontend.env == {"BACKEND_URL": "http://elsewhere:1", "EXTRA": "${not_expanded}"}
    assert frontend.ports == (PortSpec(8080, publish=True),)
    assert frontend.replicas == 2 and frontend.command == ("nginx",)
    assert frontend.health == HealthCheck()
    assert [d.service for d in frontend.depends_on] == ["backend"]  # not overridden: kept
    assert spec.labels == {"team": "web"}
    assert spec.network.subnet == "10.88.50.0/24"
    assert spec.ttl == timedelta(hours=1)
    assert spec.stack == "web-postgres"


def test_overriding_a_secret_env_key_keeps_it_secret(catalog):
    request = EnvironmentRequest(
        stack="api-postgres", services={"backend": ServiceOverride(env={"PGPASSWORD": "mine"})}
    )
    backend = resolve(request, "demo", catalog).services[1]
    assert backend.env["PGPASSWORD"] == "mine"
    assert "PGPASSWORD" in backend.secret_env


def test_every_override_field_exists_on_service_spec():
    import dataclasses

    service_fields = {f.name for f in dataclasses.fields(ServiceSpec)}
    assert {f.name for f in dataclasses.fields(ServiceOverride)} <= service_fields


def test_api_postgres_publishes_the_backend(catalog):
    spec = resolve(EnvironmentRequest(stack="api-postgres", parameters={"backend_host_port": "0"}), "demo", catalog)
    validate("demo", spec, LimitSettings())
    assert [s.name for s in spec.services] == ["postgres", "backend"]
    assert spec.services[1].ports == (PortSpec(8080, publish=True),)


def test_postgres_stack_publishes_5432(catalog):
    spec = resolve(EnvironmentRequest(stack="postgres", parameters={"postgres_host_port": "25432"}), "db", catalog)
    validate("db", spec, LimitSettings())
    (pg,) = spec.services
    assert pg.ports == (PortSpec(5432, publish=True, host_port=25432),)
    assert pg.secret_env == {"POSTGRES_PASSWORD"}


def test_toolbox_command_is_split_like_a_shell(catalog):
    spec = resolve(EnvironmentRequest(stack="toolbox"), "t", catalog)
    validate("t", spec, LimitSettings())
    assert spec.services[0].command[:2] == ("sh", "-c")
    assert "trap" in spec.services[0].command[2]
    spec = resolve(EnvironmentRequest(stack="toolbox", parameters={"command": "echo 'hello world' done"}), "t", catalog)
    assert spec.services[0].command == ("echo", "hello world", "done")
    assert spec.services[0].image == "docker.io/schedulerdemo/toolbox:1.0"
    for bad in ("", "echo 'unterminated"):
        with pytest.raises(InvalidArgument) as err:
            resolve(EnvironmentRequest(stack="toolbox", parameters={"command": bad}), "t", catalog)
        assert _fields(err.value) == ["spec.parameters.command"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("postgres_user", "has space"),
        ("postgres_user", "x" * 64),
        ("postgres_db", "1abc"),
        ("postgres_db", ""),
        ("postgres_password", ""),
        ("postgres_password", "line\nbreak"),
        ("postgres_image", "has space:1"),
        ("postgres_image", "${env}"),
    ],
)
def test_bad_parameter_values_name_the_parameter(catalog, name, value):
    with pytest.raises(InvalidArgument) as err:
        resolve(EnvironmentRequest(stack="postgres", parameters={name: value}), "demo", catalog)
    assert _fields(err.value) == [f"spec.parameters.{name}"]


def test_a_bad_secret_value_is_not_echoed_in_the_error(catalog):
    with pytest.raises(InvalidArgument) as err:
        resolve(EnvironmentRequest(stack="postgres", parameters={"postgres_password": "se\x01cret"}), "d", catalog)
    assert "se\x01cret" not in err.value.message


def test_required_parameters_without_defaults_must_be_given():
    stack = Stack(
        name="needs",
        description="test",
        services=(ServiceSpec(name="app", image="busybox:${tag}", env={"TOKEN": "${token}"}),),
        parameters=(
            StackParameter("tag", "image tag"),
            StackParameter("token", "t", default="x", secret=True),
        ),
    )
    catalog = Catalog([stack])
    with pytest.raises(InvalidArgument) as err:
        resolve(EnvironmentRequest(stack="needs"), "demo", catalog)
    assert _fields(err.value) == ["spec.parameters.tag"]
    spec = resolve(EnvironmentRequest(stack="needs", parameters={"tag": "1.36"}), "demo", catalog)
    assert spec.services[0].image == "busybox:1.36"
    assert spec.services[0].secret_env == {"TOKEN"}


def test_env_name_is_available_to_templates_and_stack_bugs_are_internal():
    ok = Stack("s", "d", services=(ServiceSpec(name="app", image="busybox", env={"ENV_NAME": "${env}"}),))
    assert resolve(EnvironmentRequest(stack="s"), "demo", Catalog([ok])).services[0].env == {"ENV_NAME": "demo"}
    broken = Stack("b", "d", services=(ServiceSpec(name="app", image="busybox:${missing}"),))
    with pytest.raises(Internal, match="missing"):
        resolve(EnvironmentRequest(stack="b"), "demo", Catalog([broken]))


def test_stacks_refuse_duplicate_names_and_bad_parameter_names():
    with pytest.raises(ValueError, match="twice"):
        Stack("s", "d", services=(ServiceSpec(name="a", image="x"), ServiceSpec(name="a", image="y")))
    with pytest.raises(ValueError, match="twice"):
        Stack("s", "d", services=(), parameters=(StackParameter("p", ""), StackParameter("p", "")))
    with pytest.raises(ValueError, match="lowercase"):
        StackParameter("Bad-Name", "")


def test_an_update_keeps_generated_passwords_unless_given(catalog):
    first = resolve(EnvironmentRequest(stack="web-postgres"), "demo", catalog)
    password = first.services[0].env["POSTGRES_PASSWORD"]
    update = EnvironmentRequest(stack="web-postgres", parameters={"backend_image": "docker.io/library/x:2"})
    second = resolve(update, "demo", catalog, previous=first)
    assert second.services[0].env["POSTGRES_PASSWORD"] == password
    assert second.services[1].env["PGPASSWORD"] == password
    assert password in second.services[1].env["DATABASE_URL"]
    assert second.services[1].image == "docker.io/library/x:2"
    # An explicit value wins over the kept one.
    third = resolve(
        EnvironmentRequest(stack="web-postgres", parameters={"postgres_password": "new"}),
        "demo",
        catalog,
        first,
    )
    assert third.services[0].env["POSTGRES_PASSWORD"] == "new"
    # A previous spec of another stack, or without the service, gives nothing to keep.
    other = resolve(EnvironmentRequest(stack="postgres"), "demo", catalog)
    switched = resolve(EnvironmentRequest(stack="api-postgres"), "demo", catalog, previous=other)
    assert switched.services[0].env["POSTGRES_PASSWORD"] != other.services[0].env["POSTGRES_PASSWORD"]
    partial = dataclasses.replace(first, services=first.services[2:])
    kept = resolve(EnvironmentRequest(stack="web-postgres"), "demo", catalog, previous=partial)
    assert kept.services[0].env["POSTGRES_PASSWORD"] != password


def test_override_variables_named_like_secrets_become_secret(catalog):
    request = EnvironmentRequest(
        "web-postgres",
        services={"postgres": ServiceOverride(env={"POSTGRES_PASSWORD": "hunter2", "LOG_LEVEL": "debug"})},
    )
    spec = resolve(request, "shop", catalog)
    postgres = next(s for s in spec.services if s.name == "postgres")
    assert postgres.env["POSTGRES_PASSWORD"] == "hunter2"  # stored as given
    assert "POSTGRES_PASSWORD" in postgres.secret_env and "LOG_LEVEL" not in postgres.secret_env
