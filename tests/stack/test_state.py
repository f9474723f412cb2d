"""The state file (``stack.json``) keeps its format on disk, key for key and in order, now that
it is read and written through one typed model; a file that is missing or not a state reads as
no running lab."""

from __future__ import annotations

import json
from pathlib import Path

from dbpatterns.config import Settings
from dbpatterns.stack import Stack, lab_running, parts_alive, shaped_like_running_lab
from dbpatterns.stack.cluster import ClusterStatus, NodeStatus
from dbpatterns.stack.state import STATE_FILE_NAME, LabStatus, PartStatus, load


def test_a_single_servers_state_is_written_as_it_always_was(tmp_path: Path) -> None:
    s = Settings(home=tmp_path, restate_nodes=1)
    stack = Stack(s)
    stack.write_state()
    text = (tmp_path / STATE_FILE_NAME).read_text()
    assert text == json.dumps(
        {
            "home": str(tmp_path),
            "database_url": s.libpq_url,
            "ingress_url": s.ingress_url,
            "admin_url": s.admin_url,
            "service_url": s.service_url,
            "parts": {
                "postgres": {"address": f"{s.bind_host}:{stack.postgres.port}", "pid": None},
                "restate-server": {"address": s.admin_url, "pid": None},
                "service": {"address": s.service_url, "pid": None, "server": s.service_server},
            },
        },
        indent=2,
    )
    assert load(tmp_path) == stack.describe()


def test_a_clusters_state_names_each_node_and_the_port_base(tmp_path: Path) -> None:
    s = Settings(home=tmp_path, restate_nodes=3, restate_cluster_port_base=24000)
    stack = Stack(s)
    stack.write_state()
    found = json.loads((tmp_path / STATE_FILE_NAME).read_text())
    assert list(found) == [
        "home",
        "database_url",
        "ingress_url",
        "admin_url",
        "service_url",
        "parts",
        "restate_nodes",
        "restate_cluster_port_base",
    ]
    assert list(found["parts"]) == ["postgres", "restate-n1", "restate-n2", "restate-n3", "service"]
    assert found["parts"]["restate-n2"] == {"address": "http://127.0.0.1:26070", "pid": None}
    assert (found["restate_nodes"], found["restate_cluster_port_base"]) == (3, 24000)
    assert load(tmp_path) == stack.describe()


def test_the_running_labs_cluster_shapes_the_settings_of_other_commands(tmp_path: Path) -> None:
    Stack(Settings(home=tmp_path, restate_nodes=3, restate_cluster_port_base=24000)).write_state()
    one = Settings(home=tmp_path, restate_nodes=1)
    shaped = shaped_like_running_lab(one, explicit=False)
    assert (shaped.restate_nodes, shaped.restate_cluster_port_base) == (3, 24000)
    assert shaped_like_running_lab(one, explicit=True).restate_nodes == 1


def test_no_file_or_not_a_state_reads_as_no_lab(tmp_path: Path) -> None:
    assert load(tmp_path) is None
    assert not lab_running(tmp_path)
    (tmp_path / STATE_FILE_NAME).write_text("{not json")
    assert load(tmp_path) is None
    (tmp_path / STATE_FILE_NAME).write_text('{"parts": {}}')
    assert load(tmp_path) is None
    assert parts_alive(tmp_path) == {}


def test_a_pid_that_no_longer_runs_is_not_a_running_part(tmp_path: Path) -> None:
    state = Stack(Settings(home=tmp_path, restate_nodes=1)).describe()
    dead = state.model_copy(
        update={
            "parts": {
                **state.parts,
                "service": state.parts["service"].model_copy(update={"pid": 2**22 + 1}),
            }
        }
    )
    dead.write(tmp_path / STATE_FILE_NAME)
    assert load(tmp_path) == dead
    assert dead.pids() == {"service": 2**22 + 1}
    assert parts_alive(tmp_path) == {}


def test_status_json_is_the_state_with_live_checks_then_the_cluster_then_up(tmp_path: Path) -> None:
    state = Stack(Settings(home=tmp_path, restate_nodes=3)).describe()
    node = NodeStatus("n1", "provisions the cluster", None, False, None, None, "a", "i", "n")
    cluster = ClusterStatus("lab", [node], None, "unknown: no node answers")
    status = LabStatus(
        state,
        {n: PartStatus(p, running=False, healthy=True) for n, p in state.parts.items()},
        cluster,
    )
    found = status.as_dict()
    assert list(found) == [*state.as_dict(), "cluster", "up"]
    assert found["parts"]["service"] == {
        **state.parts["service"].as_dict(),
        "running": False,
        "healthy": True,
    }
    assert list(found["parts"]["service"]) == ["address", "pid", "server", "running", "healthy"]
    assert found["cluster"]["nodes"][0]["name"] == "n1"
    assert found["up"] is False
