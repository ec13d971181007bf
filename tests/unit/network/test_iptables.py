from __future__ import annotations

from scheduler.network.iptables import (
    UNKNOWN,
    EnvRules,
    HostPortRules,
    ServiceRules,
    parse_save,
    removal_script,
    render,
    restore_script,
)
from scheduler.network.names import Names

N = Names("sch")
ENV = EnvRules("shop", "sch-1234abcd", "10.88.1.0/24", "10.88.1.192/26")


def test_service_balances_over_endpoints_with_hairpin_mark() -> None:
    svc = ServiceRules("shop", "api", "10.88.1.254", ((8080, "tcp"),), ("10.88.1.2", "10.88.1.3", "10.88.1.4"))
    nat = render(N, [ENV], [svc], [], egress=True)["nat"]
    chain = N.service_chain("shop", "api", 8080, "tcp")
    assert nat[N.services_chain] == [f"-d 10.88.1.254/32 -p tcp -m tcp --dport 8080 -j {chain}"]
    seps = [N.endpoint_chain("shop", "api", 8080, "tcp", ip) for ip in svc.backends]
    assert nat[chain] == [
        f"-m statistic --mode random --probability 0.3333333333 -j {seps[0]}",
        f"-m statistic --mode random --probability 0.5000000000 -j {seps[1]}",
        f"-j {seps[2]}",
    ]
    assert nat[seps[1]] == [
        "-s 10.88.1.3/32 -j MARK --set-xmark 0x4000/0x4000",
        "-p tcp -j DNAT --to-destination 10.88.1.3:8080",
    ]
    assert "-m mark --mark 0x4000/0x4000 -j MASQUERADE" in nat[N.chain("POSTROUTING")]


def test_service_without_ports_forwards_every_port() -> None:
    svc = ServiceRules("shop", "db", "10.88.1.253", (), ("10.88.1.5",))
    nat = render(N, [ENV], [svc], [], egress=False)["nat"]
    chain = N.service_chain("shop", "db", 0, "all")
    assert nat[N.services_chain] == [f"-d 10.88.1.253/32 -j {chain}"]
    sep = N.endpoint_chain("shop", "db", 0, "all", "10.88.1.5")
    assert nat[sep][-1] == "-j DNAT --to-destination 10.88.1.5"


def test_published_port_shares_the_service_chain_and_marks_localhost() -> None:
    svc = ServiceRules("shop", "web", "10.88.1.254", ((80, "tcp"),), ("10.88.1.2",))
    hp = HostPortRules("shop", "web", "127.0.0.1", 20001, 80, "tcp")
    nat = render(N, [ENV], [svc], [hp], egress=True)["nat"]
    chain = N.service_chain("shop", "web", 80, "tcp")
    assert nat[N.hostports_chain] == [
        "-s 127.0.0.0/8 -d 127.0.0.1/32 -p tcp -m tcp --dport 20001 -j MARK --set-xmark 0x4000/0x4000",
        f"-d 127.0.0.1/32 -p tcp -m tcp --dport 20001 -j {chain}",
    ]
    assert nat[N.chain("OUTPUT")] == [
        f"-j {N.services_chain}",
        f"-m addrtype --dst-type LOCAL -j {N.hostports_chain}",
    ]
    # A public host address needs no localhost mark; 0.0.0.0 matches any local address.
    wide = render(N, [ENV], [svc], [HostPortRules("shop", "web", "0.0.0.0", 20002, 80, "tcp")], True)["nat"]
    assert wide[N.hostports_chain][-1] == f"-p tcp -m tcp --dport 20002 -j {chain}"


def test_forward_chain_isolates_bridges_and_applies_egress_policy() -> None:
    other = EnvRules("blog", "sch-99999999", "10.88.2.0/24", "10.88.2.192/26")
    flt = render(N, [ENV, other], [], [], egress=False)["filter"][N.chain("FORWARD")]
    assert "-i sch-1234abcd -o sch-1234abcd -j ACCEPT" in flt
    assert "-i sch-99999999 -o sch-99999999 -j ACCEPT" in flt
    drop = flt.index("-i sch-+ -o sch-+ -j DROP")
    assert all(i < drop for i, rule in enumerate(flt) if rule.endswith("ACCEPT") and "-i sch-1" in rule)
    assert flt[-1] == "-i sch-+ -j DROP"
    assert flt[-1] == "-i sch-+ -j DROP"
    post = render(N, [ENV], [], [], egress=True)
    assert post["filter"][N.chain("FORWARD")][-1] == "-i sch-+ -j ACCEPT"
    assert "-s 10.88.1.0/24 ! -o sch-1234abcd -j MASQUERADE" in post["nat"][N.chain("POSTROUTING")]


def test_restore_script_sends_only_changed_chains_and_deletes_stale_ones() -> None:
    desired = {"nat": {"sch-A": ["-j RETURN"], "sch-B": ["-j ACCEPT"]}, "filter": {"sch-FORWARD": []}}
    current = {
        "nat": {"sch-A": UNKNOWN, "sch-B": ["-j ACCEPT"], "sch-SEP-old": ["-j DNAT --to-destination 1.2.3.4"]},
        "filter": {"sch-FORWARD": []},
    }
    assert restore_script(desired, current).splitlines() == [
        "*nat",
        ":sch-A - [0:0]",
        ":sch-SEP-old - [0:0]",
        "-A sch-A -j RETURN",
        "-X sch-SEP-old",
        "COMMIT",
    ]
    assert restore_script(desired, desired) == ""
    assert restore_script(desired, {}).count(":sch-") == 3
    assert removal_script({"nat": {"sch-A"}, "filter": set()}).splitlines() == [
        "*nat",
        ":sch-A - [0:0]",
        "-X sch-A",
        "COMMIT",
    ]


def test_parse_save_counts_only_our_chains_rules_and_jumps() -> None:
    nat = "\n".join(
        [
            "*nat",
            ":PREROUTING ACCEPT [0:0]",
            ":sch-PREROUTING - [0:0]",
            ":schx-PREROUTING - [0:0]",
            ":DOCKER - [0:0]",
            "-A PREROUTING -j sch-PREROUTING",
            "-A PREROUTING -j schx-PREROUTING",
            "-A sch-PREROUTING -j sch-SERVICES",
            "-A DOCKER -j RETURN",
            "COMMIT",
        ]
    )
    saved = parse_save(N, {"nat": nat, "filter": ""})
    assert saved.chains == {"nat": {"sch-PREROUTING"}, "filter": set()}
    assert saved.rules == 1
    assert saved.jumps == {"nat": ["PREROUTING"]}
