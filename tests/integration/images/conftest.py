"""Fixtures of the image tests: an ImageService in a namespace of its own, emptied afterwards."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from scheduler.errors import NotFound
from scheduler.runtime.containerd._gen.containerd.services.content.v1 import content_pb2 as content_pb
from scheduler.runtime.containerd._gen.containerd.services.images.v1 import images_pb2 as images_pb
from scheduler.runtime.containerd._gen.containerd.services.leases.v1 import leases_pb2 as leases_pb
from scheduler.runtime.containerd.client import ContainerdClient
from scheduler.runtime.containerd.image_options import ImageOptions
from scheduler.runtime.containerd.images import ImageService


@pytest.fixture
async def image_client(containerd_socket: str) -> AsyncIterator[ContainerdClient]:
    """A client in a fresh namespace: counts of images, leases and ingests start at zero."""
    client = await ContainerdClient.connect(containerd_socket, f"img-{uuid.uuid4().hex[:10]}")
    try:
        yield client
    finally:
        try:
            images = await client.images.list(images_pb.ListImagesRequest())
            for image in images.images:
                try:
                    await client.images.delete(images_pb.DeleteImageRequest(name=image.name, sync=True))
                except NotFound:
                    pass
            for lease in (await client.leases.list(leases_pb.ListRequest())).leases:
                try:
                    await client.leases.delete(leases_pb.DeleteRequest(id=lease.id, sync=True))
                except NotFound:
                    pass
            for status in (await client.content.list_statuses(content_pb.ListStatusesRequest())).statuses:
                try:
                    await client.content.abort(content_pb.AbortRequest(ref=status.ref))
                except NotFound:
                    pass
        finally:
            await client.close()


@pytest.fixture
def make_service(image_client: ContainerdClient):  # type: ignore[no-untyped-def]
    """Build an ImageService over the test's client with the given settings."""

    def make(settings: ImageOptions | None = None, **kwargs: object) -> ImageService:
        return ImageService(image_client, settings or ImageOptions(), "overlayfs", **kwargs)  # type: ignore[arg-type]

    return make
