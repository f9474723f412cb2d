"""The ``dbpatterns`` command: run the lab, look at it, reset it."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from dbpatterns.config import Settings, get_settings
from dbpatterns.measure import bench_compare
from dbpatterns.stack import (
    ClusterStatus,
    LabError,
    Stack,
    find_restate_binary,
    lab_running,
    probe,
    request_node_start,
    shaped_like_running_lab,
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


def cmd_janitor(settings: Settings, args: argparse.Namespace) -> int:
    import time
    import urllib.error
    from datetime import timedelta

    import psycopg

    from dbpatterns.service import janitor

    grace = timedelta(seconds=args.grace)
    while True:
        try:
            verdicts = janitor.sweep(settings, grace=grace, dry_run=args.dry_run)
        except (urllib.error.URLError, OSError, psycopg.OperationalError) as exc:
            raise LabError(
                f"cannot sweep prepared transactions: {exc}",
                "is the lab up (`./lab status`)? The janitor needs Postgres and Restate's "
                f"admin API ({settings.admin_url}); it rolls back nothing it cannot check",
            ) from exc
        for verdict in verdicts:
            print(verdict, flush=True)
        if not verdicts:
            prefixes = ", ".join(janitor.PREFIXES)
            print(f"no prepared transactions of the lab's ({prefixes})", flush=True)
        if args.once:
            return 0
        try:
            time.sleep(settings.janitor_interval.total_seconds() or janitor.GRACE.total_seconds())
        except KeyboardInterrupt:
            return 0


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


def cmd_bench(settings: Settings, args: argparse.Namespace) -> int:
    from dbpatterns.measure import bench, bench_report

    names = set(args.workloads.split(",")) if args.workloads else None
    workloads = [w for w in bench.WORKLOADS if names is None or w.name in names]
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    distributions = args.distributions.split(",")
    unknown = set(distributions) - set(bench.DISTRIBUTIONS)
    if unknown or (names and names - {w.name for w in bench.WORKLOADS}):
        raise LabError(
            "unknown workload or distribution",
            f"workloads: {', '.join(w.name for w in bench.WORKLOADS)}; "
            f"distributions: {', '.join(bench.DISTRIBUTIONS)}",
        )
    print(
        f"benchmark against {settings.ingress_url}: {len(workloads)} workloads x "
        f"{len(concurrencies)} concurrencies x {len(distributions)} distributions, "
        f"{args.duration:g} s each, load from {args.load}"
    )
    pids: dict[str, list[int]] | None = None
    if args.service_pid:
        pids = bench.lab_pids(settings) | {"service": [args.service_pid]}
    results = bench.benchmark(
        settings,
        pids=pids,
        concurrencies=concurrencies,
        duration=args.duration,
        workloads=workloads,
        distributions=distributions,
        load=args.load,
    )
    meta = {
        "duration": args.duration,
        "load": args.load,
        "service": "the lab's" if not args.service_pid else f"another process ({args.service_pid})",
        "service_server": None if args.service_pid else served_by(settings.home),
        "concurrencies": concurrencies,
        "cores": os.cpu_count(),
        "pool_size": settings.pool_size,
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    path = bench_report.write_results(results, args.out, meta)
    print("\n" + bench_report.markdown(results))
    print(json.dumps(bench.summary(results), indent=2))
    print(f"results: {path} (+ bench.md, bench.png)")
    return 0 if all(r.ledger_exact for r in results) else 1


def cmd_profile(settings: Settings, args: argparse.Namespace) -> int:
    from dbpatterns.measure import profile

    print(
        f"profiling the service under {args.workload}, c={args.concurrency}, "
        f"{args.duration:g} s (py-spy, {args.rate} samples/s)"
    )
    found, load, raw = profile.record(
        settings, args.workload, args.concurrency, args.duration, args.out, args.rate
    )
    title = f"`{args.workload}`, c={args.concurrency}: {load.ok / load.elapsed:.0f} ops/s"
    text = profile.markdown(found, title)
    (args.out / f"profile-{args.workload}.md").write_text(text)
    print(text)
    print(f"collapsed stacks: {raw} (+ .md)")
    return 0


def side_of(spec: str) -> bench_compare.Side:
    """``NAME=RUN.json[,RUN.json...]``: one side of ``./lab compare``."""
    name, sep, files = spec.partition("=")
    runs = tuple(Path(f) for f in files.split(",") if f)
    if not sep or not name or not runs:
        raise LabError(f"not a side: {spec!r}", "write NAME=RUN.json[,RUN.json...]")
    missing = [str(run) for run in runs if not run.is_file()]
    if missing:
        raise LabError(f"no such run: {', '.join(missing)}", "a bench.json that ./lab bench wrote")
    return bench_compare.Side(name, runs)


def served_by(home: Path) -> str | None:
    """The ASGI server the running lab's service was started with (its state file)."""
    state = load(home)
    return state.parts["service"].server if state else None


def cmd_compare(settings: Settings, args: argparse.Namespace) -> int:
    print(bench_compare.markdown(side_of(args.before), side_of(args.after)), end="")
    return 0


def cmd_costs(settings: Settings, args: argparse.Namespace) -> int:
    from dbpatterns.measure import costs_report

    missing = [str(p) for p in (args.bench, args.frames) if not p.is_file()]
    if missing:
        raise LabError(f"no such file: {', '.join(missing)}", "`./lab bench`, `./lab frames`")
    table = costs_report.markdown(args.bench, args.frames, args.concurrency, args.distribution)
    print(table, end="")
    return 0


def cmd_frames(settings: Settings, args: argparse.Namespace) -> int:
    from dbpatterns.measure import frames, frames_report

    lab = frames.Lab.from_state(settings.home)
    workloads = args.workloads.split(",") if args.workloads else list(frames.WORKLOADS)
    unknown = sorted(set(workloads) - set(frames.WORKLOADS))
    if unknown:
        raise LabError(
            f"unknown workload {', '.join(unknown)}", f"choose from {', '.join(frames.WORKLOADS)}"
        )
    if args.calls < 1 or args.warmup < 0:
        raise LabError(f"--calls {args.calls} --warmup {args.warmup}", "calls >= 1, warmup >= 0")
    print(
        f"HTTP/2 frames, TCP segments and syscalls per call between restate-server and the "
        f"service (port {lab.service_port}): {len(workloads)} workloads, warm-up, then "
        f"2 x {args.calls} sequential calls each (a capture pass, a strace pass)",
        flush=True,
    )
    results = frames.run(
        lab,
        workloads,
        calls=args.calls,
        warmup=args.warmup,
        raw_dir=args.raw,
        say=lambda line: print(line, flush=True),
    )
    meta = {
        "calls": args.calls,
        "warmup": args.warmup,
        "service_port": lab.service_port,
        "restate_processes": len(lab.restate_pids),
        "cores": os.cpu_count(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    path = frames_report.write_results(results, args.out, meta)
    print("\n" + frames_report.syscall_table(results))
    print(f"results: {path} (+ frames.md)")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dbpatterns", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser(
        "up", help="start postgres, restate-server and the service; Ctrl-C stops them"
    )
    up.add_argument(
        "--nodes",
        type=int,
        metavar="N",
        help="run a Restate cluster of N restate-server nodes (3: one may fail) instead of one "
        "server (default: DBPATTERNS_RESTATE_NODES, 1)",
    )
    st = sub.add_parser("status", help="is each part of the lab up; exit 0 only if all are")
    st.add_argument("--json", action="store_true", help="machine-readable: URLs, PIDs, health")
    ps = sub.add_parser("psql", help="open psql on the lab database")
    ps.add_argument("psql_args", nargs=argparse.REMAINDER, help="passed on to psql")
    rs = sub.add_parser("reset", help="delete the lab's data (postgres and restate)")
    rs.add_argument("--yes", action="store_true", help="really delete")
    sub.add_parser("migrate", help="alembic upgrade head + seed rows, on DBPATTERNS_DATABASE_URL")
    jn = sub.add_parser(
        "janitor",
        help="roll back twoPhaseCommit's prepared transactions whose invocation has ended",
    )
    jn.add_argument("--once", action="store_true", help="one sweep, then exit")
    jn.add_argument("--dry-run", action="store_true", help="say what would be rolled back, only")
    jn.add_argument(
        "--grace",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="leave prepared transactions younger than this alone (default 60)",
    )
    bn = sub.add_parser("bench", help="what each pattern costs, against the running lab")
    bn.add_argument("--concurrency", default="16,64", help="comma-separated (default 16,64)")
    bn.add_argument("--duration", type=float, default=10.0, help="seconds per run (default 10)")
    bn.add_argument(
        "--load",
        choices=("wrk", "python"),
        default="wrk",
        help="load generator: wrk (default; compiled, light) or the Python load process",
    )
    bn.add_argument("--workloads", help="comma-separated subset, e.g. baseline.noop,keyed.update")
    bn.add_argument(
        "--service-pid",
        type=int,
        help="measure this process as the service: another implementation of the same handlers, "
        "registered with the lab's restate-server in place of the lab's service",
    )
    bn.add_argument(
        "--distributions",
        default="spread,hot",
        help="spread (1,000 users), hot (one user), or both (default spread,hot)",
    )
    bn.add_argument("--out", type=Path, default=Path("bench/results"), help="results folder")
    pf = sub.add_parser("profile", help="where the service's CPU goes under one workload (py-spy)")
    pf.add_argument("workload", help="e.g. keyed.update (the names `./lab bench` uses)")
    pf.add_argument("--concurrency", type=int, default=16, help="connections (default 16)")
    pf.add_argument("--duration", type=float, default=20.0, help="seconds (default 20)")
    pf.add_argument("--rate", type=int, default=200, help="samples per second (default 200)")
    pf.add_argument("--out", type=Path, default=Path("bench/results"), help="results folder")
    cp = sub.add_parser("compare", help="two sets of bench runs side by side, as a Markdown table")
    cp.add_argument("before", help="NAME=RUN.json[,RUN.json...], e.g. hypercorn=a/bench.json")
    cp.add_argument("after", help="the same for the other side, e.g. granian=b/bench.json")
    co = sub.add_parser(
        "costs", help="what one call of each pattern costs: a bench run beside a frames run"
    )
    co.add_argument("--bench", type=Path, default=Path("bench/results/bench.json"))
    co.add_argument("--frames", type=Path, default=Path("bench/results/frames.json"))
    co.add_argument("--concurrency", type=int, default=64, help="the bench row (default 64)")
    co.add_argument("--distribution", default="spread", help="spread or hot (default spread)")
    fr = sub.add_parser(
        "frames",
        help="HTTP/2 frames, TCP segments and socket syscalls per call between restate-server "
        "and the service, against the running lab (tcpdump, tshark, strace)",
    )
    fr.add_argument("--calls", type=int, default=20, help="sequential calls per pass (default 20)")
    fr.add_argument(
        "--warmup",
        type=int,
        default=3,
        help="at least this many calls before measuring (default 3), then more until 50 in a "
        "row open no new connection to the service",
    )
    fr.add_argument("--workloads", help="comma-separated subset, e.g. baseline.noop,keyed.update")
    fr.add_argument("--out", type=Path, default=Path("bench/results"), help="results folder")
    fr.add_argument("--raw", type=Path, metavar="DIR", help="keep the captures and traces in DIR")
    sub.add_parser("chaos", help="the fault-injection suite (`./lab chaos --help`)")
    kg = sub.add_parser("keygen", help="make (once) the request identity key pair")
    kg.add_argument(
        "dir", nargs="?", type=Path, help="folder for the keys (default: .lab/identity)"
    )
    nd = sub.add_parser(
        "node", help="kill, pause, resume or start again one node of `up --nodes 3`'s cluster"
    )
    nd.add_argument("action", choices=["kill", "pause", "resume", "start"])
    nd.add_argument("name", help="the node: n1, n2 or n3 (`./lab status` lists them)")
    rc = sub.add_parser("restate", help="the restate CLI, aimed at the lab's admin API")
    rc.add_argument("restate_args", nargs=argparse.REMAINDER, help="e.g. invocations list")
    return p


COMMANDS = {
    "up": cmd_up,
    "status": cmd_status,
    "psql": cmd_psql,
    "reset": cmd_reset,
    "migrate": cmd_migrate,
    "janitor": cmd_janitor,
    "restate": cmd_restate,
    "keygen": cmd_keygen,
    "bench": cmd_bench,
    "profile": cmd_profile,
    "compare": cmd_compare,
    "costs": cmd_costs,
    "frames": cmd_frames,
    "node": cmd_node,
}


#: Commands whose arguments belong to another program, passed on untouched (``psql -c ...``).
PASSTHROUGH = {"psql": "psql_args", "restate": "restate_args"}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "chaos":  # the fault-injection suite has its own options
        from chaos.cli import main as chaos_main

        return chaos_main(argv[1:])
    if argv and argv[0] in PASSTHROUGH:
        args = argparse.Namespace(command=argv[0], **{PASSTHROUGH[argv[0]]: argv[1:]})
    else:
        args = parser().parse_args(argv)
    settings = get_settings()
    if args.command != "up":  # the others look at the lab that runs, one server or a cluster
        explicit = "DBPATTERNS_RESTATE_NODES" in os.environ
        settings = shaped_like_running_lab(settings, explicit)
    try:
        return COMMANDS[args.command](settings, args)
    except LabError as exc:
        print(f"dbpatterns {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
