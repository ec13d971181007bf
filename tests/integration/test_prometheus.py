"""The metrics endpoint as a platform team uses it: a real Prometheus scrapes the daemon."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from google.protobuf import json_format

from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.api._gen.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from tests.integration.test_environments import wait_status
from tests.support.daemon import DaemonProcess, free_port, start_daemon

pytestmark = pytest.mark.integration

TOOLBOX = "docker.io/schedulerdemo/toolbox:1.0"
INTERVAL = 30.0


def http_get(url: str, timeout: float = 10) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as reply:  # noqa: S310 - loopback only
        return str(reply.read().decode())


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the first series ``name`` whose labels include ``labels``, from exposition text."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, image_archives: dict[str, Path]) -> Iterator[DaemonProcess]:
    tmp = tmp_path_factory.mktemp("prometheus")
    port = free_port()
    process = start_daemon(
        tmp,
        {
            "images": {"preload": [str(image_archives[TOOLBOX])]},
            "metrics": {"listen": f"127.0.0.1:{port}", "interval": INTERVAL},
        },
    )
    process.extra["metrics"] = f"127.0.0.1:{port}"
    yield process
    process.delete_all_environments()
    code = process.stop()
    process.cleanup()
    assert code == 0, process.log()[-3000:]


@pytest.fixture(scope="module")
def deployed(daemon: DaemonProcess) -> str:
    """A running toolbox environment with an exec health check, and one refused request."""
    request = json_format.ParseDict(
        {
            "name": "demo",
            "spec": {
                "stack": "toolbox",
                "services": {"toolbox": {"healthCheck": {"exec": {"command": ["true"]}, "interval": "1s"}}},
            },
        },
        pb.CreateEnvironmentRequest(),
    )
    with daemon.channel() as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)
        stub.CreateEnvironment(request, timeout=10)
        env = wait_status(stub, "demo", {pb.ENVIRONMENT_STATUS_RUNNING, pb.ENVIRONMENT_STATUS_FAILED}, timeout=120)
        assert env.status == pb.ENVIRONMENT_STATUS_RUNNING, env
        with pytest.raises(grpc.RpcError) as refused:
            stub.CreateEnvironment(pb.CreateEnvironmentRequest(name="Bad_Name"), timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return "demo"


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory, daemon: DaemonProcess, deployed: str) -> Iterator[str]:
    """Debian's prometheus on loopback, with its own storage, scraping the daemon every second."""
    tmp = tmp_path_factory.mktemp("prom")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(Path(__file__).resolve().parents[2] / "ops/prometheus/alerts.yml")],
        "scrape_configs": [{"job_name": "scheduler", "static_configs": [{"targets": [daemon.extra["metrics"]]}]}],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    address = f"127.0.0.1:{free_port()}"
    log = (tmp / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address={address}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert process.poll() is None, (tmp / "prometheus.log").read_text()[-3000:]
            try:
                http_get(f"http://{address}/-/ready", timeout=2)
                break
            except OSError:
                time.sleep(0.3)
        yield address
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()


def query(address: str, promql: str, timeout: float = 60) -> list[dict[str, object]]:
    """Poll Prometheus' query API until ``promql`` returns series (bounded); return them."""
    deadline = time.monotonic() + timeout
    result: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        reply = json.loads(http_get(f"http://{address}/api/v1/query?" + urllib.parse.urlencode({"query": promql})))
        assert reply["status"] == "success", reply
        result = reply["data"]["result"]
        if result:
            return result
        time.sleep(0.5)
    return result


def test_prometheus_sees_the_deploy_duration_and_a_running_containers_memory(prometheus: str) -> None:
    deploys = query(
        prometheus,
        'scheduler_operation_duration_seconds_count{job="scheduler",operation="deploy",stack="toolbox"}',
    )
    assert len(deploys) == 1, deploys
    assert deploys[0]["metric"]["outcome"] == "succeeded"  # type: ignore[index]
    assert float(deploys[0]["value"][1]) == 1  # type: ignore[index]
    buckets = query(prometheus, 'scheduler_operation_duration_seconds_bucket{operation="deploy",le="+Inf"}')
    assert buckets, "the histogram has buckets"

    memory = query(prometheus, 'scheduler_container_memory_usage_bytes{environment="demo"}')
    assert len(memory) == 1, memory
    labels = memory[0]["metric"]
    assert labels["service"] == "toolbox" and labels["replica"] == "0", labels  # type: ignore[index]
    assert float(memory[0]["value"][1]) > 0  # type: ignore[index]

    running = query(prometheus, 'scheduler_environments{status="running"}')
    assert float(running[0]["value"][1]) == 1  # type: ignore[index]
    rules = json.loads(http_get(f"http://{prometheus}/api/v1/rules"))
    names = {r["name"] for g in rules["data"]["groups"] for r in g["rules"]}
    assert {"SchedulerDown", "SchedulerEnvironmentsFailed"} <= names


def test_the_endpoint_counts_rpcs_probes_and_containerd_calls_and_reads_containers_once_per_interval(
    daemon: DaemonProcess, deployed: str
) -> None:
    url = f"http://{daemon.extra['metrics']}/metrics"
    texts = [http_get(url) for _ in range(5)]
    reads = [sample(t, "scheduler_container_stats_reads_total") for t in texts]
    assert all(r is not None and r >= 1 for r in reads), reads
    # Five scrapes in well under the 30 s interval: at most one new reading of containerd.
    assert reads[-1] - reads[0] <= 1, reads  # type: ignore[operator]

    text = texts[-1]
    create_ok = sample(text, "grpc_server_handled_total", grpc_method="CreateEnvironment", grpc_code="OK")
    refused = sample(text, "grpc_server_handled_total", grpc_method="CreateEnvironment", grpc_code="INVALID_ARGUMENT")
    assert create_ok == 1 and refused == 1, (create_ok, refused)
    assert sample(text, "grpc_server_handling_seconds_count", grpc_method="GetEnvironment", grpc_type="unary")
    assert sample(text, "scheduler_health_probes_total", kind="exec", result="success")
    assert sample(text, "scheduler_containerd_request_duration_seconds_count", method="Tasks.Start")
    assert sample(text, "scheduler_image_ensures_total", outcome="present") == 1
    assert sample(text, "process_cpu_seconds_total") is not None

    with pytest.raises(urllib.error.HTTPError) as missing:
        http_get(url.replace("/metrics", "/other"))
    assert missing.value.code == 404


def test_alert_rules_and_dashboard_queries_pass_promtool(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    checked = subprocess.run(
        ["promtool", "check", "rules", str(root / "ops/prometheus/alerts.yml")], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout

    # Every dashboard query, with its variables filled in, must parse: load them as recording rules.
    dashboard = json.loads((root / "ops/grafana/scheduler-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 15
    filled = [
        e.replace("$__rate_interval", "1m").replace("$job", "scheduler").replace("$instance", ".*") for e in exprs
    ]
    filled = [e.replace("$environment", ".*") for e in filled]
    rules = {
        "groups": [{"name": "dashboard", "rules": [{"record": f"dash:q{i}", "expr": e} for i, e in enumerate(filled)]}]
    }
    (tmp_path / "dashboard.yml").write_text(yaml.safe_dump(rules))
    parsed = subprocess.run(
        ["promtool", "check", "rules", str(tmp_path / "dashboard.yml")], capture_output=True, text=True
    )
    assert parsed.returncode == 0, parsed.stdout + parsed.stderr

    broken = tmp_path / "broken.yml"
    broken.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [{"alert": "A", "expr": "sum(("}]}]}))
    assert subprocess.run(["promtool", "check", "rules", str(broken)], capture_output=True).returncode != 0
