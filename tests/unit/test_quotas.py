from dataclasses import replace

import pytest

from scheduler import quotas
from scheduler.config import LimitSettings
from scheduler.domain import PortSpec, Resources, Security
from scheduler.errors import ResourceExhausted
from scheduler.validation import violations_of
from tests.unit.test_validation import api, base_spec, db, edit

LIMITS = LimitSettings(
    max_cpu_millis=4000,
    max_memory_bytes=8 * 1024**3,
    max_pids=4096,
    max_replicas=5,
    default_cpu_millis=1000,
    default_cpu_shares=512,
    default_memory_bytes=128 * 1024**2,
    default_pids=256,
    env_max_cpu_millis=3000,
    env_max_memory_bytes=1024**3,
    env_max_containers=4,
    env_max_published_ports=1,
    max_environments=3,
)


def test_zero_takes_the_default_and_set_limits_are_kept() -> None:
    spec = quotas.with_defaults(base_spec(), LIMITS)
    assert db(spec).resources == Resources(
        cpu_millis=1000,
        cpu_shares=512,
        memory_bytes=128 * 1024**2,
        pids=256,
        cpu_request_millis=250,
        memory_request_bytes=128 * 1024**2,
    )
    assert api(spec).resources == Resources(
        cpu_millis=500,
        cpu_shares=512,
        memory_bytes=256 * 1024**2,
        pids=100,
        cpu_request_millis=250,
        memory_request_bytes=256 * 1024**2,
    )
    assert violations_of("shop", spec, LIMITS) == []
    # Defaults can never exceed the bounds, so 0 is no way around them.
    with pytest.raises(ValueError, match="default_memory_bytes must not exceed max_memory_bytes"):
        LimitSettings(max_memory_bytes=64 * 1024**2, default_memory_bytes=128 * 1024**2)


@pytest.mark.parametrize(
    ("change", "quota"),
    [
        ({"replicas": 4}, "limits.env_max_containers"),
        ({"resources": Resources(cpu_millis=2500)}, "limits.env_max_cpu_millis"),
        ({"resources": Resources(memory_bytes=1024**3)}, "limits.env_max_memory_bytes"),
        ({"ports": (PortSpec(8080, publish=True), PortSpec(9090, publish=True))}, "limits.env_max_published_ports"),
    ],
)
def test_each_environment_quota_is_named(change: dict, quota: str) -> None:
    spec = quotas.with_defaults(edit(base_spec(), "api", **change), LIMITS)
    with pytest.raises(ResourceExhausted) as over:
        quotas.check_environment("shop", spec, LIMITS)
    assert over.value.details["quota"] == quota and quota in over.value.message


def test_the_base_spec_fits_and_the_daemon_wide_cap_counts_environments() -> None:
    quotas.check_environment("shop", quotas.with_defaults(base_spec(), LIMITS), LIMITS)
    quotas.check_environment_count(2, LIMITS)
    with pytest.raises(ResourceExhausted) as over:
        quotas.check_environment_count(3, LIMITS)
    assert over.value.details["quota"] == "limits.max_environments"


@pytest.mark.parametrize(
    ("security", "field", "problem"),
    [
        (Security(cap_add=("SYS_ADMIN",)), "cap_add[0]", "not in limits.allowed_capabilities"),
        (Security(cap_add=("ALL",)), "cap_add[0]", "ALL is not allowed"),
        (Security(cap_drop=("CAP_FLY",)), "cap_drop[0]", "is not a Linux capability"),
        (Security(seccomp="unconfined"), "seccomp", "limits.allow_unconfined_seccomp is off"),
        (Security(seccomp="loose"), "seccomp", "neither empty"),
    ],
)
def test_security_beyond_the_allow_list_is_refused_naming_the_field(
    security: Security, field: str, problem: str
) -> None:
    spec = edit(base_spec(), "api", security=security)
    violations = violations_of("shop", spec, LIMITS)
    assert [v.field for v in violations] == [f"spec.services.api.security.{field}"]
    assert problem in violations[0].description


def test_allowed_security_passes() -> None:
    spec = edit(base_spec(), "api", security=Security(cap_add=("net_raw",), cap_drop=("ALL",)))
    assert violations_of("shop", spec, LIMITS) == []
    relaxed = LIMITS.model_copy(update={"allow_unconfined_seccomp": True})
    assert violations_of("shop", edit(base_spec(), "api", security=Security(seccomp="unconfined")), relaxed) == []


def test_a_request_defaults_to_a_quarter_core_at_most_its_limit_and_memory_to_its_limit() -> None:
    small = replace(
        base_spec(),
        services=tuple(
            replace(s, resources=Resources(cpu_millis=100, cpu_request_millis=0, memory_request_bytes=64 * 1024**2))
            for s in base_spec().services
        ),
    )
    res = quotas.with_defaults(small, LIMITS).services[0].resources
    assert (res.cpu_request_millis, res.memory_request_bytes, res.memory_bytes) == (100, 64 * 1024**2, 128 * 1024**2)
