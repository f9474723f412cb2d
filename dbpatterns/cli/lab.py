"""The commands that run the lab, look at it and reset it: ``up``, ``status``, ``node``,
``reset``, ``psql``, ``migrate``, ``restate`` and ``keygen``."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
from pathlib import Path

from pydantic import ValidationError

from dbpatterns.cli.command import Command, Passthrough
from dbpatterns.config import Settings
from dbpatterns.stack import (
    ClusterStatus,
    LabError,
    Stack,
    find_restate_binary,
    lab_running,
    probe,
    request_node_start,
    supervise,
)
from dbpatterns.stack.cluster import NodeStatus
from dbpatterns.stack.processes import pid_alive, wait_until
from dbpatterns.stack.state import load

LOOK_AT_THE_DATA = "SELECT * FROM users;  SELECT * FROM user_idempotency;"


def restate_lines(stack: Stack) -> str:
    """Where restate-server listens: one server, or every node of the cluster."""
    s = stack.settings
    if stack.cluster is None:
        return f"  restate ingress   {s.ingress_url}\n  restate admin     {s.admin_url}"
    nodes = stack.cluster.nodes
    return "\n".join(
        f"  restate {n.name:<9} ingress {n.address.ingress_url}  admin {n.address.admin_url}"
        f"  ({n.role})"
        for n in nodes
    ) + (
        "\n  (the service is registered through n1; every node's ingress takes calls;"
        "\n  `./lab status` tells which node leads which partition)"
    )


def banner(stack: Stack) -> str:
    s = stack.settings
    ingress = s.ingress_url
    return f"""
dbpatterns lab is up (working folder {s.home})

{restate_lines(stack)}
  service (h2c)     {s.service_url}
  postgres          {s.libpq_url}
  logs              {s.home / "logs"}

Look at the data:
  ./lab psql                 (or: psql '{s.libpq_url}')
  {LOOK_AT_THE_DATA}

Call a handler through Restate:
  curl {ingress}/simple/read --json '"A"'
  curl {ingress}/keyed/A/updateConditional --json '10' -H 'idempotency-key: top-up-1'
  curl {ingress}/idempotency/update --json '{{"userId":"A","addCredits":5}}' -H 'idempotency-key: 1'
  curl {ingress}/twoPhaseCommit/update --json '{{"userId": "B", "addCredits": 3}}'

Inspect invocations with the restate CLI:
  ./lab restate invocations list

Ctrl-C stops every part; the data stays for the next `./lab up` (`./lab reset` wipes it).
"""


def with_nodes(settings: Settings, nodes: int | None) -> Settings:
    """The settings with ``up --nodes`` applied, checked like the environment variable."""
    if nodes is None:
        return settings
    try:
        return Settings.model_validate({**settings.model_dump(), "restate_nodes": nodes})
    except ValidationError as exc:
        reason = exc.errors()[0]["msg"]
        raise LabError(f"--nodes {nodes}: {reason}", "use --nodes 3 (a cluster) or 1") from None


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    stack = Stack(with_nodes(settings, args.nodes))
    supervise(
        stack,
        say=lambda line: print(f"[dbpatterns] {line}", flush=True),
        on_up=lambda: print(banner(stack), flush=True),
    )
    return 0


def cmd_node(settings: Settings, args: argparse.Namespace) -> int:
    """Fail or start one node of the cluster a running ``up --nodes 3`` runs: kill (SIGKILL),
    pause (SIGSTOP), resume (SIGCONT), or start it again (through that ``up``, whose child it
    is)."""
    state = load(settings.home)
    if state is None or state.restate_nodes is None or not lab_running(settings.home):
        raise LabError(
            f"no Restate cluster runs in {settings.home}", "start one with `./lab up --nodes 3`"
        )
    part = state.parts.get(f"restate-{args.name}")
    if part is None:
        nodes = ", ".join(k.removeprefix("restate-") for k in state.parts if "-n" in k)
        raise LabError(f"no cluster node {args.name!r}", f"the nodes are {nodes}")
    pid = part.pid
    running = bool(pid and pid_alive(pid))
    if args.action == "start":
        if running:
            raise LabError(f"restate {args.name} runs already (pid {pid})", "kill it first")
        request_node_start(settings.home, args.name)

        def started() -> bool:
            now = load(settings.home)
            node = now.parts.get(f"restate-{args.name}") if now else None
            return bool(node and node.pid and pid_alive(node.pid))

        if not wait_until(started, 90, interval=0.5):
            raise LabError(
                f"restate {args.name} was not started within 90 s",
                "look at the terminal of `./lab up`",
            )
        print(f"restate {args.name} started again; `./lab status` shows when it leads again")
        return 0
    if pid is None or not running:
        raise LabError(f"restate {args.name} is not running", f"`./lab node start {args.name}`")
    sig = {"kill": signal.SIGKILL, "pause": signal.SIGSTOP, "resume": signal.SIGCONT}[args.action]
    os.kill(pid, sig)
    print(f"restate {args.name} (pid {pid}): {sig.name} sent")
    return 0


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    status = probe(settings)
    if args.json:
        print(json.dumps(status.as_dict(), indent=2))
    else:
        print(f"lab in {status.state.home}: {'up' if status.up else 'not up'}")
        for name, part in status.parts.items():
            health = "healthy" if part.healthy else "down"
            pid = part.part.pid if part.running else "-"
            print(f"  {name:<15} {health:<8} pid {pid!s:<8} {part.part.address}")
        print(f"  database url    {status.state.database_url}")
        print(f"  ingress url     {status.state.ingress_url}")
        if status.cluster is not None:
            print(cluster_lines(status.cluster))
    return 0 if status.up else 1


def cluster_lines(cluster: ClusterStatus) -> str:
    """Each node of a cluster status on a line: its role, health, metadata membership and the
    partitions it leads."""

    def leads(node: NodeStatus) -> str:
        if node.leads is None:
            return "leads ?"
        return "leads " + (", ".join(map(str, node.leads)) or "none")

    def member(node: NodeStatus) -> str:
        labels: dict[bool | None, str] = {True: "metadata member", False: "not a metadata member"}
        return labels.get(node.metadata_member, "metadata ?")

    name, source = cluster.cluster_name, cluster.leaders_source
    lines = [f"  restate cluster {name!r}: partition leaders from {source}"]
    for node in cluster.nodes:
        health = "healthy" if node.healthy else "down"
        lines.append(
            f"    {node.name:<4} {health:<8} {member(node):<22} {leads(node):<16} "
            f"ingress {node.ingress_url}  ({node.role})"
        )
    return "\n".join(lines)


PSQL_HELP = """\
Open psql (the one on PATH) on the lab's database: the URL in DBPATTERNS_DATABASE_URL (by
default the Postgres of `./lab up`, postgresql://dbpatterns:dbpatterns@127.0.0.1:5432/dbpatterns;
`./lab status` shows it). Every other argument goes to psql untouched; a first `--` is dropped.

  ./lab psql -c 'SELECT * FROM users'
  ./lab psql -- --help            psql's own help"""


def cmd_psql(settings: Settings, args: argparse.Namespace) -> int:
    psql = shutil.which("psql")
    if psql is None:
        raise LabError(
            "psql is not installed",
            "install the PostgreSQL client (`apt-get install postgresql-client`)",
        )
    os.execv(psql, [psql, settings.libpq_url, *args.psql_args])
    return 0  # not reached


def cmd_reset(settings: Settings, args: argparse.Namespace) -> int:
    if lab_running(settings.home):
        raise LabError(f"the lab in {settings.home} is running", "stop it (Ctrl-C) before a reset")
    if not settings.home.exists():
        print(f"nothing to reset: {settings.home} does not exist")
        return 0
    if not args.yes:
        raise LabError(
            f"reset deletes {settings.home} (the database and Restate's journal)",
            "run `./lab reset --yes` to confirm",
        )
    shutil.rmtree(settings.home)
    print(f"removed {settings.home}")
    return 0


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from dbpatterns.service import migrate

    migrate.migrate(settings.libpq_url)
    print(f"migrated and seeded {settings.db_url.render_as_string(hide_password=True)}")
    return 0


RESTATE_HELP = """\
Run the restate CLI pinned in package.json (installed in node_modules) with RESTATE_ADMIN_URL
set to the lab's admin API: the restate-server of `./lab up` (http://127.0.0.1:9070 by default,
DBPATTERNS_ADMIN_PORT), or node n1 of `./lab up --nodes 3`. Every other argument goes to restate
untouched; a first `--` is dropped.

  ./lab restate invocations list
  ./lab restate deployments list
  ./lab restate -- --help         restate's own help (-h: its short help)"""


def cmd_restate(settings: Settings, args: argparse.Namespace) -> int:
    cli = find_restate_binary("restate", "restate")
    env = {**os.environ, "RESTATE_ADMIN_URL": settings.admin_url}
    os.execve(cli, [str(cli), *args.restate_args], env)
    return 0  # not reached


def cmd_keygen(settings: Settings, args: argparse.Namespace) -> int:
    from dbpatterns.service import identity

    folder = args.dir or settings.identity_dir
    private, public = identity.ensure_key_pair(folder)
    print(f"private key (restate-server): {private}")
    print(f"public key (the service):     {public}")
    return 0


def up_arguments(up: argparse.ArgumentParser) -> None:
    up.add_argument(
        "--nodes",
        type=int,
        metavar="N",
        help="run a Restate cluster of N restate-server nodes (3: one may fail) instead of one "
        "server (default: DBPATTERNS_RESTATE_NODES, 1)",
    )


def status_arguments(st: argparse.ArgumentParser) -> None:
    st.add_argument("--json", action="store_true", help="machine-readable: URLs, PIDs, health")


def reset_arguments(rs: argparse.ArgumentParser) -> None:
    rs.add_argument("--yes", action="store_true", help="really delete")


def keygen_arguments(kg: argparse.ArgumentParser) -> None:
    kg.add_argument(
        "dir", nargs="?", type=Path, help="folder for the keys (default: .lab/identity)"
    )


def node_arguments(nd: argparse.ArgumentParser) -> None:
    nd.add_argument("action", choices=["kill", "pause", "resume", "start"])
    nd.add_argument("name", help="the node: n1, n2 or n3 (`./lab status` lists them)")


COMMANDS = (
    Command(
        "up",
        "start postgres, restate-server and the service; Ctrl-C stops them",
        cmd_up,
        up_arguments,
        follows_running_lab=False,
    ),
    Command(
        "status", "is each part of the lab up; exit 0 only if all are", cmd_status, status_arguments
    ),
    Command(
        "psql",
        "open psql on the lab database",
        cmd_psql,
        passthrough=Passthrough("psql_args", "passed on to psql", PSQL_HELP),
    ),
    Command("reset", "delete the lab's data (postgres and restate)", cmd_reset, reset_arguments),
    Command("migrate", "alembic upgrade head + seed rows, on DBPATTERNS_DATABASE_URL", cmd_migrate),
    Command("keygen", "make (once) the request identity key pair", cmd_keygen, keygen_arguments),
    Command(
        "node",
        "kill, pause, resume or start again one node of `up --nodes 3`'s cluster",
        cmd_node,
        node_arguments,
    ),
    Command(
        "restate",
        "the restate CLI, aimed at the lab's admin API",
        cmd_restate,
        passthrough=Passthrough("restate_args", "e.g. invocations list", RESTATE_HELP),
    ),
)
