"""Settings, read from the environment in one place.

Every part of the lab (the service, Alembic, the embedded stack, the tests) takes its settings
from here, so one variable changes them all. Each setting is ``DBPATTERNS_<NAME>``; the defaults
work on a laptop with nothing set.
"""

from __future__ import annotations

from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Literal, NamedTuple

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import URL, make_url

#: The repository root when the package runs from a checkout (the way the lab is installed).
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class RestateTuning:
    """The restate-server settings the lab changes from Restate's defaults.

    With the defaults (inactivity 1 min, abort 10 min, backoff up to 1 min) a hung or paused
    service is retried only after about eleven minutes; a lab that demonstrates crashes needs
    retries within seconds. The embedded stack and docker-compose.yml both use these values.
    """

    INACTIVITY_TIMEOUT = "10s"
    ABORT_TIMEOUT = "5s"
    RETRY_INITIAL_INTERVAL = "100ms"
    RETRY_EXPONENTIATION_FACTOR = 2.0
    RETRY_MAX_INTERVAL = "2s"
    RETRY_ON_MAX_ATTEMPTS = "pause"

    @classmethod
    def as_env(cls) -> dict[str, str]:
        """The same settings as restate-server environment variables (``RESTATE_`` + ``__``)."""
        return {
            "RESTATE_WORKER__INVOKER__INACTIVITY_TIMEOUT": cls.INACTIVITY_TIMEOUT,
            "RESTATE_WORKER__INVOKER__ABORT_TIMEOUT": cls.ABORT_TIMEOUT,
            "RESTATE_DEFAULT_RETRY_POLICY__INITIAL_INTERVAL": cls.RETRY_INITIAL_INTERVAL,
            "RESTATE_DEFAULT_RETRY_POLICY__EXPONENTIATION_FACTOR": str(
                cls.RETRY_EXPONENTIATION_FACTOR
            ),
            "RESTATE_DEFAULT_RETRY_POLICY__MAX_INTERVAL": cls.RETRY_MAX_INTERVAL,
            "RESTATE_DEFAULT_RETRY_POLICY__ON_MAX_ATTEMPTS": cls.RETRY_ON_MAX_ATTEMPTS,
        }


class RestatePorts(NamedTuple):
    """The three ports of one restate-server: node-to-node, admin API, ingress."""

    node: int
    admin: int
    ingress: int


#: Cluster node ``i`` listens on ``restate_cluster_port_base + 1000 * i`` plus these offsets,
#: which end like restate-server's own defaults (5122, 9070, 8080): n1 on 21122, 21070, 21080.
CLUSTER_PORT_OFFSETS = RestatePorts(node=122, admin=70, ingress=80)


class Settings(BaseSettings):
    """The lab's configuration. Field ``foo`` is read from ``DBPATTERNS_FOO``."""

    model_config = SettingsConfigDict(env_prefix="DBPATTERNS_", extra="ignore")

    database_url: str = Field(
        default="postgresql://dbpatterns:dbpatterns@127.0.0.1:5432/dbpatterns",
        description="The lab database; the embedded stack creates exactly this server and role.",
    )
    home: Path = Field(
        default=PROJECT_ROOT / ".lab",
        description="Working folder of the embedded stack: Postgres and Restate data, logs.",
    )
    bind_host: str = Field(default="127.0.0.1", description="Address every listener binds to.")
    ingress_port: int = 8080
    admin_port: int = 9070
    restate_node_port: int = Field(default=5122, description="restate-server's node fabric.")
    service_port: int = 9080
    service_server: Literal["granian", "hypercorn"] = Field(
        default="granian",
        description="The ASGI server that runs the service (dbpatterns/service/serve.py); both "
        "serve one process over HTTP/2 cleartext. granian is the default: measured faster, for the "
        "service and for restate-server (bench/README.md).",
    )
    restate_nodes: int = Field(
        default=1,
        ge=1,
        le=9,
        description="restate-server processes: 1 is one server on the ports above; more form a "
        "cluster (`./lab up --nodes 3`) on ports derived from restate_cluster_port_base.",
    )
    restate_cluster_port_base: int = Field(
        default=20000,
        ge=1024,
        le=55000,
        description="Cluster node i listens on base + 1000 * i + 122 (node), + 70 (admin), "
        "+ 80 (ingress); unused by a single server.",
    )
    pool_size: int = Field(default=10, ge=1, le=500)
    log_level: str = Field(default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")
    lock_timeout_ms: int = Field(
        default=2000, ge=0, description="A row locked by a stuck transaction fails the step fast."
    )
    idle_in_transaction_timeout_ms: int = Field(
        default=10000, ge=0, description="A zombie transaction cannot hold its locks for longer."
    )
    idempotency_token_ttl: timedelta = Field(
        default=timedelta(days=1),
        description="idempotency.update's deadline: a call commits within it or fails (504); "
        "its token is kept as long again.",
    )
    janitor_interval: timedelta = Field(
        default=timedelta(seconds=30),
        description="How often the service runs the prepared-transaction janitor; 0 turns it off.",
    )
    failpoints: str = Field(
        default="",
        description="Failpoints switched on for the service's life, 'name=action;...' "
        "(dbpatterns/service/failpoints.py); checked at start-up. Empty: none.",
    )
    failpoints_file: Path | None = Field(
        default=None,
        description="A failpoint control file, one 'name=action' per line, re-read when it "
        "changes (the chaos suite and the tests switch points through it). Unset: none.",
    )
    request_identity: bool = Field(
        default=True,
        description="The service answers only requests signed by the lab's restate-server.",
    )
    identity_public_key: str | None = Field(
        default=None,
        pattern=r"^publickeyv1_[1-9A-HJ-NP-Za-km-z]+$",
        description="restate-server's request identity key; the embedded stack sets it.",
    )
    identity_public_key_file: Path | None = Field(
        default=None, description="A file holding that key (docker-compose's keygen writes one)."
    )
    restate_ingress_url: str | None = Field(
        default=None, description="Where to reach the ingress, when not on bind_host (compose)."
    )
    restate_admin_url: str | None = Field(
        default=None, description="Where to reach the admin API, when not on bind_host (compose)."
    )
    sql_trace_file: Path | None = Field(
        default=None,
        description="Append a line per statement each handler attempt runs (the chaos suite's "
        "count of attempts that reached the database); off when unset.",
    )
    pg_bin_dir: Path | None = Field(
        default=None, description="Where initdb/pg_ctl/postgres live; searched when unset."
    )
    restate_bin: Path | None = Field(
        default=None, description="The restate-server binary; the npm package's when unset."
    )

    @property
    def identity_dir(self) -> Path:
        """Where the embedded stack keeps the request identity key pair."""
        return self.home / "identity"

    def service_identity_keys(self) -> list[str]:
        """The public keys the service accepts signatures from; empty means no check."""
        if not self.request_identity:
            return []
        if self.identity_public_key:
            return [self.identity_public_key]
        if self.identity_public_key_file:
            return [self.identity_public_key_file.read_text().strip()]
        raise ValueError(
            "request identity is on but no key is given: set DBPATTERNS_IDENTITY_PUBLIC_KEY "
            "(publickeyv1_..., printed by `dbpatterns keygen`) or "
            "DBPATTERNS_IDENTITY_PUBLIC_KEY_FILE; DBPATTERNS_REQUEST_IDENTITY=false turns the "
            "check off (then anyone who reaches the port can call the handlers directly)"
        )

    @property
    def db_url(self) -> URL:
        return make_url(self.database_url)

    def database_url_at(self, host: str, port: int) -> str:
        """The same role, password and database on another server (a test's, a container's)."""
        return self.db_url.set(host=host, port=port).render_as_string(hide_password=False)

    @property
    def sqlalchemy_url(self) -> URL:
        """The database URL with the async psycopg 3 driver named, for SQLAlchemy."""
        return self.db_url.set(drivername="postgresql+psycopg")

    @property
    def libpq_url(self) -> str:
        """The database URL as psql and psycopg take it."""
        return self.db_url.set(drivername="postgresql").render_as_string(hide_password=False)

    def restate_ports(self, node: int = 1) -> RestatePorts:
        """The ports of restate-server: the single server's, or cluster node ``node``'s
        (1-based; see ``CLUSTER_PORT_OFFSETS``)."""
        if self.restate_nodes == 1:
            return RestatePorts(self.restate_node_port, self.admin_port, self.ingress_port)
        if not 1 <= node <= self.restate_nodes:
            raise ValueError(f"node {node} is not one of the {self.restate_nodes} cluster nodes")
        first = self.restate_cluster_port_base + 1000 * node
        return RestatePorts(*(first + offset for offset in CLUSTER_PORT_OFFSETS))

    @property
    def ingress_url(self) -> str:
        """The ingress calls go to (in a cluster: node 1's; every node's takes calls)."""
        port = self.restate_ports().ingress
        return self.restate_ingress_url or f"http://{self.bind_host}:{port}"

    @property
    def admin_url(self) -> str:
        """The admin API (in a cluster: node 1's, through which the service is registered)."""
        port = self.restate_ports().admin
        return self.restate_admin_url or f"http://{self.bind_host}:{port}"

    @property
    def service_url(self) -> str:
        return f"http://{self.bind_host}:{self.service_port}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this process, read once."""
    return Settings()
