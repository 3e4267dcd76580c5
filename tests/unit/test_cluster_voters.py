"""The etcd voter cap (cluster/voters.py): which role a joining host gets, which client
member would take a free voter seat, the admit transaction's retry when another admit
won the race, a client member's settings, and the client's endpoint switch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from xenia.cluster import keys, voters
from xenia.cluster.client import EtcdClient, Timeouts
from xenia.cluster.kv import KV, Compare, Get, Op, Put, TxnResult
from xenia.cluster.pki import ClusterCA, make_member
from xenia.errors import AlreadyExists, InUse, InvalidConfig, NotFound


def rec(role: str | None = None, joined: float = 0.0, address: str = "") -> dict[str, Any]:
    r: dict[str, Any] = {"joined": joined, "address": address}
    if role is not None:
        r["etcd"] = role
    return r


@pytest.mark.parametrize("n", [3, 5, 7])
def test_voter_counts_allowed(n: int) -> None:
    assert voters.check_voters(n) == n


@pytest.mark.parametrize("n", [1, 2, 4, 6, 8, 9])
def test_voter_counts_refused(n: int) -> None:
    with pytest.raises(InvalidConfig, match="odd number from 3 to 7"):
        voters.check_voters(n)


def test_cap_defaults_to_five_for_a_cluster_made_before_it() -> None:
    assert voters.cap_of({"name": "old"}) == 5
    assert voters.cap_of({"etcd_voters": 3}) == 3


def test_joiners_are_voters_up_to_the_cap_then_clients() -> None:
    records: dict[str, dict[str, Any]] = {}
    roles = []
    for i in range(8):
        role = voters.choose_role(records, 5)
        roles.append(role)
        records[f"h{i}"] = rec(role)
    assert roles == ["voter"] * 5 + ["client"] * 3


def test_records_without_a_role_count_as_voters() -> None:
    # A cluster made before the cap: every member ran an etcd voter.
    records = {f"h{i}": rec() for i in range(3)}
    assert voters.choose_role(records, 3) == "client"
    assert voters.choose_role(records, 5) == "voter"


def test_a_seat_freed_by_a_leaving_voter_goes_to_the_next_joiner() -> None:
    records = {**{f"v{i}": rec("voter") for i in range(4)}, "c0": rec("client")}
    assert voters.choose_role(records, 5) == "voter"


def test_promotion_picks_the_longest_member_alive_client() -> None:
    records = {"v0": rec("voter", 1), "v1": rec("voter", 2), "c-late": rec("client", 9),
               "c-early": rec("client", 3), "c-dead": rec("client", 1)}
    alive = ["v0", "v1", "c-late", "c-early"]
    assert voters.choose_promotion(records, ["v0", "v1"], alive, 3) == "c-early"
    # No free seat: nobody is promoted.
    assert voters.choose_promotion(records, ["v0", "v1", "x"], alive, 3) is None
    # Only dead clients: nobody.
    assert voters.choose_promotion(records, ["v0", "v1"], ["v0", "v1"], 3) is None


class RacingClient:
    """The etcd client at its conflict path: the first `lose` admit transactions fail
    their comparison, as when another host was admitted in between (that host's record
    appears then)."""

    def __init__(self, members: dict[str, dict[str, Any]], lose: int, rival: str = "",
                 rival_role: str = "voter", cap: int = 3) -> None:
        self.members = dict(members)
        self.lose, self.rival, self.rival_role = lose, rival, rival_role
        self.cluster = keys.encode({"name": "t", "etcd_voters": cap})
        self.rev = 10
        self.txns = 0

    def get(self, key: str) -> KV | None:
        assert key == keys.CLUSTER
        return KV(key, self.cluster, 1, self.rev, 1)

    def range(self, prefix: str) -> tuple[list[KV], int]:
        return ([KV(keys.member(n), keys.encode(r), 1, 1, 1)
                 for n, r in sorted(self.members.items())], self.rev)

    def txn(self, compare: list[Compare], success: list[Op], failure: list[Op]
            ) -> TxnResult:
        self.txns += 1
        assert any(c.key == keys.CLUSTER and c.target == "mod" for c in compare)
        assert [type(o) for o in failure] == [Get]
        if self.lose:
            self.lose -= 1
            if self.rival:
                self.members[self.rival] = rec(self.rival_role)
            self.rev += 1
            return TxnResult(False, self.rev, [])
        put = next(o for o in success if isinstance(o, Put) and o.key != keys.CLUSTER)
        name = keys.host_of(put.key, keys.MEMBERS)
        if name in self.members:
            return TxnResult(False, self.rev, [KV(put.key, b"{}", 1, 1, 1)])
        self.members[name] = keys.decode(KV(put.key, put.value, 1, 1, 1))
        self.rev += 1
        return TxnResult(True, self.rev, [])


def test_admit_decides_again_after_losing_the_last_seat() -> None:
    client = RacingClient({"h0": rec("voter"), "h1": rec("voter")}, lose=1, rival="h2")
    written, role = voters.seat(client, "h3", {"address": "10.0.0.4"},  # type: ignore[arg-type]
                                "to admit 'h3'")
    assert written and role == "client" and client.txns == 2
    assert client.members["h3"]["etcd"] == "client"


def test_admit_takes_a_free_seat_without_a_race() -> None:
    client = RacingClient({"h0": rec("voter")}, lose=0)
    assert voters.seat(client, "h1", {"address": "10.0.0.2"}, "x") == (  # type: ignore[arg-type]
        True, "voter")


def test_admit_of_a_taken_name_or_address_is_refused() -> None:
    client = RacingClient({"h0": rec("voter", address="10.0.0.1")}, lose=0)
    assert voters.seat(client, "h0", {"address": "10.0.0.9"}, "x")[0] is False  # type: ignore[arg-type]
    with pytest.raises(AlreadyExists, match="has the address 10.0.0.1 already"):
        voters.seat(client, "h9", {"address": "10.0.0.1"}, "x")  # type: ignore[arg-type]
    assert set(client.members) == {"h0"}


def test_admit_gives_up_when_it_keeps_losing() -> None:
    client = RacingClient({}, lose=voters.SEAT_TRIES)
    with pytest.raises(InUse, match="run the join again"):
        voters.seat(client, "h1", {"address": "10.0.0.2"}, "to admit 'h1'")  # type: ignore[arg-type]
    assert "h1" not in client.members


def test_client_config_round_trip_and_refusals(tmp_path: Path) -> None:
    path = tmp_path / "cluster" / "etcd-client.json"
    with pytest.raises(NotFound, match="not a cluster member"):
        voters.ClientConfig.load(path)
    cfg = voters.ClientConfig("h7", ["https://10.0.0.1:2379", "https://10.0.0.2:2379"])
    cfg.save(path)
    assert voters.ClientConfig.load(path) == cfg
    assert path.stat().st_mode & 0o777 == 0o600
    path.write_text('{"name": "h7", "endpoints": []}')
    with pytest.raises(InvalidConfig, match="no endpoints"):
        voters.ClientConfig.load(path)


def test_client_switches_endpoints_keeping_the_known_ones(tmp_path: Path) -> None:
    tls = make_member(tmp_path, ClusterCA.create("unit"), "c", "127.0.0.1")
    client = EtcdClient(["https://10.0.0.1:2379", "https://10.0.0.2:2379"], tls,
                        Timeouts(0.2, 0.2))
    kept = client.session_for("https://10.0.0.2:2379")
    client.set_endpoints(["https://10.0.0.2:2379", "https://10.0.0.3:2379"])
    assert client.endpoints == ["https://10.0.0.2:2379", "https://10.0.0.3:2379"]
    assert client.session_for("https://10.0.0.2:2379") is kept
    with pytest.raises(InvalidConfig):
        client.set_endpoints([])
    assert len(client.endpoints) == 2


def test_status_text_shows_roles_and_missing_voters() -> None:
    from xenia.cli.cluster import format_status

    hosts = [{"name": n, "this": n == "c1", "address": "-", "alive": True, "domains": 0,
              "facts_age": 1.0, "etcd": role} for n, role in
             (("v0", "voter"), ("v1", "voter"), ("c1", "client"))]
    st = {"name": "c1", "cluster": "t", "quorum": True, "etcd": {"leader": "v0",
          "members": []}, "leader": "v0", "hosts": hosts,
          "etcd_voters": {"have": 2, "want": 3}}
    text = "\n".join(format_status(st))
    assert "2 of 3 etcd voters" in text
    row = next(line for line in text.splitlines() if line.startswith("*c1"))
    assert "client" in row.split()
