"""One case per rule: a valid spec with one thing broken must name exactly that field."""

import dataclasses
from datetime import timedelta

import pytest

from scheduler import reference
from scheduler.config import LimitSettings
from scheduler.domain import (
    Dependency,
    DependencyCondition,
    EnvironmentRequest,
    EnvironmentSpec,
    HealthCheck,
    HealthCheckKind,
    NetworkSettings,
    PortProtocol,
    PortSpec,
    Resources,
    RestartMode,
    RestartPolicy,
    ServiceSpec,
    VolumeMount,
)
from scheduler.errors import InvalidArgument
from scheduler.stacks.catalog import default_catalog
from scheduler.stacks.resolve import resolve
from scheduler.validation import image_reference_problem, validate, violations_of

LIMITS = LimitSettings(max_cpu_millis=4000, max_memory_bytes=8 * 1024**3, max_pids=4096, max_replicas=5)


def base_spec() -> EnvironmentSpec:
    return EnvironmentSpec(
        stack="test",
        services=(
            ServiceSpec(
                name="db",
                image="docker.io/library/postgres:15",
                env={"POSTGRES_PASSWORD": "x"},
                ports=(PortSpec(5432),),
                volumes=(VolumeMount("pgdata", "/var/lib/postgresql/data"),),
                health=HealthCheck(kind=HealthCheckKind.EXEC, command=("pg_isready",)),
                stateful=True,
                secret_env=frozenset({"POSTGRES_PASSWORD"}),
            ),
            ServiceSpec(
                name="api",
                image="127.0.0.1:5000/shop/api:1.0",
                ports=(PortSpec(8080, publish=True, host_port=28080),),
                health=HealthCheck(kind=HealthCheckKind.HTTP, port=8080, path="/health"),
                restart=RestartPolicy(mode=RestartMode.ALWAYS),
                depends_on=(Dependency("db", DependencyCondition.HEALTHY),),
                resources=Resources(cpu_millis=500, memory_bytes=256 * 1024**2, pids=100),
            ),
        ),
        labels={"team": "shop", "example.com/owner": "alice"},
    )


def edit(spec: EnvironmentSpec, service: str, **changes) -> EnvironmentSpec:
    services = tuple(dataclasses.replace(s, **changes) if s.name == service else s for s in spec.services)
    return dataclasses.replace(spec, services=services)


def sub(obj, **changes):
    return dataclasses.replace(obj, **changes)


def api(spec=None):
    return next(s for s in (spec or base_spec()).services if s.name == "api")


def db(spec=None):
    return next(s for s in (spec or base_spec()).services if s.name == "db")


def test_the_base_spec_is_valid():
    validate("shop-dev", base_spec(), LIMITS)
    assert violations_of("shop-dev", base_spec(), LIMITS) == []


# (case id, environment name, spec, expected field)
CASES = [
    # environment name
    ("name-empty", "", base_spec(), "name"),
    ("name-upper", "Shop", base_spec(), "name"),
    ("name-underscore", "shop_dev", base_spec(), "name"),
    ("name-leading-dash", "-shop", base_spec(), "name"),
    ("name-too-long", "a" * 41, base_spec(), "name"),
    # stack, labels, network, ttl
    ("stack-empty", "ok", sub(base_spec(), stack=""), "spec.stack"),
    ("label-key", "ok", sub(base_spec(), labels={"bad key": "v"}), "spec.labels.bad key"),
    ("label-key-empty", "ok", sub(base_spec(), labels={"": "v"}), "spec.labels."),
    ("label-value-control", "ok", sub(base_spec(), labels={"k": "a\nb"}), "spec.labels.k"),
    ("label-value-long", "ok", sub(base_spec(), labels={"k": "v" * 2000}), "spec.labels.k"),
    (
        "subnet-syntax",
        "ok",
        sub(base_spec(), network=NetworkSettings(subnet="10.88.1.0/33")),
        "spec.network.subnet",
    ),
    (
        "subnet-host-bits",
        "ok",
        sub(base_spec(), network=NetworkSettings(subnet="10.88.1.5/24")),
        "spec.network.subnet",
    ),
    (
        "subnet-too-small",
        "ok",
        sub(base_spec(), network=NetworkSettings(subnet="10.88.1.0/30")),
        "spec.network.subnet",
    ),
    ("host-ip", "ok", sub(base_spec(), network=NetworkSettings(host_ip="localhost")), "spec.network.host_ip"),
    ("ttl", "ok", sub(base_spec(), ttl=timedelta(0)), "spec.ttl"),
    ("no-services", "ok", sub(base_spec(), services=()), "spec.services"),
    # service names
    ("service-name-upper", "ok", edit(base_spec(), "api", name="API"), "spec.services.API.name"),
    ("service-name-long", "ok", edit(base_spec(), "api", name="a" * 33), f"spec.services.{'a' * 33}.name"),
    ("service-name-empty", "ok", edit(base_spec(), "api", name=""), "spec.services[1].name"),
    (
        "service-name-duplicate",
        "ok",
        sub(base_spec(), services=(*base_spec().services, sub(api(), depends_on=(), ports=()))),
        "spec.services.api.name",
    ),
    # images
    ("image-empty", "ok", edit(base_spec(), "api", image=""), "spec.services.api.image"),
    ("image-upper", "ok", edit(base_spec(), "api", image="docker.io/Library/x:1"), "spec.services.api.image"),
    ("image-space", "ok", edit(base_spec(), "api", image="busybox latest"), "spec.services.api.image"),
    ("image-bad-tag", "ok", edit(base_spec(), "api", image="busybox:-x"), "spec.services.api.image"),
    (
        "image-bad-digest",
        "ok",
        edit(base_spec(), "api", image="busybox@sha256:abc"),
        "spec.services.api.image",
    ),
    # command, args, env
    ("command-nul", "ok", edit(base_spec(), "api", command=("a\x00b",)), "spec.services.api.command[0]"),
    ("command-empty-program", "ok", edit(base_spec(), "api", command=("",)), "spec.services.api.command[0]"),
    ("args-nul", "ok", edit(base_spec(), "api", args=("ok", "\x00")), "spec.services.api.args[1]"),
    ("env-key-dash", "ok", edit(base_spec(), "api", env={"MY-VAR": "1"}), "spec.services.api.env.MY-VAR"),
    ("env-key-digit", "ok", edit(base_spec(), "api", env={"1VAR": "1"}), "spec.services.api.env.1VAR"),
    ("env-key-empty", "ok", edit(base_spec(), "api", env={"": "1"}), "spec.services.api.env."),
    ("env-value-nul", "ok", edit(base_spec(), "api", env={"A": "x\x00"}), "spec.services.api.env.A"),
    (
        "secret-env-unknown",
        "ok",
        edit(base_spec(), "api", secret_env=frozenset({"NOPE"})),
        "spec.services.api.secret_env",
    ),
    # ports
    (
        "port-zero",
        "ok",
        edit(base_spec(), "db", ports=(PortSpec(0),)),
        "spec.services.db.ports[0].container_port",
    ),
    (
        "port-high",
        "ok",
        edit(base_spec(), "db", ports=(PortSpec(70000),)),
        "spec.services.db.ports[0].container_port",
    ),
    (
        "port-duplicate",
        "ok",
        edit(base_spec(), "db", ports=(PortSpec(5432), PortSpec(5432))),
        "spec.services.db.ports[1].container_port",
    ),
    (
        "host-port-range",
        "ok",
        edit(base_spec(), "db", ports=(PortSpec(5432, publish=True, host_port=65536),)),
        "spec.services.db.ports[0].host_port",
    ),
    (
        "host-port-unpublished",
        "ok",
        edit(base_spec(), "db", ports=(PortSpec(5432, host_port=25432),)),
        "spec.services.db.ports[0].publish",
    ),
    (
        "host-ip-bad",
        "ok",
        edit(base_spec(), "db", ports=(PortSpec(5432, publish=True, host_ip="1.2.3"),)),
        "spec.services.db.ports[0].host_ip",
    ),
    (
        "host-port-duplicate-in-env",
        "ok",
        edit(base_spec(), "db", ports=(PortSpec(5432, publish=True, host_port=28080),)),
        "spec.services.api.ports[0].host_port",
    ),
    (
        "host-port-with-replicas",
        "ok",
        edit(base_spec(), "api", replicas=2),
        "spec.services.api.ports[0].host_port",
    ),
    # volumes
    (
        "volume-name",
        "ok",
        edit(base_spec(), "db", volumes=(VolumeMount("PG Data", "/data"),)),
        "spec.services.db.volumes[0].name",
    ),
    (
        "volume-name-dot",
        "ok",
        edit(base_spec(), "db", volumes=(VolumeMount("..", "/data"),)),
        "spec.services.db.volumes[0].name",
    ),
    (
        "volume-relative",
        "ok",
        edit(base_spec(), "db", volumes=(VolumeMount("d", "data"),)),
        "spec.services.db.volumes[0].path",
    ),
    (
        "volume-dotdot",
        "ok",
        edit(base_spec(), "db", volumes=(VolumeMount("d", "/data/../etc"),)),
        "spec.services.db.volumes[0].path",
    ),
    (
        "volume-unnormalised",
        "ok",
        edit(base_spec(), "db", volumes=(VolumeMount("d", "/data//x/"),)),
        "spec.services.db.volumes[0].path",
    ),
    (
        "volume-root",
        "ok",
        edit(base_spec(), "db", volumes=(VolumeMount("d", "/"),)),
        "spec.services.db.volumes[0].path",
    ),
    (
        "volume-path-twice",
        "ok",
        edit(base_spec(), "db", volumes=(VolumeMount("a", "/data"), VolumeMount("b", "/data"))),
        "spec.services.db.volumes[1].path",
    ),
    # resources and replicas
    (
        "cpu-over",
        "ok",
        edit(base_spec(), "api", resources=Resources(cpu_millis=4001)),
        "spec.services.api.resources.cpu_millis",
    ),
    (
        "cpu-negative",
        "ok",
        edit(base_spec(), "api", resources=Resources(cpu_millis=-1)),
        "spec.services.api.resources.cpu_millis",
    ),
    (
        "cpu-request-over-limit",
        "ok",
        edit(base_spec(), "api", resources=Resources(cpu_millis=500, cpu_request_millis=600)),
        "spec.services.api.resources.cpu_request_millis",
    ),
    (
        "memory-request-over-limit",
        "ok",
        edit(base_spec(), "api", resources=Resources(memory_bytes=64 * 1024**2, memory_request_bytes=65 * 1024**2)),
        "spec.services.api.resources.memory_request_bytes",
    ),
    (
        "memory-over",
        "ok",
        edit(base_spec(), "api", resources=Resources(memory_bytes=9 * 1024**3)),
        "spec.services.api.resources.memory_bytes",
    ),
    (
        "memory-tiny",
        "ok",
        edit(base_spec(), "api", resources=Resources(memory_bytes=1024)),
        "spec.services.api.resources.memory_bytes",
    ),
    (
        "pids-over",
        "ok",
        edit(base_spec(), "api", resources=Resources(pids=5000)),
        "spec.services.api.resources.pids",
    ),
    (
        "shares",
        "ok",
        edit(base_spec(), "api", resources=Resources(cpu_shares=1)),
        "spec.services.api.resources.cpu_shares",
    ),
    (
        "disk",
        "ok",
        edit(base_spec(), "api", resources=Resources(disk_bytes=-5)),
        "spec.services.api.resources.disk_bytes",
    ),
    (
        "disk-limit-not-enforced",
        "ok",
        edit(base_spec(), "api", resources=Resources(disk_bytes=1 << 30)),
        "spec.services.api.resources.disk_bytes",
    ),
    ("replicas-zero", "ok", edit(base_spec(), "db", replicas=0), "spec.services.db.replicas"),
    (
        "replicas-over",
        "ok",
        edit(edit(base_spec(), "api", ports=()), "api", replicas=6),
        "spec.services.api.replicas",
    ),
    ("stateful-replicas", "ok", edit(base_spec(), "db", replicas=2), "spec.services.db.replicas"),
    # health
    (
        "health-interval",
        "ok",
        edit(base_spec(), "api", health=sub(api().health, interval=timedelta(0))),
        "spec.services.api.health.interval",
    ),
    (
        "health-timeout",
        "ok",
        edit(base_spec(), "api", health=sub(api().health, timeout=timedelta(seconds=-1))),
        "spec.services.api.health.timeout",
    ),
    (
        "health-retries",
        "ok",
        edit(base_spec(), "api", health=sub(api().health, retries=0)),
        "spec.services.api.health.retries",
    ),
    (
        "health-start-period",
        "ok",
        edit(base_spec(), "api", health=sub(api().health, start_period=timedelta(seconds=-1))),
        "spec.services.api.health.start_period",
    ),
    (
        "health-port",
        "ok",
        edit(base_spec(), "api", health=sub(api().health, port=0)),
        "spec.services.api.health.port",
    ),
    (
        "health-tcp-port",
        "ok",
        edit(base_spec(), "api", health=HealthCheck(kind=HealthCheckKind.TCP, port=99999)),
        "spec.services.api.health.port",
    ),
    (
        "health-path",
        "ok",
        edit(base_spec(), "api", health=sub(api().health, path="health")),
        "spec.services.api.health.path",
    ),
    (
        "health-exec-empty",
        "ok",
        edit(base_spec(), "db", health=sub(db().health, command=())),
        "spec.services.db.health.command",
    ),
    # restart
    (
        "restart-backoff",
        "ok",
        edit(base_spec(), "api", restart=RestartPolicy(RestartMode.ALWAYS, initial_backoff=timedelta(0))),
        "spec.services.api.restart.initial_backoff",
    ),
    (
        "restart-max-backoff",
        "ok",
        edit(
            base_spec(),
            "api",
            restart=RestartPolicy(
                RestartMode.ALWAYS, initial_backoff=timedelta(seconds=5), max_backoff=timedelta(seconds=1)
            ),
        ),
        "spec.services.api.restart.max_backoff",
    ),
    (
        "restart-retries",
        "ok",
        edit(base_spec(), "api", restart=RestartPolicy(max_retries=-1)),
        "spec.services.api.restart.max_retries",
    ),
    # dependencies
    (
        "dep-unknown",
        "ok",
        edit(base_spec(), "api", depends_on=(Dependency("cache"),)),
        "spec.services.api.depends_on[0].service",
    ),
    (
        "dep-self",
        "ok",
        edit(base_spec(), "api", depends_on=(Dependency("api"),)),
        "spec.services.api.depends_on[0].service",
    ),
    (
        "dep-twice",
        "ok",
        edit(base_spec(), "api", depends_on=(Dependency("db"), Dependency("db"))),
        "spec.services.api.depends_on[1].service",
    ),
    (
        "dep-deadline",
        "ok",
        edit(base_spec(), "api", depends_on=(Dependency("db", deadline=timedelta(0)),)),
        "spec.services.api.depends_on[0].deadline",
    ),
    (
        "dep-cycle",
        "ok",
        edit(base_spec(), "db", depends_on=(Dependency("api"),)),
        "spec.services.db.depends_on",
    ),
    # user, working dir, stop grace
    ("user", "ok", edit(base_spec(), "api", user="a:b:c"), "spec.services.api.user"),
    ("working-dir", "ok", edit(base_spec(), "api", working_dir="srv"), "spec.services.api.working_dir"),
    (
        "stop-grace",
        "ok",
        edit(base_spec(), "api", stop_grace=timedelta(seconds=-1)),
        "spec.services.api.stop_grace",
    ),
]


@pytest.mark.parametrize(("name", "spec", "field"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_rule_names_its_field(name, spec, field):
    with pytest.raises(InvalidArgument) as err:
        validate(name, spec, LIMITS)
    fields = [v.field for v in err.value.violations]
    assert fields == [field], err.value.message
    assert field in err.value.message


def test_every_violation_is_reported_not_just_the_first():
    spec = edit(
        edit(base_spec(), "api", image="Bad Image", env={"1X": "y"}, replicas=99),
        "db",
        ports=(PortSpec(0),),
        volumes=(VolumeMount("v", "relative"),),
    )
    with pytest.raises(InvalidArgument) as err:
        validate("Bad_Name", spec, LIMITS)
    assert set(v.field for v in err.value.violations) >= {
        "name",
        "spec.services.api.image",
        "spec.services.api.env.1X",
        "spec.services.api.replicas",
        "spec.services.db.ports[0].container_port",
        "spec.services.db.volumes[0].path",
    }


def test_cycle_message_names_the_whole_cycle():
    spec = edit(base_spec(), "db", depends_on=(Dependency("api"),))
    with pytest.raises(InvalidArgument, match="db -> api -> db"):
        validate("ok", spec, LIMITS)


def test_same_host_port_on_different_protocols_is_allowed():
    spec = edit(base_spec(), "db", ports=(PortSpec(5432, PortProtocol.UDP, publish=True, host_port=28080),))
    validate("ok", spec, LIMITS)


def test_health_fields_are_not_checked_when_there_is_no_check():
    spec = edit(base_spec(), "api", health=HealthCheck(kind=HealthCheckKind.NONE, retries=0, port=0))
    validate("ok", spec, LIMITS)


def test_name_of_40_characters_is_the_longest_allowed():
    validate("a" * 40, base_spec(), LIMITS)


@pytest.mark.parametrize(
    "ref",
    [
        "busybox",
        "busybox:1.36",
        "library/busybox:latest",
        "docker.io/library/postgres:15",
        "127.0.0.1:5000/shop/api:1.0",
        "localhost:5000/a_b/c__d/e-f.g:TAG_1.2-x",
        "registry.example.com/team/app@sha256:" + "0" * 64,
        "registry.example.com/team/app:1@sha256:" + "f" * 64,
        "[::1]:5000/app:1",
        "reg.test:5000/app:1.0",
        "app@sha512:" + "0" * 128,
        "app@sha384:" + "a" * 96,
    ],
)
def test_valid_image_references(ref):
    assert image_reference_problem(ref) is None
    # The runtime reads the same grammar: what the API accepts, the runtime can pull.
    assert reference.parse(ref).name


@pytest.mark.parametrize(
    "ref",
    [
        "",
        "UPPER/app",
        "app:",
        "app:tag with space",
        ":1",
        "/app",
        "app//x",
        "a" * 256,
        "app@md5:12",
        "ht tp://x/y",
        "app@sha256:" + "A" * 64,
        "app@sha256:" + "0" * 63,
        "app@sha256:" + "0" * 65,
        "app@sha512:" + "0" * 64,
        "app@" + "0" * 64,
        "reg.test:99999/app:1",
        "reg.test:5000/app:" + "t" * 129,
    ],
)
def test_invalid_image_references(ref):
    problem = image_reference_problem(ref)
    assert problem is not None
    with pytest.raises(InvalidArgument, match="not a valid image reference"):
        reference.parse(ref)


def test_an_image_reference_problem_says_which_part_is_wrong():
    assert "bad digest" in (image_reference_problem("app@sha256:" + "0" * 63) or "")
    assert "bad port" in (image_reference_problem("reg.test:99999/app:1") or "")
    assert "bad tag" in (image_reference_problem("app:-x") or "")
    assert "longer than 255" in (image_reference_problem("x" * 300) or "")
    assert "..." in (image_reference_problem("X" * 300) or ""), "a long reference is clipped in the message"


def test_resolved_stacks_with_user_overrides_are_checked_too():
    from scheduler.domain import ServiceOverride

    request = EnvironmentRequest(stack="web-postgres", services={"postgres": ServiceOverride(replicas=3)})
    spec = resolve(request, "demo", default_catalog())
    with pytest.raises(InvalidArgument) as err:
        validate("demo", spec, LIMITS)
    assert [v.field for v in err.value.violations] == ["spec.services.postgres.replicas"]


def test_published_ports_of_a_whole_environment_are_bounded_replicas_counted() -> None:
    ports = tuple(PortSpec(8000 + i, publish=True) for i in range(30))
    services = tuple(
        ServiceSpec(name=f"s{i}", image="docker.io/library/busybox:1", ports=ports, replicas=5) for i in range(2)
    )
    spec = dataclasses.replace(base_spec(), services=services)
    problems = [v for v in violations_of("env", spec, LIMITS) if "host ports" in v.description]
    assert [(v.field, v.description) for v in problems] == [
        ("spec.services", "publish 300 host ports (replicas counted); at most 128 are allowed")
    ]
