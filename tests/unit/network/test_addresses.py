from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from scheduler.errors import FailedPrecondition, InvalidArgument
from scheduler.network.addresses import (
    HostRoute,
    SubnetPlan,
    carve_subnet,
    check_pool_against_routes,
    parse_pool,
    parse_subnet,
    read_host_routes,
)

ROUTE_TABLE = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
sch-0a1b2c3d\t0003580A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
"""


def net(text: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(text)


def test_reads_proc_net_route(tmp_path: Path) -> None:
    path = tmp_path / "route"
    path.write_text(ROUTE_TABLE)
    routes = read_host_routes(path)
    assert [(str(r.network), r.device) for r in routes] == [
        ("0.0.0.0/0", "eth0"),
        ("192.0.2.0/24", "eth0"),
        ("172.17.0.0/16", "docker0"),
        ("10.88.3.0/24", "sch-0a1b2c3d"),
    ]
    assert [r.device for r in read_host_routes(path, skip_prefix="sch-")] == ["eth0", "eth0", "docker0"]


def test_pool_overlapping_a_foreign_route_is_refused_naming_both(tmp_path: Path) -> None:
    path = tmp_path / "route"
    path.write_text(ROUTE_TABLE)
    routes = read_host_routes(path)
    with pytest.raises(InvalidArgument) as err:
        check_pool_against_routes(net("172.16.0.0/12"), routes, "sch-")
    assert "network.pool 172.16.0.0/12" in err.value.message
    assert "172.17.0.0/16 dev docker0" in err.value.message
    # The default route and the instance's own bridges do not count.
    check_pool_against_routes(net("10.88.0.0/16"), routes, "sch-")
    with pytest.raises(InvalidArgument):
        check_pool_against_routes(net("10.88.0.0/16"), routes, "other-")


def test_pool_and_subnet_validation() -> None:
    assert parse_pool("10.88.0.0/16", 24) == net("10.88.0.0/16")
    with pytest.raises(InvalidArgument, match="network.pool"):
        parse_pool("fd00::/64", 24)
    with pytest.raises(InvalidArgument, match="subnet_prefix"):
        parse_pool("10.88.0.0/24", 20)
    with pytest.raises(InvalidArgument, match="subnet 'x'"):
        parse_subnet("x")
    with pytest.raises(InvalidArgument, match="/16 to /28"):
        parse_subnet("10.0.0.0/30")


def test_carve_skips_taken_subnets_and_foreign_routes() -> None:
    routes = [HostRoute(net("10.88.1.0/24"), "eth1"), HostRoute(net("10.88.5.0/24"), "sch-abcdef01")]
    taken = [net("10.88.0.0/24"), net("10.88.2.0/23")]
    assert carve_subnet(net("10.88.0.0/16"), 24, taken, routes, "sch-") == net("10.88.4.0/24")
    assert carve_subnet(net("10.88.0.0/16"), 24, [*taken, net("10.88.4.0/24")], routes, "sch-") == net("10.88.5.0/24")


def test_carve_reports_a_full_pool() -> None:
    with pytest.raises(FailedPrecondition, match="no free /24"):
        carve_subnet(net("10.0.0.0/23"), 24, [net("10.0.0.0/24"), net("10.0.1.0/24")], [], "sch-")


def test_subnet_plan_keeps_the_top_quarter_for_vips() -> None:
    plan = SubnetPlan.of(net("10.88.3.0/24"))
    assert str(plan.gateway) == "10.88.3.1"
    assert (str(plan.range_start), str(plan.range_end)) == ("10.88.3.2", "10.88.3.191")
    assert plan.vip_block == net("10.88.3.192/26")
    assert plan.allocate_vip([]) == "10.88.3.254"
    assert plan.allocate_vip(["10.88.3.254", "10.88.3.252"]) == "10.88.3.253"
    assert plan.is_container_ip("10.88.3.191") and not plan.is_container_ip("10.88.3.192")
    assert not plan.is_container_ip("10.88.3.1") and not plan.is_container_ip("nonsense")


def test_smallest_subnet_still_has_vips_and_reports_exhaustion() -> None:
    plan = SubnetPlan.of(net("10.0.0.16/28"))
    assert plan.vip_block == net("10.0.0.28/30")
    assert list(map(str, plan.vip_candidates())) == ["10.0.0.30", "10.0.0.29", "10.0.0.28"]
    with pytest.raises(FailedPrecondition, match="no free service address"):
        plan.allocate_vip(["10.0.0.30", "10.0.0.29", "10.0.0.28"])


def test_carve_skips_the_subnet_holding_a_narrower_network_and_every_one_in_a_wider_route() -> None:
    narrow = [HostRoute(net("10.88.0.7/32"), "eth1")]
    taken = [net("10.88.1.64/26")]
    assert carve_subnet(net("10.88.0.0/16"), 24, taken, narrow, "sch-") == net("10.88.2.0/24")
    wide = [HostRoute(net("10.88.0.0/17"), "eth1")]
    assert carve_subnet(net("10.88.0.0/16"), 24, [], wide, "sch-") == net("10.88.128.0/24")


def test_carve_with_hundreds_taken_returns_the_first_free_in_pool_order() -> None:
    pool = net("10.88.0.0/16")
    taken = [net(f"10.88.{i}.0/24") for i in range(256) if i != 200]
    assert carve_subnet(pool, 24, taken, [], "sch-") == net("10.88.200.0/24")
    assert carve_subnet(net("10.64.0.0/10"), 26, [net("10.64.0.0/26")], [], "sch-") == net("10.64.0.64/26")
