"""The commands that measure the running lab: ``bench``, ``profile``, ``frames``, and the tables
made from their results, ``compare`` and ``costs``. Each says what it measures and writes its
results, with what produced them, under ``--out``."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from dbpatterns.cli.command import Command
from dbpatterns.config import Settings
from dbpatterns.measure import bench_compare
from dbpatterns.stack import LabError
from dbpatterns.stack.state import load


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
    if args.rtt_ms is not None and args.service_pid:
        raise LabError(
            "--rtt-ms runs a service of the bench's own behind the delay proxy; --service-pid "
            "measures a process registered in the lab's place: not both",
            "drop one of them",
        )
    print(
        f"benchmark against {settings.ingress_url}: {len(workloads)} workloads x "
        f"{len(concurrencies)} concurrencies x {len(distributions)} distributions, "
        f"{args.duration:g} s each, load from {args.load}"
        + ("" if args.rtt_ms is None else f", round trip {args.rtt_ms:g} ms on each link")
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
        rtt_ms=args.rtt_ms,
    )
    service: str
    server: str | None  # the ASGI server the measured service ran under, when known
    if args.service_pid:
        service, server = f"another process ({args.service_pid})", None
    elif args.rtt_ms is not None:
        service, server = "the bench's own, behind the delay proxy", settings.service_server
    else:
        service, server = "the lab's", served_by(settings.home)
    meta = {
        "duration": args.duration,
        "load": args.load,
        # None: no proxy, loopback; N: the round trip the proxy put on each link, in ms
        "rtt_ms": args.rtt_ms,
        "service": service,
        "service_server": server,
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

    stack = frames.TracedStack.from_state(settings.home)
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
        f"service (port {stack.service_port}): {len(workloads)} workloads, warm-up, then "
        f"2 x {args.calls} sequential calls each (a capture pass, a strace pass)",
        flush=True,
    )
    results = frames.run(
        stack,
        workloads,
        calls=args.calls,
        warmup=args.warmup,
        raw_dir=args.raw,
        say=lambda line: print(line, flush=True),
    )
    meta = {
        "calls": args.calls,
        "warmup": args.warmup,
        "service_port": stack.service_port,
        "restate_processes": len(stack.restate_pids),
        "cores": os.cpu_count(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    path = frames_report.write_results(results, args.out, meta)
    print("\n" + frames_report.syscall_table(results))
    print(f"results: {path} (+ frames.md)")
    return 0


def bench_arguments(bn: argparse.ArgumentParser) -> None:
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
        "--rtt-ms",
        type=float,
        metavar="N",
        help="a round trip of N ms (N/2 each way) on the links restate-server -> service and "
        "service -> Postgres, through a delay proxy that counts each link's round trips; the "
        "bench runs a service of its own behind it (0: the proxy without a delay)",
    )
    bn.add_argument(
        "--distributions",
        default="spread,hot",
        help="spread (1,000 users), hot (one user), or both (default spread,hot)",
    )
    bn.add_argument("--out", type=Path, default=Path("bench/results"), help="results folder")


def profile_arguments(pf: argparse.ArgumentParser) -> None:
    pf.add_argument("workload", help="e.g. keyed.update (the names `./lab bench` uses)")
    pf.add_argument("--concurrency", type=int, default=16, help="connections (default 16)")
    pf.add_argument("--duration", type=float, default=20.0, help="seconds (default 20)")
    pf.add_argument("--rate", type=int, default=200, help="samples per second (default 200)")
    pf.add_argument("--out", type=Path, default=Path("bench/results"), help="results folder")


def compare_arguments(cp: argparse.ArgumentParser) -> None:
    cp.add_argument("before", help="NAME=RUN.json[,RUN.json...], e.g. hypercorn=a/bench.json")
    cp.add_argument("after", help="the same for the other side, e.g. granian=b/bench.json")


def costs_arguments(co: argparse.ArgumentParser) -> None:
    co.add_argument("--bench", type=Path, default=Path("bench/results/bench.json"))
    co.add_argument("--frames", type=Path, default=Path("bench/results/frames.json"))
    co.add_argument("--concurrency", type=int, default=64, help="the bench row (default 64)")
    co.add_argument("--distribution", default="spread", help="spread or hot (default spread)")


def frames_arguments(fr: argparse.ArgumentParser) -> None:
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


COMMANDS = (
    Command(
        "bench", "what each pattern costs, against the running lab", cmd_bench, bench_arguments
    ),
    Command(
        "profile",
        "where the service's CPU goes under one workload (py-spy)",
        cmd_profile,
        profile_arguments,
    ),
    Command(
        "compare",
        "two sets of bench runs side by side, as a Markdown table",
        cmd_compare,
        compare_arguments,
    ),
    Command(
        "costs",
        "what one call of each pattern costs: a bench run beside a frames run",
        cmd_costs,
        costs_arguments,
    ),
    Command(
        "frames",
        "HTTP/2 frames, TCP segments and socket syscalls per call between restate-server "
        "and the service, against the running lab (tcpdump, tshark, strace)",
        cmd_frames,
        frames_arguments,
    ),
)
