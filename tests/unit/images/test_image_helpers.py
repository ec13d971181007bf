"""Pure parts of the image service: chain IDs, platform choice, config and manifest parsing."""

from __future__ import annotations

import hashlib
import json

import pytest

from scheduler.errors import FailedPrecondition, NotFound
from scheduler.runtime.containerd.images import (
    chain_ids,
    choose_manifest,
    host_platform,
    image_config_from_json,
    parse_manifest,
)
from scheduler.runtime.containerd.registry import Descriptor


def _d(n: int) -> str:
    return "sha256:" + f"{n:x}" * 64


def test_chain_ids_follow_the_oci_definition() -> None:
    a, b, c = _d(1), _d(2), _d(3)
    ab = "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    abc = "sha256:" + hashlib.sha256(f"{ab} {c}".encode()).hexdigest()
    assert chain_ids([a, b, c]) == [a, ab, abc]
    assert chain_ids([a]) == [a]
    assert chain_ids([]) == []


def test_choose_manifest_by_platform() -> None:
    index = {
        "manifests": [
            {"digest": _d(1), "size": 1, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"digest": _d(2), "size": 2, "platform": {"os": "linux", "architecture": "amd64"}},
            {"digest": _d(3), "size": 3, "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
        ]
    }
    assert choose_manifest(index, "x", ("linux", "amd64", "")) == (
        1,
        Descriptor("", _d(2), 2, {"os": "linux", "architecture": "amd64"}),
    )
    assert choose_manifest(index, "x", ("linux", "arm64", ""))[0] == 0
    assert choose_manifest(index, "x", ("linux", "arm", "v7"))[0] == 2
    with pytest.raises(NotFound, match=r"linux/arm/v6 .*linux/arm64/v8, linux/amd64, linux/arm/v7"):
        choose_manifest(index, "x", ("linux", "arm", "v6"))
    assert choose_manifest({"manifests": [{"digest": _d(4), "size": 4}]}, "x", ("linux", "s390x", ""))[0] == 0
    with pytest.raises(FailedPrecondition, match="no manifests"):
        choose_manifest({"manifests": []}, "x", host_platform())


def test_host_platform_is_linux() -> None:
    os_, arch, _ = host_platform()
    assert os_ == "linux" and arch


def test_image_config_from_json() -> None:
    config = image_config_from_json(
        {
            "config": {
                "Env": ["A=1", "PATH=/bin"],
                "Entrypoint": ["/entry"],
                "Cmd": ["run", "-x"],
                "User": "999",
                "WorkingDir": "/app",
                "StopSignal": "SIGINT",
                "ExposedPorts": {"8080/tcp": {}, "53/udp": {}},
                "Labels": {"k": "v"},
            }
        }
    )
    assert config.env == ("A=1", "PATH=/bin")
    assert config.entrypoint == ("/entry",) and config.cmd == ("run", "-x")
    assert (config.user, config.working_dir, config.stop_signal) == ("999", "/app", "SIGINT")
    assert config.exposed_ports == ("53/udp", "8080/tcp")
    assert config.labels == {"k": "v"}
    empty = image_config_from_json({"config": {"Entrypoint": None, "Cmd": None}})
    assert empty.entrypoint == () and empty.cmd == () and empty.stop_signal == ""


def test_parse_manifest_checks_layer_types() -> None:
    manifest = {
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": _d(1), "size": 10},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": _d(2), "size": 20}],
    }
    desc = Descriptor("application/vnd.oci.image.manifest.v1+json", _d(9), 0)
    parsed = parse_manifest(json.dumps(manifest).encode(), desc, "img")
    assert parsed.config.digest == _d(1) and [layer.size for layer in parsed.layers] == [20]
    manifest["layers"][0]["mediaType"] = "application/x-weird"  # type: ignore[index]
    with pytest.raises(FailedPrecondition, match="unsupported media type 'application/x-weird'"):
        parse_manifest(json.dumps(manifest).encode(), desc, "img")
    with pytest.raises(FailedPrecondition, match="not valid JSON"):
        parse_manifest(b"{", desc, "img")
    with pytest.raises(FailedPrecondition, match="lacks digest or size"):
        parse_manifest(b'{"config": {}, "layers": []}', desc, "img")
