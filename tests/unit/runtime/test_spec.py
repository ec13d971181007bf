"""The OCI spec builder: defaults, image merge, overrides, user resolution, limits."""

from __future__ import annotations

import pytest

from scheduler import domain
from scheduler.errors import InvalidArgument
from scheduler.runtime.containerd import spec as oci

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:app:/home/app:/bin/sh\n# comment\n\nweb:x:33:33::/:/bin/false\n"
)
GROUP = "root:x:0:\nappgrp:x:1001:\ndocker:x:999:app,web\nvideo:x:44:app\n"

IMAGE = domain.Image(
    name="test.local/app:1",
    digest="sha256:" + "a" * 64,
    config=domain.ImageConfig(
        env=("PATH=/custom/bin", "LANG=C.UTF-8"),
        entrypoint=("/entry.sh",),
        cmd=("serve", "--port", "80"),
        working_dir="/srv",
    ),
    chain_id="sha256:" + "b" * 64,
)


def build(**overrides: object) -> oci.Spec:
    config = domain.ContainerConfig(id="web-1", image=IMAGE, **overrides)  # type: ignore[arg-type]
    return oci.build_spec("ns1", config, oci.ResolvedUser(0, 0))


def test_default_spec_is_containerds_narrowed() -> None:
    spec = oci.default_spec("ns1", "c1")
    assert spec["ociVersion"] == "1.0.2-dev" and spec["root"] == {"path": "rootfs"}
    bounding = spec["process"]["capabilities"]["bounding"]
    assert len(bounding) == 10
    assert not {"CAP_NET_RAW", "CAP_MKNOD", "CAP_SETFCAP", "CAP_AUDIT_WRITE"} & set(bounding)
    assert spec["process"]["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
    assert [m["destination"] for m in spec["mounts"]] == [
        "/proc",
        "/dev",
        "/dev/pts",
        "/dev/shm",
        "/dev/mqueue",
        "/sys",
        "/run",
    ]
    assert {n["type"] for n in spec["linux"]["namespaces"]} == {"pid", "ipc", "uts", "mount", "network"}
    assert spec["linux"]["cgroupsPath"] == "/ns1/c1"
    devices = spec["linux"]["resources"]["devices"]
    assert devices[0] == {"allow": False, "access": "rwm"} and len(devices) == 10


def test_image_config_then_overrides() -> None:
    spec = build()
    assert spec["process"]["args"] == ["/entry.sh", "serve", "--port", "80"]
    assert spec["process"]["env"] == ["PATH=/custom/bin", "LANG=C.UTF-8"]
    assert spec["process"]["cwd"] == "/srv"
    spec = build(args=("worker",), env={"LANG": "fr_FR", "DEBUG": "1"}, working_dir="/tmp")
    assert spec["process"]["args"] == ["/entry.sh", "worker"]
    assert spec["process"]["env"] == ["PATH=/custom/bin", "LANG=fr_FR", "DEBUG=1"]
    assert spec["process"]["cwd"] == "/tmp"


def test_a_group_is_the_runc_shims_grouping_annotation_and_none_leaves_no_annotation() -> None:
    assert build(group="env-a")["annotations"] == {"io.containerd.runc.v2.group": "env-a"}
    assert "annotations" not in build()


def test_overriding_the_entrypoint_drops_the_image_cmd_like_docker() -> None:
    assert oci.resolve_args(IMAGE.config, ("sh", "-c", "x")) == ["sh", "-c", "x"]
    assert oci.resolve_args(IMAGE.config, ("sh",), ("-c", "y")) == ["sh", "-c", "y"]
    assert oci.resolve_args(domain.ImageConfig(cmd=("sh",))) == ["sh"]
    with pytest.raises(InvalidArgument) as err:
        oci.build_spec(
            "n",
            domain.ContainerConfig(id="x", image=domain.Image("i", "d", domain.ImageConfig(), "c")),
            oci.ResolvedUser(0, 0),
        )
    assert err.value.details["field"] == "command"


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("", oci.ResolvedUser(0, 0)),
        ("root", oci.ResolvedUser(0, 0)),
        ("app", oci.ResolvedUser(1000, 1001, (999, 44))),
        ("1000", oci.ResolvedUser(1000, 1001, (999, 44))),
        ("web:video", oci.ResolvedUser(33, 44, (999,))),
        ("4242", oci.ResolvedUser(4242, 0)),
        ("4242:4343", oci.ResolvedUser(4242, 4343)),
        ("app:0", oci.ResolvedUser(1000, 0, (999, 44))),
    ],
)
def test_resolve_user(user: str, expected: oci.ResolvedUser) -> None:
    assert oci.resolve_user(user, PASSWD, GROUP) == expected


@pytest.mark.parametrize("user", ["nobody", "app:nogroup"])
def test_unknown_user_or_group_names_the_field(user: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        oci.resolve_user(user, PASSWD, GROUP)
    assert err.value.details["field"] == "user"


def test_resolve_user_without_passwd_accepts_numbers_only() -> None:
    assert oci.resolve_user("1:2", None, None) == oci.ResolvedUser(1, 2)
    with pytest.raises(InvalidArgument):
        oci.resolve_user("app", None, None)


def test_resources_become_cgroup_limits() -> None:
    res = domain.Resources(cpu_millis=1500, cpu_shares=512, memory_bytes=64 << 20, pids=100)
    linux = build(resources=res)["linux"]["resources"]
    assert linux["cpu"] == {"quota": 150000, "period": 100000, "shares": 512}
    assert linux["memory"] == {"limit": 64 << 20}
    assert linux["pids"] == {"limit": 100}
    assert "cpu" not in build()["linux"]["resources"]


@pytest.mark.parametrize(
    ("res", "field"),
    [
        (domain.Resources(cpu_millis=-1), "resources.cpu_millis"),
        (domain.Resources(memory_bytes=1024), "resources.memory_bytes"),
        (domain.Resources(pids=-5), "resources.pids"),
    ],
)
def test_bad_resources_name_the_field(res: domain.Resources, field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        build(resources=res)
    assert err.value.details["field"] == field


def test_hostname_mounts_netns_and_readonly_root() -> None:
    mounts = (
        domain.Mount(destination="/etc/hosts", source="/run/x/hosts", options=("rbind", "ro")),
        domain.Mount(destination="/dev/shm", source="tmpfs", type="tmpfs", options=("size=1g",)),
    )
    spec = build(hostname="web-0", mounts=mounts, netns_path="/var/run/netns/e1", read_only_rootfs=True)
    assert spec["hostname"] == "web-0"
    assert spec["root"]["readonly"] is True
    shm = [m for m in spec["mounts"] if m["destination"] == "/dev/shm"]
    assert shm == [{"destination": "/dev/shm", "type": "tmpfs", "source": "tmpfs", "options": ["size=1g"]}]
    assert {
        "destination": "/etc/hosts",
        "type": "bind",
        "source": "/run/x/hosts",
        "options": ["rbind", "ro", "nosuid", "nodev"],
    } in spec["mounts"]
    network = [n for n in spec["linux"]["namespaces"] if n["type"] == "network"]
    assert network == [{"type": "network", "path": "/var/run/netns/e1"}]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"mounts": (domain.Mount(destination="rel", source="/x"),)}, "mounts[0].destination"),
        ({"mounts": (domain.Mount(destination="/a", source="rel"),)}, "mounts[0].source"),
        ({"netns_path": "netns"}, "netns_path"),
        ({"working_dir": "srv"}, "working_dir"),
        ({"env": {"": "x"}}, "env"),
    ],
)
def test_bad_overrides_name_the_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        build(**overrides)
    assert err.value.details["field"] == field


def test_compose_applies_in_order_and_exec_process_keeps_the_rest() -> None:
    spec = oci.default_spec("n", "c")
    oci.compose(oci.with_env({"A": "1"}), oci.with_env({"A": "2"}), oci.with_args(["x"]))(spec)
    assert spec["process"]["env"][-1] == "A=2"
    process = oci.exec_process(spec, ["id", "-u"])
    assert process["args"] == ["id", "-u"] and process["env"] == spec["process"]["env"]
    assert process["capabilities"] == spec["process"]["capabilities"]
    assert spec["process"]["args"] == ["x"]  # the container's own process is untouched
    with pytest.raises(InvalidArgument):
        oci.exec_process(spec, [])


def test_security_adds_and_drops_capabilities_and_picks_the_seccomp_profile() -> None:
    spec = build()
    caps = spec["process"]["capabilities"]["effective"]
    assert caps == list(oci.DEFAULT_CAPABILITIES)
    profile = spec["linux"]["seccomp"]
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    allowed = {name for rule in profile["syscalls"] if rule["action"] == "SCMP_ACT_ALLOW" for name in rule["names"]}
    assert {"read", "clone", "chroot"} <= allowed
    assert not {"unshare", "mount", "keyctl", "bpf", "setns", "ptrace", "add_key"} & allowed
    clone3 = next(rule for rule in profile["syscalls"] if rule["names"] == ["clone3"])
    assert clone3["action"] == "SCMP_ACT_ERRNO" and clone3["errnoRet"] == 38

    spec = build(security=domain.Security(cap_add=("net_raw", "SYS_ADMIN"), cap_drop=("CAP_KILL",)))
    caps = spec["process"]["capabilities"]["bounding"]
    assert "CAP_NET_RAW" in caps and "CAP_SYS_ADMIN" in caps and "CAP_KILL" not in caps
    allowed = {
        n for rule in spec["linux"]["seccomp"]["syscalls"] if rule["action"] == "SCMP_ACT_ALLOW" for n in rule["names"]
    }
    assert {"unshare", "mount", "setns"} <= allowed  # the capability brings its calls, as in the source profile

    spec = build(security=domain.Security(cap_drop=("ALL",), cap_add=("CHOWN",), seccomp="unconfined"))
    assert spec["process"]["capabilities"]["bounding"] == ["CAP_CHOWN"]
    assert "seccomp" not in spec["linux"]


def test_bad_security_names_the_field() -> None:
    with pytest.raises(InvalidArgument) as bad:
        build(security=domain.Security(cap_add=("CAP_FLY",)))
    assert bad.value.details["field"] == "security.cap_add[0]"
    with pytest.raises(InvalidArgument) as bad:
        build(security=domain.Security(seccomp="relaxed"))
    assert bad.value.details["field"] == "security.seccomp"
