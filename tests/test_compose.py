"""docker-compose.yml cannot run here (no Docker engine); these checks keep it in step with
the code: the same ports, Restate tuning, Postgres settings, service command and image tags."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

from dbpatterns import identity
from dbpatterns.config import PROJECT_ROOT, RestateTuning, Settings
from dbpatterns.stack import ServiceProcess


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
    return loaded


@pytest.fixture(scope="module")
def defaults() -> Settings:
    """The built-in defaults, whatever this shell's DBPATTERNS_* variables say."""
    return Settings.model_construct()


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


def test_restate_runs_with_the_labs_tuning(compose: dict[str, Any]) -> None:
    env = {k: str(v) for k, v in compose["services"]["restate"]["environment"].items()}
    for name, value in RestateTuning.as_env().items():
        assert env.get(name) == value, name


def test_restate_image_is_the_version_pinned_in_package_json(compose: dict[str, Any]) -> None:
    pinned = json.loads((PROJECT_ROOT / "package.json").read_text())["dependencies"]
    image = compose["services"]["restate"]["image"]
    assert image.endswith(":" + pinned["@restatedev/restate-server"])


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
    expected[expected.index("--bind") + 1] = f"0.0.0.0:{defaults.service_port}"
    assert svc["command"] == expected
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
    assert compose["services"]["migrate"]["command"] == ["dbpatterns", "migrate"]


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
    assert keygen["command"] == ["dbpatterns", "keygen", folder]
    private = services["restate"]["environment"][
        "RESTATE_WORKER__INVOKER__REQUEST_IDENTITY_PRIVATE_KEY_PEM_FILE"
    ]
    public = services["service"]["environment"]["DBPATTERNS_IDENTITY_PUBLIC_KEY_FILE"]
    assert private == f"{folder}/{identity.PRIVATE_KEY_FILE}"
    assert public == f"{folder}/{identity.PUBLIC_KEY_FILE}"
    for name in ("restate", "service"):
        assert f"{volume}:{folder}:ro" in services[name]["volumes"]
        assert services[name]["depends_on"]["keygen"] == {
            "condition": "service_completed_successfully"
        }
