"""Pure parts of the etcd client: key ranges, endpoints, guards, and which failures may have applied."""

import grpc
import pytest

from scheduler.storage.etcd import Compare, EtcdOptions
from scheduler.storage.etcd.connection import target as _target
from scheduler.storage.etcd.convert import compare_to_proto, prefix_end
from scheduler.storage.etcd.errors import Compacted, from_grpc, maybe_applied, retryable


class FakeRpcError(grpc.RpcError):
    def __init__(self, code, details):
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


def test_prefix_end_is_the_first_key_after_the_prefix():
    assert prefix_end(b"/envs/") == b"/envs0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") == b"\0"


def test_endpoints_give_a_target_and_whether_tls_is_asked_for():
    assert _target("http://127.0.0.1:2379") == ("127.0.0.1:2379", False)
    assert _target("https://etcd-1:2379/") == ("etcd-1:2379", True)
    assert _target("10.0.0.1:2379") == ("10.0.0.1:2379", False)


def test_options_refuse_no_endpoints_and_half_a_client_certificate(tmp_path):
    with pytest.raises(ValueError, match="endpoint"):
        EtcdOptions(())
    with pytest.raises(ValueError, match="certificate"):
        EtcdOptions(("a:1",), cert_file=tmp_path / "c.pem")


def test_guards_set_the_field_of_their_target():
    msg = compare_to_proto(Compare.mod_revision("/k", 7))
    assert (msg.key, msg.WhichOneof("target_union"), msg.mod_revision) == (b"/k", "mod_revision", 7)
    msg = compare_to_proto(Compare.absent("/k"))
    assert (msg.WhichOneof("target_union"), msg.create_revision) == ("create_revision", 0)


def test_a_refused_connection_never_applied_a_write_but_a_timeout_may_have():
    refused = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; Connection refused")
    no_leader = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "etcdserver: leader changed")
    timeout = FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
    assert all(retryable(e) for e in (refused, no_leader, timeout))
    assert not maybe_applied(refused)
    assert maybe_applied(no_leader) and maybe_applied(timeout)
    assert not retryable(FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: key is not provided"))


def test_a_compacted_revision_is_its_own_error():
    err = from_grpc(FakeRpcError(grpc.StatusCode.OUT_OF_RANGE, "mvcc: required revision has been compacted"), "Range")
    assert isinstance(err, Compacted) and "Range" in str(err)
