"""Regression tests for small defects once present: each would fail if the defect came back."""

from __future__ import annotations

import ast
import typing
from pathlib import Path

import grpc
import httpx
import pytest

import scheduler.domain
from scheduler.api import interceptors
from scheduler.errors import FailedPrecondition
from scheduler.reference import parse
from scheduler.runtime.containerd.registry import (
    MAX_MANIFEST_BYTES,
    OCI_MANIFEST,
    Descriptor,
    Endpoint,
    RegistryClient,
)

SRC = Path(scheduler.domain.__file__).resolve().parents[1]


async def test_a_manifest_over_four_mebibytes_is_refused_before_any_request() -> None:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(404)

    ref = parse("reg.test/app:1")
    endpoint = Endpoint("https://reg.test", "reg.test")
    async with RegistryClient({}, transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(FailedPrecondition, match="over the limit"):
            await client.fetch_manifest(
                endpoint, ref, Descriptor(OCI_MANIFEST, "sha256:" + "a" * 64, 4 * 1024 * 1024 + 1)
            )
    assert requests == []
    assert MAX_MANIFEST_BYTES == 4 * 1024 * 1024  # containerd's limit, in binary mebibytes


def test_abort_is_recognised_by_type_not_by_class_name() -> None:
    class AbortError(Exception):  # same name, unrelated class
        pass

    assert interceptors._is_abort(grpc.aio.AbortError())
    assert not interceptors._is_abort(AbortError())


def test_the_network_logs_through_structlog_only() -> None:
    offenders = []
    for path in sorted((SRC / "scheduler" / "network").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            module = node.module if isinstance(node, ast.ImportFrom) else None
            if "logging" in names or module == "logging":
                offenders.append(str(path.relative_to(SRC)))
    assert offenders == []


def test_no_domain_name_shadows_typing_protocol() -> None:
    assert getattr(scheduler.domain, "Protocol", typing.Protocol) is typing.Protocol
    assert scheduler.domain.PortProtocol.TCP.value == "tcp"
