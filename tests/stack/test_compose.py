"""docker-compose.yml cannot run here (no Docker engine); these checks keep it in step with
the code: the same ports, Restate tuning, Postgres settings, service command and image tags, and
for the ``cluster`` profile the settings ``dbpatterns/stack/cluster_nodes.py`` gives each node."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

from dbpatterns.config import PROJECT_ROOT, RestateTuning, Settings
from dbpatterns.service import identity
from dbpatterns.stack import ServiceProcess
from dbpatterns.stack.cluster_nodes import REPLICATION, ClusterNode, NodeAddress, node_addresses

#: The services `docker compose up` starts; every other one is the cluster profile's.
SINGLE_NODE = {"postgres", "keygen", "restate", "migrate", "service", "register"}
#: The cluster of `./lab up --nodes 3`.
NODES = 3
#: Where a node is, rather than how it runs: compose gives these for containers, cluster_nodes.py
#: for processes on one host; checked apart.
LOCATION_KEYS = {
    "base-dir",
    "bind-address",
    "advertised-address",
    "metadata-client.addresses",
    "ingress.bind-address",
    "admin.bind-address",
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
    return loaded


@pytest.fixture(scope="module")
def defaults() -> Settings:
    """The built-in defaults, whatever this shell's DBPATTERNS_* variables say."""
    return Settings.model_construct()


@pytest.fixture(scope="module")
def cluster_nodes(compose: dict[str, Any]) -> list[tuple[NodeAddress, dict[str, Any]]]:
    """Each node of ``./lab up --nodes 3`` (as cluster_nodes.py places it) with its compose
    service."""
    addresses = node_addresses(Settings.model_construct(restate_nodes=NODES))
    return [(a, compose["services"][f"restate-{a.index}"]) for a in addresses]


def restate_services(compose: dict[str, Any]) -> list[str]:
    return [name for name in compose["services"] if name.split("-")[0] == "restate"]


def flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A config table as dotted keys: ``{"worker": {"invoker": {...}}}`` -> ``worker.invoker.x``."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def restate_config(environment: dict[str, Any]) -> dict[str, Any]:
    """The config keys restate-server reads from ``RESTATE_*`` variables (``__`` nests a table,
    ``_`` is ``-``), each value as TOML reads it (``"2"`` -> 2, ``'["a"]'`` -> a list) or else
    the string (``10s``)."""
    config: dict[str, Any] = {}
    for name, raw in environment.items():
        path = name.removeprefix("RESTATE_").lower().split("__")
        key = ".".join(part.replace("_", "-") for part in path)
        try:
            config[key] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            config[key] = str(raw)
    return config


def host_ports(service: dict[str, Any]) -> dict[int, tuple[str, int]]:
    """container port -> (host address, host port), from 'HOST:HOST_PORT:CONTAINER' entries."""
    ports = {}
    for entry in service.get("ports", []):
        host, host_port, container_port = entry.split(":")
        ports[int(container_port)] = (host, int(host_port))
    return ports


def published(service: dict[str, Any]) -> dict[int, str]:
    """container port -> host binding, from '127.0.0.1:HOST:CONTAINER' entries."""
    ports = {}
    for entry in service["ports"]:
        host, host_port, container_port = entry.split(":")
        assert host_port == container_port
        ports[int(container_port)] = host
    return ports


def test_every_port_matches_the_embedded_stack_and_binds_loopback(
    compose: dict[str, Any], defaults: Settings
) -> None:
    services = compose["services"]
    assert published(services["restate"]) == {
        defaults.ingress_port: "127.0.0.1",
        defaults.admin_port: "127.0.0.1",
    }
    assert published(services["service"]) == {defaults.service_port: "127.0.0.1"}
    assert published(services["postgres"]) == {make_url(defaults.database_url).port: "127.0.0.1"}


def test_every_restate_runs_with_the_labs_tuning(compose: dict[str, Any]) -> None:
    assert restate_services(compose) == ["restate", *(f"restate-{i}" for i in range(1, NODES + 1))]
    for service in restate_services(compose):
        env = {k: str(v) for k, v in compose["services"][service]["environment"].items()}
        for name, value in RestateTuning.as_env().items():
            assert env.get(name) == value, (service, name)


def test_every_restate_image_is_the_version_pinned_in_package_json(
    compose: dict[str, Any],
) -> None:
    pinned = json.loads((PROJECT_ROOT / "package.json").read_text())["dependencies"]
    single = compose["services"]["restate"]["image"]
    assert single.endswith(":" + pinned["@restatedev/restate-server"])
    for service in restate_services(compose):
        assert compose["services"][service]["image"] == single, service


def test_postgres_reads_db_config_with_prepared_transactions_on(
    compose: dict[str, Any], defaults: Settings
) -> None:
    pg = compose["services"]["postgres"]
    mount = next(v for v in pg["volumes"] if v.startswith("./db:"))
    container_dir = mount.split(":")[1]
    assert f"config_file={container_dir}/postgresql.conf" in pg["command"]
    conf = (PROJECT_ROOT / "db" / "postgresql.conf").read_text()
    settings = dict(
        line.split("#")[0].replace(" ", "").split("=", 1)
        for line in conf.splitlines()
        if "=" in line.split("#")[0]
    )
    assert int(settings["max_prepared_transactions"]) > 0
    url = make_url(defaults.database_url)
    assert pg["environment"] == {
        "POSTGRES_USER": url.username,
        "POSTGRES_PASSWORD": url.password,
        "POSTGRES_DB": url.database,
    }


def test_service_runs_like_the_embedded_one_against_the_compose_database(
    compose: dict[str, Any], defaults: Settings
) -> None:
    svc = compose["services"]["service"]
    embedded = ServiceProcess(defaults, Path("/dev/null")).argv()
    expected = ["python", *embedded[1:]]
    assert svc["command"] == expected
    # The command reads host and port from the settings: every interface, the default port.
    assert svc["environment"]["DBPATTERNS_BIND_HOST"] == "0.0.0.0"
    assert "DBPATTERNS_SERVICE_PORT" not in svc["environment"]
    assert svc["ports"] == [f"127.0.0.1:{defaults.service_port}:{defaults.service_port}"]
    dockerfile_cmd = next(
        line
        for line in (PROJECT_ROOT / "Dockerfile").read_text().splitlines()
        if line.startswith("CMD")
    )
    assert json.loads(dockerfile_cmd[len("CMD ") :]) == expected
    url = make_url(svc["environment"]["DBPATTERNS_DATABASE_URL"])
    default = make_url(defaults.database_url)
    assert (url.username, url.password, url.database, url.host) == (
        default.username,
        default.password,
        default.database,
        "postgres",
    )
    assert compose["services"]["migrate"]["command"] == [
        "python",
        "-m",
        "dbpatterns.cli",
        "migrate",
    ]


def test_registration_points_restate_at_the_service(
    compose: dict[str, Any], defaults: Settings
) -> None:
    args = compose["services"]["register"]["command"]
    body = json.loads(args[args.index("-d") + 1])
    assert body["uri"] == f"http://service:{defaults.service_port}"
    assert args[args.index("POST") + 1] == f"http://restate:{defaults.admin_port}/deployments"


def test_restate_signs_with_the_key_the_service_checks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    keygen = services["keygen"]
    volume, folder = keygen["volumes"][0].split(":")[:2]
    assert keygen["command"] == ["python", "-m", "dbpatterns.cli", "keygen", folder]
    private = services["restate"]["environment"][
        "RESTATE_WORKER__INVOKER__REQUEST_IDENTITY_PRIVATE_KEY_PEM_FILE"
    ]
    public = services["service"]["environment"]["DBPATTERNS_IDENTITY_PUBLIC_KEY_FILE"]
    assert private == f"{folder}/{identity.PRIVATE_KEY_FILE}"
    assert public == f"{folder}/{identity.PUBLIC_KEY_FILE}"
    for name in [*restate_services(compose), "service", "service-cluster"]:
        assert (
            services[name]["environment"].get(
                "RESTATE_WORKER__INVOKER__REQUEST_IDENTITY_PRIVATE_KEY_PEM_FILE", private
            )
            == private
        )
        assert (
            services[name]["environment"].get("DBPATTERNS_IDENTITY_PUBLIC_KEY_FILE", public)
            == public
        )
        assert f"{volume}:{folder}:ro" in services[name]["volumes"]
        assert services[name]["depends_on"]["keygen"] == {
            "condition": "service_completed_successfully"
        }


# --- the cluster profile: `docker compose --profile cluster up` -------------------------------


def test_single_node_default_is_unchanged_and_the_cluster_needs_its_profile(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    default = {name for name, svc in services.items() if "profiles" not in svc}
    assert default == SINGLE_NODE
    for name in services.keys() - default:
        assert services[name]["profiles"] == ["cluster"], name
    for name in default:  # `docker compose up` must not need a service of the profile
        assert set(services[name].get("depends_on", {})) <= default, name


def test_cluster_is_as_many_nodes_as_survive_one_failure() -> None:
    # The metadata store keeps a majority, and every record a copy, with one node down.
    assert NODES - 1 > NODES / 2
    assert NODES - 1 >= REPLICATION
    assert NODES == 3


def test_each_node_runs_with_the_settings_cluster_nodes_py_writes(
    cluster_nodes: list[tuple[NodeAddress, dict[str, Any]]],
) -> None:
    """Cluster name, node name, forced node id, auto-provision (n1 only), roles, replication,
    partitions, bifrost provider, telemetry, the lab's tuning and the identity key: every key
    cluster_nodes.py writes, bar where the node listens, with the same value."""
    peers = [address for address, _ in cluster_nodes]
    for address, service in cluster_nodes:
        env = service["environment"]
        key_file = Path(env["RESTATE_WORKER__INVOKER__REQUEST_IDENTITY_PRIVATE_KEY_PEM_FILE"])
        written = ClusterNode(Settings.model_construct(), address, peers).config_toml(key_file)
        expected = flatten(tomllib.loads(written))
        config = restate_config(env)
        assert {k: v for k, v in config.items() if k not in LOCATION_KEYS} == {
            k: v for k, v in expected.items() if k not in LOCATION_KEYS
        }, address.name
    provisioning = [
        a.name for a, s in cluster_nodes if restate_config(s["environment"])["auto-provision"]
    ]
    assert provisioning == ["n1"]


def test_nodes_find_each_other_by_service_name_on_restates_default_ports(
    compose: dict[str, Any],
    cluster_nodes: list[tuple[NodeAddress, dict[str, Any]]],
    defaults: Settings,
) -> None:
    """In its container every node listens where the single one does (no bind-address set)
    and keeps its data where the single one does, in a volume of its own."""
    node_port = defaults.restate_ports().node
    single = compose["services"]["restate"]
    base_dir = single["environment"]["RESTATE_BASE_DIR"]
    advertised = [f"http://restate-{a.index}:{node_port}/" for a, _ in cluster_nodes]
    volumes = set()
    for (address, service), url in zip(cluster_nodes, advertised, strict=True):
        config = restate_config(service["environment"])
        assert config["advertised-address"] == url, address.name
        assert config["metadata-client.addresses"] == advertised, address.name
        assert not {"bind-address", "ingress.bind-address", "admin.bind-address"} & set(config)
        assert config["base-dir"] == base_dir
        data = next(v for v in service["volumes"] if v.endswith(f":{base_dir}"))
        volumes.add(data.split(":")[0])
    assert len(volumes) == NODES
    assert not volumes & {v.split(":")[0] for v in single["volumes"]}
    assert volumes <= set(compose["volumes"])


def test_cluster_ports_are_those_of_lab_up_nodes_3_on_loopback(
    compose: dict[str, Any],
    cluster_nodes: list[tuple[NodeAddress, dict[str, Any]]],
    defaults: Settings,
) -> None:
    for address, service in cluster_nodes:
        assert host_ports(service) == {
            defaults.ingress_port: ("127.0.0.1", address.ports.ingress),
            defaults.admin_port: ("127.0.0.1", address.ports.admin),
        }, address.name
    taken = [port for svc in compose["services"].values() for _, port in host_ports(svc).values()]
    assert len(taken) == len(set(taken)), "two services publish the same host port"


def test_cluster_has_a_service_and_database_of_its_own_registered_through_n1(
    compose: dict[str, Any], defaults: Settings
) -> None:
    """One Restate cluster per database (dbpatterns/service/janitor.py): the cluster's service uses
    another database on the same server, and asks n1, not the single server, about invocations."""
    services = compose["services"]
    single, own = services["service"], services["service-cluster"]
    assert own["command"] == single["command"]
    assert own["healthcheck"] == single["healthcheck"]
    assert "ports" not in own  # only the nodes call it
    assert services["migrate-cluster"]["command"] == services["migrate"]["command"]
    assert services["migrate-cluster"]["environment"] == own["environment"]
    env = own["environment"]
    assert env["DBPATTERNS_RESTATE_ADMIN_URL"] == f"http://restate-1:{defaults.admin_port}"
    assert env["DBPATTERNS_RESTATE_INGRESS_URL"] == f"http://restate-1:{defaults.ingress_port}"
    url = make_url(env["DBPATTERNS_DATABASE_URL"])
    shared = make_url(single["environment"]["DBPATTERNS_DATABASE_URL"])
    assert url.database != shared.database
    assert url.set(database=shared.database) == shared

    createdb = services["createdb-cluster"]
    assert createdb["image"] == services["postgres"]["image"]
    assert createdb["environment"] == {
        "PGHOST": url.host,
        "PGUSER": url.username,
        "PGPASSWORD": url.password,
        "PGDATABASE": shared.database,
    }
    assert createdb["command"][-1].endswith(f"createdb {url.database}")
    assert f"datname = '{url.database}'" in createdb["command"][-1]
    assert services["migrate-cluster"]["depends_on"]["createdb-cluster"] == {
        "condition": "service_completed_successfully"
    }

    args = services["register-cluster"]["command"]
    body = json.loads(args[args.index("-d") + 1])
    assert body["uri"] == f"http://service-cluster:{defaults.service_port}"
    assert args[args.index("POST") + 1] == f"http://restate-1:{defaults.admin_port}/deployments"
    assert services["register-cluster"]["depends_on"] == {
        "restate-1": {"condition": "service_started"},
        "service-cluster": {"condition": "service_healthy"},
    }
