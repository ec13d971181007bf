"""Converted environments are reused per stored revision, and only per stored revision."""

from dataclasses import replace

from scheduler.api.servicer import EnvironmentProtos
from tests.unit.storage.factories import full_environment


def test_a_revision_is_converted_once_and_a_new_revision_again() -> None:
    protos = EnvironmentProtos(capacity=2)
    env = full_environment("alpha")
    first = protos.of(env)
    assert protos.of(env) is first
    assert first.name == "alpha"
    newer = replace(env, revision=env.revision + 1, generation=7)
    assert protos.of(newer) is not first and protos.of(newer).generation == 7
    unstored = replace(env, revision=0)
    assert protos.of(unstored) is not protos.of(unstored)  # a validate-only result is never cached


def test_the_cache_is_bounded_oldest_out_first() -> None:
    protos = EnvironmentProtos(capacity=2)
    envs = [full_environment(f"e{i}") for i in range(3)]
    kept = [protos.of(e) for e in envs]
    assert protos.of(envs[2]) is kept[2] and protos.of(envs[1]) is kept[1]
    assert protos.of(envs[0]) is not kept[0]
