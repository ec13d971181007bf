"""The registry HTTP client against fake registries (httpx.MockTransport): endpoints, auth, errors."""

from __future__ import annotations

import base64
import hashlib

import httpx
import pytest

from scheduler.errors import FailedPrecondition, NotFound, PermissionDenied, Unavailable
from scheduler.reference import parse
from scheduler.runtime.containerd.image_options import RegistryOptions
from scheduler.runtime.containerd.registry import (
    OCI_MANIFEST,
    Descriptor,
    RegistryClient,
    endpoints_for,
    parse_challenge,
)

MANIFEST = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}'
MANIFEST_DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _manifest_response(request: httpx.Request) -> httpx.Response:
    headers = {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": MANIFEST_DIGEST}
    if request.method == "HEAD":
        return httpx.Response(200, headers={**headers, "Content-Length": str(len(MANIFEST))})
    return httpx.Response(200, headers=headers, content=MANIFEST)


def test_endpoints_mirrors_first_then_the_host() -> None:
    registries = {
        "docker.io": RegistryOptions(mirrors=["http://127.0.0.1:5000", "mirror.local:5001/v2/"]),
        "mirror.local:5001": RegistryOptions(insecure=True, username="m", password="p"),
        "127.0.0.1:6000": RegistryOptions(insecure=True),
    }
    eps = endpoints_for(parse("postgres:15"), registries)
    assert [e.base_url for e in eps] == [
        "http://127.0.0.1:5000",
        "http://mirror.local:5001",
        "https://registry-1.docker.io",
    ]
    assert [e.mirror for e in eps] == [True, True, False]
    assert (eps[1].username, eps[1].password) == ("m", "p")
    assert [e.base_url for e in endpoints_for(parse("127.0.0.1:6000/app"), registries)] == ["http://127.0.0.1:6000"]
    # Not marked insecure: HTTPS only.
    assert [e.base_url for e in endpoints_for(parse("127.0.0.1:7000/app"), registries)] == ["https://127.0.0.1:7000"]


def test_parse_challenge() -> None:
    scheme, params = parse_challenge(
        'Bearer realm="http://127.0.0.1:1/token",service="reg",scope="repository:a/b:pull,push"'
    )
    assert scheme == "bearer"
    assert params == {"realm": "http://127.0.0.1:1/token", "service": "reg", "scope": "repository:a/b:pull,push"}
    assert parse_challenge('Basic realm="x"') == ("basic", {"realm": "x"})


async def test_bearer_flow_with_credentials_and_token_cache() -> None:
    token_calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.test":
            token_calls.append(request)
            if request.headers.get("Authorization") != _basic("bob", "pw"):
                return httpx.Response(401)
            assert request.url.params["scope"] == "repository:team/app:pull"
            assert request.url.params["service"] == "reg"
            return httpx.Response(200, json={"access_token": "T0K"})
        if request.headers.get("Authorization") != "Bearer T0K":
            return httpx.Response(
                401, headers={"WWW-Authenticate": 'Bearer realm="https://auth.test/token",service="reg"'}
            )
        return _manifest_response(request)

    registries = {"reg.test": RegistryOptions(username="bob", password="pw")}
    async with RegistryClient(registries, transport=httpx.MockTransport(handler)) as client:
        ref = parse("reg.test/team/app:1")
        endpoint, desc = await client.resolve(ref)
        assert desc == Descriptor(OCI_MANIFEST, MANIFEST_DIGEST, len(MANIFEST))
        assert await client.fetch_manifest(endpoint, ref, desc) == MANIFEST
    assert len(token_calls) == 1  # the second request reused the token

    wrong = {"reg.test": RegistryOptions(username="bob", password="nope")}
    async with RegistryClient(wrong, transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(PermissionDenied, match="refused the credentials of 'bob'"):
            await client.resolve(parse("reg.test/team/app:1"))


async def test_basic_challenge() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.headers.get("Authorization") == _basic("alice", "s3cret"):
            return _manifest_response(request)
        return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="registry"'})

    transport = httpx.MockTransport(handler)
    async with RegistryClient(
        {"reg.test": RegistryOptions(username="alice", password="s3cret")}, transport=transport
    ) as c:
        assert (await c.resolve(parse("reg.test/app:1")))[1].digest == MANIFEST_DIGEST
    async with RegistryClient({}, transport=transport) as c:
        with pytest.raises(PermissionDenied, match="requires credentials"):
            await c.resolve(parse("reg.test/app:1"))
    async with RegistryClient({"reg.test": RegistryOptions(username="alice", password="x")}, transport=transport) as c:
        with pytest.raises(PermissionDenied, match="'alice'"):
            await c.resolve(parse("reg.test/app:1"))


async def test_mirror_falls_back_to_the_next_endpoint_and_errors_are_classified() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.host)
        if request.url.host == "dead.mirror":
            raise httpx.ConnectError("connection refused", request=request)
        if request.url.host == "empty.mirror":
            return httpx.Response(404)
        return _manifest_response(request)

    registries = {"docker.io": RegistryOptions(mirrors=["http://dead.mirror", "http://empty.mirror"])}
    async with RegistryClient(registries, transport=httpx.MockTransport(handler)) as client:
        endpoint, _ = await client.resolve(parse("postgres:15"))
    assert endpoint.base_url == "https://registry-1.docker.io"
    assert seen == ["dead.mirror", "empty.mirror", "registry-1.docker.io"]

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async with RegistryClient({}, transport=httpx.MockTransport(down)) as client:
        with pytest.raises(Unavailable, match="reg.test"):
            await client.resolve(parse("reg.test/app:1"))

    def missing(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404)

    async with RegistryClient({}, transport=httpx.MockTransport(missing)) as client:
        with pytest.raises(NotFound, match="reg.test/app:1"):
            await client.resolve(parse("reg.test/app:1"))

    def broken(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503)

    async with RegistryClient({}, transport=httpx.MockTransport(broken)) as client:
        with pytest.raises(Unavailable, match="503"):
            await client.resolve(parse("reg.test/app:1"))


async def test_manifest_digest_is_verified() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Type": OCI_MANIFEST}, content=MANIFEST.replace(b"2", b"3"))

    async with RegistryClient({}, transport=httpx.MockTransport(handler)) as client:
        ref = parse(f"reg.test/app@{MANIFEST_DIGEST}")
        # A pinned digest is trusted for resolving; the bytes are checked when fetched.
        endpoint, desc = await client.resolve(ref)
        assert desc.digest == MANIFEST_DIGEST
        with pytest.raises(FailedPrecondition, match=MANIFEST_DIGEST):
            await client.fetch_manifest(endpoint, ref, desc)
        with pytest.raises(FailedPrecondition, match="expected 5"):
            await client.fetch_manifest(endpoint, ref, Descriptor(OCI_MANIFEST, MANIFEST_DIGEST, 5))


async def test_resolve_without_head_headers_hashes_the_body() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "HEAD":
            return httpx.Response(200)
        return httpx.Response(200, headers={"Content-Type": "text/plain"}, content=MANIFEST)

    async with RegistryClient({}, transport=httpx.MockTransport(handler)) as client:
        _, desc = await client.resolve(parse("reg.test/app:1"))
    assert desc == Descriptor(OCI_MANIFEST, MANIFEST_DIGEST, len(MANIFEST))
