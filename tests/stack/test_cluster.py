"""A three-node Restate cluster (``dbpatterns.stack.cluster``) as real processes: it comes up as
one cluster, every node's ingress reaches the service, any one node may be SIGKILLed (or one
SIGSTOPped) while calls go on through the other two, and stopping it leaves no process behind.
Each fault hits the node leading the partition the calls need, so they must wait for a failover.

The cluster and a service of its own run on ports of their own (not the lab's defaults, so a
running ``./lab up --nodes 3`` is no obstacle), against the session's database. The tests of the
module's cluster run in the order written, the last one stopping it; ``./lab up`` then runs a
cluster of its own."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import tomllib
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from dbpatterns.cli import parser
from dbpatterns.cli.lab import with_nodes
from dbpatterns.config import Settings
from dbpatterns.stack import (
    ClusterNode,
    LabError,
    RestateCluster,
    ServiceProcess,
    Stack,
    find_restate_binary,
    free_port,
    free_port_base,
    pid_alive,
    pid_stopped,
    register_deployment,
    wait_until,
)
from dbpatterns.stack.client import Admin, Ingress
from tests.stack.test_stack import LabProcess, processes_mentioning

NODES = ("n1", "n2", "n3")


def with_free_cluster_ports(settings: Settings) -> Settings:
    """The settings with a cluster port base whose every port is free now."""
    return settings.model_copy(update={"restate_cluster_port_base": free_port_base(settings)})


@pytest.fixture(scope="module")
def cluster_settings(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Three nodes and a service of their own, on the session's database. The service's
    janitor is off: it would judge the session's prepared transactions by this cluster's
    invocations, which know nothing of them."""
    return with_free_cluster_ports(
        settings.model_copy(
            update={
                "home": tmp_path_factory.mktemp("cluster"),
                "restate_nodes": len(NODES),
                "service_port": free_port(),
                "janitor_interval": timedelta(0),
            }
        )
    )


@pytest.fixture(scope="module")
def cluster(cluster_settings: Settings) -> Iterator[RestateCluster]:
    restate = RestateCluster(cluster_settings)
    restate.start()
    try:
        yield restate
    finally:
        restate.stop()


@pytest.fixture(scope="module")
def cluster_service(cluster_settings: Settings, cluster: RestateCluster) -> Iterator[None]:
    """The service, registered once, through n1's admin API."""
    service = ServiceProcess(cluster_settings, cluster_settings.home / "logs" / "service.log")
    service.start()
    try:
        register_deployment(cluster_settings.admin_url, cluster_settings.service_url)
        yield
    finally:
        service.stop()


def read_through(node: ClusterNode, user_id: str) -> dict[str, Any]:
    """``keyed/<user>/read`` through one node's ingress: its answer, checked. The call waits
    (60 s at most) while the user's partition fails over."""
    with Ingress(node.address.ingress_url, timeout=60) as ingress:
        response = ingress.http.post(ingress.path("keyed", "read", user_id))
    assert response.status_code == 200, f"through {node.name}: {response.text}"
    answer: dict[str, Any] = response.json()
    return answer


def partition_key_of(cluster: RestateCluster, user_id: str) -> int:
    """The partition key of ``keyed/<user>`` (a hash of the key), as the admin API's
    ``sys_invocation_status`` shows it after a call to that object. The query reads every
    partition, from whichever node has it: for a while after a node restarts or a partition
    moves it fails (seen: HTTP 500 "No such scanner", "partition 2 doesn't exist on this node",
    and an answer cut off mid-stream), so it is asked until it answers."""
    read_through(cluster.nodes[0], user_id)
    answers: list[list[dict[str, Any]]] = []
    failures: list[str] = []

    def asked() -> bool:
        admin = Admin(cluster.nodes[0].address.admin_url)
        try:
            answers.append(admin.query(INVOCATIONS_OF_KEYED))
        except httpx.HTTPStatusError as exc:
            failures.append(exc.response.text)
            return False
        except httpx.HTTPError as exc:  # seen too: the answer cut off mid-stream
            failures.append(repr(exc))
            return False
        finally:
            admin.close()
        return True

    assert wait_until(asked, 30, interval=0.5), failures[-1:]
    return next(int(r["partition_key"]) for r in answers[-1] if r["target_service_key"] == user_id)


INVOCATIONS_OF_KEYED = (
    "SELECT target_service_key, partition_key FROM sys_invocation_status"
    " WHERE target_service_name = 'keyed'"
)


def user_led_by(cluster: RestateCluster, node: str, new_user: Callable[..., str]) -> str:
    """A new user whose ``keyed/<user>`` object lives in a partition ``node`` leads, so that a
    fault of ``node`` is one the calls of this user must get past."""
    for _ in range(30):
        user = new_user(credits=77)
        if cluster.leader_of(partition_key_of(cluster, user)) == node:
            return user
    raise AssertionError(f"no user of 30 lands in a partition {node} leads: {cluster.status()}")


def wait_until_every_partition_is_led_by(cluster: RestateCluster, nodes: set[str]) -> None:
    """Wait (30 s at most) until every partition has a leader, and each is one of ``nodes``."""

    def led() -> bool:
        leaders = cluster.status().leaders
        if not leaders:
            return False
        return all(leader in nodes for leader in leaders.values())

    assert wait_until(led, 30, interval=0.5), cluster.status()


def flat(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    keys: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            keys.update(flat(value, f"{prefix}{key}."))
        else:
            keys[f"{prefix}{key}"] = value
    return keys


# --- configuration, without processes -----------------------------------------------------------


def test_every_config_key_a_node_writes_is_one_restate_server_reads(tmp_path: Path) -> None:
    """restate-server ignores an unknown or misplaced key without a word: each key must come
    back from ``--dump-config`` with the value written."""
    nodes = RestateCluster(Settings(home=tmp_path, restate_nodes=len(NODES))).nodes
    binary = find_restate_binary("restate-server", "restate-server")
    for node in nodes:
        config = tmp_path / f"{node.name}.toml"
        config.write_text(node.config_toml(tmp_path / "key.pem"))
        dumped = subprocess.run(
            [binary, "--config-file", config, "--dump-config"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        written, effective = flat(tomllib.loads(config.read_text())), flat(tomllib.loads(dumped))
        written["roles"], effective["roles"] = set(written["roles"]), set(effective["roles"])
        assert {k: effective.get(k) for k in written} == written, node.name


def test_node_ports_derive_from_the_port_base_and_stay_apart() -> None:
    settings = Settings(restate_nodes=3, restate_cluster_port_base=20000, bind_host="127.0.0.1")
    cluster = RestateCluster(settings)
    assert [n.address.ports for n in cluster.nodes] == [
        (21122, 21070, 21080),
        (22122, 22070, 22080),
        (23122, 23070, 23080),
    ]
    assert len(set(cluster.ports().values())) == 9
    assert cluster.settings.admin_url == "http://127.0.0.1:21070"  # n1's: it registers
    one_server = Settings(restate_nodes=1, admin_port=9070, ingress_port=8080)
    assert (one_server.admin_url, one_server.ingress_url) == (
        "http://127.0.0.1:9070",
        "http://127.0.0.1:8080",
    )


def test_up_nodes_is_checked_like_the_setting() -> None:
    args = parser().parse_args(["up", "--nodes", "3"])
    assert with_nodes(Settings(), args.nodes).restate_nodes == 3
    assert with_nodes(Settings(), None).restate_nodes == 1
    with pytest.raises(LabError, match="--nodes 0"):
        with_nodes(Settings(), 0)
    with pytest.raises(LabError, match="at least 2 nodes"):
        RestateCluster(Settings(restate_nodes=1))


def test_a_busy_node_port_is_reported_with_the_setting_to_change(tmp_path: Path) -> None:
    settings = with_free_cluster_ports(Settings(home=tmp_path, restate_nodes=len(NODES)))
    stack = Stack(settings.model_copy(update={"service_port": free_port()}))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", settings.restate_ports(2).admin))
        busy.listen()
        with pytest.raises(LabError) as err:
            stack.preflight()
    assert f"restate n2 admin 127.0.0.1:{settings.restate_ports(2).admin}" in err.value.problem
    assert "DBPATTERNS_RESTATE_CLUSTER_PORT_BASE" in err.value.hint


# --- the cluster as processes -------------------------------------------------------------------


@pytest.mark.slow
def test_three_nodes_come_up_healthy_as_one_cluster(cluster: RestateCluster) -> None:
    assert cluster.healthy()
    status = cluster.status()
    assert [n.name for n in status.nodes] == list(NODES)
    assert all(n.healthy and n.metadata_member and n.pid for n in status.nodes), status
    assert len({n.pid for n in status.nodes}) == len(NODES)
    assert [n.role for n in status.nodes] == ["provisions the cluster"] + 2 * ["joins n1's cluster"]
    assert status.leaders, status.leaders_source
    assert set(status.leaders.values()) <= set(NODES)
    assert sorted(p for n in status.nodes for p in n.leads or []) == sorted(status.leaders)


@pytest.mark.slow
@pytest.mark.usefixtures("cluster_service")
def test_a_call_through_each_nodes_ingress_reaches_the_service(
    cluster: RestateCluster, new_user: Callable[..., str]
) -> None:
    user = new_user(credits=321)
    for node in cluster.nodes:
        assert read_through(node, user)["credits"] == 321, node.name


@pytest.mark.slow
@pytest.mark.usefixtures("cluster_service")
@pytest.mark.parametrize("victim", NODES)
def test_with_any_one_node_killed_calls_through_the_other_two_still_work(
    cluster: RestateCluster, new_user: Callable[..., str], victim: str
) -> None:
    """The victim leads the partition of the user's object: every call after the kill needs
    that partition to fail over to a survivor."""
    wait_until_every_partition_is_led_by(cluster, set(NODES))
    user = user_led_by(cluster, victim, new_user)
    key = partition_key_of(cluster, user)
    killed = cluster.kill(victim)
    assert (killed.action, killed.node) == ("kill", victim)
    assert not pid_alive(killed.pid)
    assert cluster.events[-1] == killed

    survivors = [n for n in cluster.nodes if n.name != victim]
    for node in survivors:
        assert read_through(node, user)["credits"] == 77, node.name
    wait_until_every_partition_is_led_by(cluster, {n.name for n in survivors})
    assert cluster.leader_of(key) in {n.name for n in survivors}
    down = {n.name: n for n in cluster.status().nodes}[victim]
    assert (down.healthy, down.pid, down.leads) == (False, None, [])

    back = cluster.restart(victim)  # the next case starts from a whole cluster
    assert back.pid != killed.pid
    assert read_through(cluster.node(victim), user)["credits"] == 77


@pytest.mark.slow
@pytest.mark.usefixtures("cluster_service")
def test_with_one_node_paused_calls_through_the_other_two_still_work(
    cluster: RestateCluster, new_user: Callable[..., str]
) -> None:
    """A hung node (SIGSTOP) keeps its sockets open: the others notice only by timeouts, and a
    call to a partition it led waits meanwhile (up to 22 s measured), but it is answered."""
    wait_until_every_partition_is_led_by(cluster, set(NODES))
    user = user_led_by(cluster, "n3", new_user)
    paused = cluster.pause("n3")
    try:
        assert pid_stopped(paused.pid)  # the fault is in place
        for node in cluster.nodes[:2]:
            assert read_through(node, user)["credits"] == 77, node.name
    finally:
        cluster.resume("n3")
    assert [(e.action, e.pid) for e in cluster.events[-2:]] == [
        ("pause", paused.pid),
        ("resume", paused.pid),
    ]
    assert not pid_stopped(paused.pid)
    assert read_through(cluster.node("n3"), user)["credits"] == 77


@pytest.mark.slow
def test_stop_leaves_no_process_behind(cluster: RestateCluster, cluster_settings: Settings) -> None:
    pids = [n.pid for n in cluster.nodes]
    assert all(pid and pid_alive(pid) for pid in pids)
    cluster.stop()
    assert [pid for pid in pids if pid and pid_alive(pid)] == []
    assert processes_mentioning(str(cluster_settings.home / "cluster")) == []


# --- `./lab up` with a cluster ------------------------------------------------------------------


@pytest.fixture
def cluster_lab() -> Iterator[LabProcess]:
    """``./lab up`` in a subprocess with ``DBPATTERNS_RESTATE_NODES=3`` (what ``--nodes 3``
    sets) on a free port base, in a folder the ``postgres`` OS user can reach."""
    home = Path(tempfile.mkdtemp(prefix="dbpatterns-cluster-up-"))
    home.chmod(0o755)
    lab = LabProcess(home)
    base = with_free_cluster_ports(Settings(restate_nodes=len(NODES)))
    lab.env["DBPATTERNS_RESTATE_NODES"] = str(len(NODES))
    lab.env["DBPATTERNS_RESTATE_CLUSTER_PORT_BASE"] = str(base.restate_cluster_port_base)
    yield lab
    if lab.proc is not None and lab.proc.poll() is None:
        lab.interrupt()
    shutil.rmtree(home, ignore_errors=True)


@pytest.mark.slow
def test_lab_up_with_a_cluster_serves_through_every_node_and_status_shows_each(
    cluster_lab: LabProcess,
) -> None:
    state = cluster_lab.up(timeout=120)
    nodes = state["cluster"]["nodes"]
    assert [n["name"] for n in nodes] == list(NODES)
    assert all(n["healthy"] and n["metadata_member"] for n in nodes), nodes
    assert state["cluster"]["leaders"], state["cluster"]["leaders_source"]
    for node in nodes:
        with Ingress(node["ingress_url"]) as ingress:
            answer = ingress.call("simple", "read", "B")
        assert answer.status_code == 200, f"through {node['name']}: {answer.text}"
    text = cluster_lab.cli("status").stdout
    assert all(f"restate-{name}" in text and f"    {name} " in text for name in NODES), text

    # From another terminal, with no cluster setting: the commands find the running cluster.
    bare = {k: v for k, v in cluster_lab.env.items() if not k.startswith("DBPATTERNS_RESTATE_")}
    listed = cluster_lab.cli("restate", "deployments", "list", env=bare)
    assert listed.returncode == 0, listed.stderr
    assert state["service_url"].removeprefix("http://") in listed.stdout, listed.stdout
    # A node killed with `./lab node kill` and started again, as itself, by `./lab node start`.
    killed = state["parts"]["restate-n2"]["pid"]
    assert cluster_lab.cli("node", "kill", "n2", env=bare).returncode == 0
    assert wait_until(lambda: not pid_alive(killed), 10, interval=0.1)
    started = cluster_lab.cli("node", "start", "n2", env=bare)
    assert started.returncode == 0, started.stderr + started.stdout
    again = json.loads(cluster_lab.cli("status", "--json").stdout)
    assert again["parts"]["restate-n2"]["pid"] not in (None, killed)
    assert again["parts"]["restate-n2"]["healthy"], again["parts"]
    state = again

    pids = [part["pid"] for part in state["parts"].values()]
    assert cluster_lab.interrupt() == 0
    assert [pid for pid in pids if pid_alive(pid)] == []
    assert processes_mentioning(str(cluster_lab.home)) == []
