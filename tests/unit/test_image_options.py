"""The daemon turns its ``images`` section into the image service's own options."""

from __future__ import annotations

from scheduler import domain
from scheduler.config import ImageSettings, RegistryHost
from scheduler.daemon import image_options
from scheduler.runtime.containerd.image_options import ImageOptions, RegistryOptions


def test_every_field_of_the_images_section_reaches_the_image_service() -> None:
    settings = ImageSettings(
        pull_policy="always",
        registries={
            "127.0.0.1:5000": RegistryHost(mirrors=["http://127.0.0.1:5001"], insecure=True, username="u", password="p")
        },
        allowed_registries=["ghcr.io"],
    )
    options = image_options(settings)
    assert options == ImageOptions(
        pull_policy=domain.PullPolicy.ALWAYS,
        registries={"127.0.0.1:5000": RegistryOptions(("http://127.0.0.1:5001",), True, "u", "p")},
        allowed_registries=("ghcr.io",),
    )
    assert options.registry_allowed("127.0.0.1:5000")
    assert options.registry_allowed("ghcr.io")
    assert not options.registry_allowed("docker.io")


def test_the_defaults_agree() -> None:
    assert image_options(ImageSettings()) == ImageOptions()
