"""docs/api.md is generated from the proto's comments: it must be fresh, complete, and its
examples must be requests the API accepts."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format

from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "scripts"))
import gen_docs  # noqa: E402

SERVICE = pb.DESCRIPTOR.services_by_name["SchedulerService"]


def test_the_reference_is_fresh() -> None:
    assert (ROOT / "docs" / "api.md").read_text() == gen_docs.generate(), "run 'make docs'"


def test_every_rpc_has_a_valid_example_and_its_error_codes() -> None:
    assert set(gen_docs.RPCS) == set(SERVICE.methods_by_name)
    for name, rpc in gen_docs.RPCS.items():
        request = getattr(pb, SERVICE.methods_by_name[name].input_type.name)()
        json_format.ParseDict(rpc.example, request)
        assert rpc.errors, name
        for code, when in rpc.errors:
            assert code in grpc.StatusCode.__members__ and when, (name, code)


@pytest.mark.parametrize(
    ("uncommented", "named"),
    [
        ("  // Unique id, never reused.\n", "field Environment.uid"),
        ("// EnvironmentMetrics is a sample of every container of an environment.\n", "message EnvironmentMetrics"),
        ("  // The condition holds.\n", "enum value CONDITION_STATUS_TRUE"),
    ],
)
def test_an_element_without_a_comment_fails_the_generator(tmp_path: Path, uncommented: str, named: str) -> None:
    shutil.copytree(ROOT / "proto" / "scheduler", tmp_path / "scheduler")
    proto = tmp_path / "scheduler" / "v1" / "scheduler.proto"
    text = proto.read_text()
    assert text.count(uncommented) == 1
    proto.write_text(text.replace(uncommented, ""))
    with pytest.raises(gen_docs.Undocumented, match=named):
        gen_docs.generate(tmp_path)
