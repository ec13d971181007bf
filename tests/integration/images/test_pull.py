"""Pulls from real loopback registries (anonymous, htpasswd, bearer token, through a mirror) and the
error cases, each checked to leave no lease, ingest or image behind."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from scheduler import domain
from scheduler.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, Unavailable
from scheduler.runtime.containerd._gen.containerd.services.content.v1 import content_pb2 as content_pb
from scheduler.runtime.containerd._gen.containerd.services.snapshots.v1 import snapshots_pb2 as snapshots_pb
from scheduler.runtime.containerd.client import ContainerdClient
from scheduler.runtime.containerd.image_options import ImageOptions, RegistryOptions
from tests.integration.images.helpers import ArchiveRegistry, leftovers
from tests.support.images import POSTGRES, TOOLBOX
from tests.support.registry import Registry, free_port

pytestmark = pytest.mark.integration

TOOLBOX_REPO = "schedulerdemo/toolbox:1.0"


def _insecure(registry: Registry, **creds: str) -> ImageOptions:
    return ImageOptions(registries={registry.host: RegistryOptions(insecure=True, **creds)})


async def _assert_clean(client: ContainerdClient) -> None:
    assert await leftovers(client) == (0, 0)


async def test_anonymous_pull_unpacks_and_reports_progress(
    registry: Registry, image_archives: dict[str, Path], make_service, image_client: ContainerdClient
) -> None:
    ref = registry.push(image_archives[TOOLBOX], TOOLBOX_REPO)
    service = make_service(_insecure(registry))
    seen: list[domain.PullProgress] = []
    image = await service.pull(ref, progress=seen.append)
    assert image.name == ref
    (imported,) = await make_service().import_archive(image_archives[TOOLBOX])
    # skopeo may recompress on push, but the uncompressed layers, hence the chain ID, are the same.
    assert image.chain_id == imported.chain_id
    assert image.config == imported.config
    finished = {p.digest for p in seen if p.done == p.total}
    assert len(finished) >= 4  # manifest, config, two layers
    assert all(p.image == ref for p in seen)
    stat = await image_client.snapshots.stat(
        snapshots_pb.StatSnapshotRequest(snapshotter="overlayfs", key=image.chain_id)
    )
    assert stat.info.kind == snapshots_pb.COMMITTED
    info = await image_client.content.info(content_pb.InfoRequest(digest=image.digest))
    assert any(k.startswith("containerd.io/gc.ref.content.") for k in info.info.labels)
    await _assert_clean(image_client)


async def test_postgres_pull_from_registry(
    registry: Registry, image_archives: dict[str, Path], make_service, image_client: ContainerdClient
) -> None:
    ref = registry.push(image_archives[POSTGRES], "library/postgres:15")
    started = time.monotonic()
    image = await make_service(_insecure(registry)).pull(ref)
    elapsed = time.monotonic() - started
    assert image.config.stop_signal == "SIGINT"
    assert elapsed < 30, f"pull + unpack of postgres took {elapsed:.1f}s"
    await _assert_clean(image_client)


async def test_pull_policies(
    registry: Registry, image_archives: dict[str, Path], make_service, image_client: ContainerdClient
) -> None:
    ref = registry.push(image_archives[TOOLBOX], TOOLBOX_REPO)
    service = make_service(_insecure(registry))
    with pytest.raises(NotFound, match="pull policy is 'never'"):
        await service.ensure_image(ref, domain.PullPolicy.NEVER)
    pulled = await service.ensure_image(ref, domain.PullPolicy.IF_NOT_PRESENT)
    # Present now: neither policy needs the registry (its settings point nowhere).
    offline = make_service(ImageOptions(registries={registry.host: RegistryOptions(mirrors=["http://127.0.0.1:1"])}))
    assert await offline.ensure_image(ref, domain.PullPolicy.NEVER) == pulled
    assert await offline.ensure_image(ref, domain.PullPolicy.IF_NOT_PRESENT) == pulled
    assert await service.ensure_image(ref, domain.PullPolicy.ALWAYS) == pulled
    await _assert_clean(image_client)


async def test_htpasswd_registry_needs_the_right_password(
    auth_registry: Registry, image_archives: dict[str, Path], make_service, image_client: ContainerdClient
) -> None:
    ref = auth_registry.push(image_archives[TOOLBOX], TOOLBOX_REPO)
    with pytest.raises(PermissionDenied, match="requires credentials"):
        await make_service(_insecure(auth_registry)).pull(ref)
    with pytest.raises(PermissionDenied, match="'alice'"):
        await make_service(_insecure(auth_registry, username="alice", password="wrong")).pull(ref)
    await _assert_clean(image_client)
    assert await make_service().list() == []
    service = make_service(_insecure(auth_registry, username="alice", password=auth_registry.password))
    image = await service.pull(ref)
    assert image.name == ref
    await _assert_clean(image_client)


async def test_token_registry_pull_with_bearer_tokens(
    token_registry: Registry, image_archives: dict[str, Path], make_service, image_client: ContainerdClient
) -> None:
    ref = token_registry.push(image_archives[TOOLBOX], TOOLBOX_REPO)
    issuer = token_registry.token_issuer
    assert issuer is not None
    with pytest.raises(PermissionDenied, match="refused anonymous access"):
        await make_service(_insecure(token_registry)).pull(ref)
    with pytest.raises(PermissionDenied, match="token issuer"):
        await make_service(_insecure(token_registry, username="bob", password="wrong")).pull(ref)
    await _assert_clean(image_client)
    before = len(issuer.requests)
    service = make_service(_insecure(token_registry, username="bob", password=token_registry.password))
    image = await service.pull(ref)
    assert image.name == ref
    asked = issuer.requests[before:]
    assert asked and all(user == "bob" for _, user in asked)
    assert any("scope=repository%3Aschedulerdemo%2Ftoolbox%3Apull" in path for path, _ in asked)
    await _assert_clean(image_client)


async def test_mirror_serves_docker_io_names(
    registry: Registry, image_archives: dict[str, Path], make_service, image_client: ContainerdClient
) -> None:
    registry.push(image_archives[TOOLBOX], TOOLBOX_REPO)
    settings = ImageOptions(registries={"docker.io": RegistryOptions(mirrors=[f"http://{registry.host}"])})
    image = await make_service(settings).pull("schedulerdemo/toolbox:1.0")
    assert image.name == "docker.io/schedulerdemo/toolbox:1.0"
    # A dead mirror first, then the live one: mirrors are tried in order.
    settings = ImageOptions(
        registries={
            "docker.io": RegistryOptions(mirrors=[f"http://127.0.0.1:{free_port()}", f"http://{registry.host}"])
        }
    )
    again = await make_service(settings).pull("docker.io/schedulerdemo/toolbox:1.0", policy=domain.PullPolicy.ALWAYS)
    assert again.chain_id == image.chain_id
    await _assert_clean(image_client)


async def test_unreachable_registry_is_unavailable(make_service, image_client: ContainerdClient) -> None:
    host = f"127.0.0.1:{free_port()}"
    service = make_service(ImageOptions(registries={host: RegistryOptions(insecure=True)}))
    with pytest.raises(Unavailable, match=host):
        await service.pull(f"{host}/nothing/here:1")
    await _assert_clean(image_client)
    assert await service.list() == []


async def test_unknown_image_is_not_found(registry: Registry, make_service, image_client: ContainerdClient) -> None:
    service = make_service(_insecure(registry))
    with pytest.raises(NotFound, match="no/such"):
        await service.pull(f"{registry.host}/no/such:image")
    await _assert_clean(image_client)


async def test_malformed_references_are_invalid(make_service) -> None:
    service = make_service()
    for bad in ("", "UPPER/case", "postgres:", "a@sha256:123", "host:99999/x"):
        with pytest.raises(InvalidArgument, match="image"):
            await service.pull(bad)


async def test_corrupt_layer_is_refused_and_leaves_nothing(
    image_archives: dict[str, Path], make_service, image_client: ContainerdClient
) -> None:
    fake = ArchiveRegistry.from_archive(image_archives[TOOLBOX], "1.0")
    manifest = __import__("json").loads(fake.manifests["1.0"][1])
    bad_layer = manifest["layers"][1]["digest"]
    fake.corrupt.add(bad_layer)
    settings = ImageOptions(registries={"fake.test": RegistryOptions()})
    service = make_service(settings, transport=httpx.MockTransport(fake.handler))
    with pytest.raises(FailedPrecondition, match=bad_layer):
        await service.pull("fake.test/schedulerdemo/toolbox:1.0")
    await _assert_clean(image_client)
    assert await service.list() == []
    with pytest.raises(NotFound):
        await image_client.content.info(content_pb.InfoRequest(digest=bad_layer))


async def test_index_resolves_to_the_host_platform(
    image_archives: dict[str, Path], make_service, image_client: ContainerdClient
) -> None:
    fake = ArchiveRegistry.from_archive(image_archives[TOOLBOX], "1.0")
    media_type, manifest = fake.manifests["1.0"]
    amd64 = next(d for d, (_, data) in fake.manifests.items() if d.startswith("sha256:") and data == manifest)
    arm64 = "sha256:" + "ab" * 32  # never served: fetching it would fail the pull
    index = fake.add_index(
        "multi",
        [
            {
                "mediaType": media_type,
                "digest": arm64,
                "size": 500,
                "platform": {"os": "linux", "architecture": "arm64"},
            },
            {
                "mediaType": media_type,
                "digest": amd64,
                "size": len(manifest),
                "platform": {"os": "linux", "architecture": "amd64"},
            },
        ],
    )
    service = make_service(
        ImageOptions(allowed_registries=("fake.test",)),
        transport=httpx.MockTransport(fake.handler),
        platform=("linux", "amd64", ""),
    )
    image = await service.pull("fake.test/schedulerdemo/toolbox:multi")
    assert image.digest == index
    assert not any(arm64 in path for path in fake.requests)
    info = await image_client.content.info(content_pb.InfoRequest(digest=index))
    assert info.info.labels["containerd.io/gc.ref.content.m.1"] == amd64
    assert (await service.get("fake.test/schedulerdemo/toolbox:multi")).chain_id == image.chain_id
    arm_only = make_service(
        ImageOptions(allowed_registries=("fake.test",)),
        transport=httpx.MockTransport(fake.handler),
        platform=("linux", "s390x", ""),
    )
    with pytest.raises(NotFound, match="linux/s390x"):
        await arm_only.pull("fake.test/schedulerdemo/toolbox:multi", policy=domain.PullPolicy.ALWAYS)
    await _assert_clean(image_client)


async def test_concurrent_pulls_of_one_image_share_the_work(
    registry: Registry, image_archives: dict[str, Path], make_service, image_client: ContainerdClient
) -> None:
    import asyncio

    ref = registry.push(image_archives[TOOLBOX], TOOLBOX_REPO)
    service = make_service(_insecure(registry))
    first, second = await asyncio.gather(
        service.pull(ref, policy=domain.PullPolicy.ALWAYS), service.pull(ref, policy=domain.PullPolicy.ALWAYS)
    )
    assert first == second
    await _assert_clean(image_client)


async def test_a_host_outside_the_allow_list_is_refused_without_a_connection(make_service) -> None:
    contacted: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        contacted.append(str(request.url))
        return httpx.Response(404)

    service = make_service(ImageOptions(), transport=httpx.MockTransport(handler))
    for ref in ("127.0.0.1:22/probe:1", "169.254.169.254/latest:1", "localhost:5000/x:1", "evil.example/x:1"):
        with pytest.raises(PermissionDenied, match="is not allowed"):
            await service.pull(ref)
    assert contacted == []


async def test_an_allowed_name_that_resolves_to_loopback_is_refused(make_service) -> None:
    contacted: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        contacted.append(str(request.url))
        return httpx.Response(404)

    service = make_service(ImageOptions(allowed_registries=("localhost:5000",)), transport=httpx.MockTransport(handler))
    with pytest.raises(PermissionDenied, match="resolves to a loopback"):
        await service.pull("localhost:5000/probe:1")
    assert contacted == []
    # Listed under images.registries, the operator means it: the pull goes ahead (and finds nothing).
    configured = make_service(
        ImageOptions(registries={"localhost:5000": RegistryOptions(insecure=True)}),
        transport=httpx.MockTransport(handler),
    )
    with pytest.raises(NotFound):
        await configured.pull("localhost:5000/probe:1")
    assert contacted
