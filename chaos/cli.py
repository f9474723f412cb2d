"""``./lab chaos``: run the chaos table against a stack of its own, print it, file it.

Profiles:

* ``quick`` (a few minutes): every cell of the table once (kill and zombie at every failpoint,
  the negative controls, restate-server / Postgres restarts and terminated sessions for every
  credit handler), then a random-kill storm of ``--operations`` operations (200 by default).
* ``soak``: rounds of ``--operations`` operations (500 by default) under random faults of every
  kind, until ``--duration`` (10m by default) has passed.

The stack (Postgres, restate-server, two service processes, a proxy) runs on free ports in a
temporary folder and is removed afterwards (``--keep`` keeps it, with its logs). Exit status 0
when every cell passed.
"""

from __future__ import annotations

import argparse
import fnmatch
import logging
import re
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from chaos import report
from chaos.cells import Cell
from chaos.cluster_cells import cluster_cells, cluster_load_cells
from chaos.lab_cells import mixed_storm_cell
from chaos.provoke import ZombieCut
from chaos.runner import CellRunner
from chaos.stack import (
    CHAOS_CLUSTER_RESTATE_ENV,
    CHAOS_RESTATE_ENV,
    CHAOS_TOKEN_TTL,
    SOAK_TOKEN_TTL,
    ChaosStack,
)
from chaos.table import quick_cells
from chaos.verdict import CellResult
from chaos.workload import Operation, Resolver
from dbpatterns.config import PROJECT_ROOT
from dbpatterns.stack import LabError
from dbpatterns.stack.provenance import provenance

DEFAULT_REPORT_DIR = PROJECT_ROOT / "chaos" / "results"


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``10m``, ``1h`` -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"bad duration {text!r}: use e.g. 90s, 10m or 1h")
    return float(m[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[m[2]]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="./lab chaos",
        description="Run the chaos table: faults at every failpoint, checked against the ledger.",
    )
    parser.add_argument(
        "--profile",
        choices=["quick", "soak", "cluster"],
        default="quick",
        help="quick: every cell once; soak: random faults for --duration; cluster: a node of a "
        "three-node Restate cluster fails (killed, paused, cut off) under every exactly-once "
        "pattern, and under a steady load",
    )
    parser.add_argument(
        "--nodes",
        type=int,
        choices=[1, 3],
        default=None,
        help="restate-server nodes: 1, or a cluster of 3 (the cluster profile's; with soak, "
        "node kills, pauses and partitions join the random faults)",
    )
    parser.add_argument(
        "--duration",
        type=parse_duration,
        default=None,
        help="soak: how long to keep going (e.g. 30m; default 10m)",
    )
    parser.add_argument(
        "--operations",
        type=int,
        default=None,
        help="quick: operations in the kill storm (default 200); soak: per round (default 500)",
    )
    parser.add_argument(
        "--cells",
        action="append",
        default=[],
        metavar="PATTERN",
        help="only cells whose id matches (glob or substring, e.g. 'keyed.update@*' or 'zombie');"
        " repeatable. `--list` shows the ids",
    )
    parser.add_argument("--list", action="store_true", help="list the cells and exit")
    parser.add_argument("--report-dir", type=Path, default=DEFAULT_REPORT_DIR)
    parser.add_argument("--seed", type=int, default=None, help="seed of the random faults")
    parser.add_argument(
        "--zombie-cut",
        choices=[z.value for z in ZombieCut],
        default=ZombieCut.RESTATE_TIMEOUT.value,
        help="zombie cells: let Restate give up on the paused attempt by its own timeouts "
        "(default, ~8 s a cell) or cut it off at once",
    )
    parser.add_argument("--keep", action="store_true", help="keep the stack's folder and logs")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every fault")
    return parser


def matches(cell: Cell, patterns: Sequence[str]) -> bool:
    if not patterns:
        return True
    return any(
        fnmatch.fnmatchcase(cell.id, p if any(ch in p for ch in "*?[") else f"*{p}*")
        for p in patterns
    )


def say(line: str) -> None:
    print(line, flush=True)


def progress_of(total: int) -> Resolver.Progress:
    step = max(25, total // 10)

    def on_resolved(done: int, op: Operation) -> None:
        if done % step == 0 or done == total:
            say(f"        {done}/{total} operations resolved")

    return on_resolved


def run_cells(runner: CellRunner, resolver: Resolver, cells: list[Cell], run: report.Run) -> None:
    for number, cell in enumerate(cells, 1):
        say(f"[{number:>3}/{len(cells)}] {cell.id}: expecting {cell.expect} ...")
        resolver.progress = progress_of(cell.operations) if cell.operations > 20 else None
        result = runner.run(cell)
        run.results.append(result)
        say(_line(result))


def _line(result: CellResult) -> str:
    verdict = "PASS" if result.passed else "FAIL"
    text = (
        f"        {verdict} observed {result.outcome} in {result.seconds:.1f} s "
        f"({result.ledger.operations} ops, {result.faults.events()} fault events, "
        f"{result.ledger.duplicates} dup, {result.ledger.lost_updates} lost)"
    )
    if result.problems:
        text += "\n        " + "; ".join(result.problems)
    return text


def main(argv: list[str] | None = None) -> int:
    """the fault-injection suite (`./lab chaos --help`)

    ``./lab chaos``: the lab's CLI runs this as a command that lives outside its package (the
    line ``chaos = "chaos.cli:main"`` of ``[tool.dbpatterns.commands]`` in ``pyproject.toml``),
    with every argument after ``chaos``; the first line above is the command's help line there.
    Exit status 0 when every cell passed, 1 when one failed, 2 when the stack did not start or no
    cell matched.
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.verbose else logging.ERROR,
        format="%(asctime)s %(name)s %(message)s",
    )
    if args.profile in ("quick", "cluster"):
        table = (
            quick_cells(args.operations or 200)
            if args.profile == "quick"
            else [*cluster_cells(args.operations or 4), *cluster_load_cells()]
        )
        cells = [c for c in table if matches(c, args.cells)]
        if args.list:
            for cell in cells:
                say(f"{cell.id}  (expect {cell.expect})")
            return 0
        if not cells:
            say(f"no cell matches {args.cells}; `./lab chaos --list` shows them")
            return 2
    duration = args.duration if args.duration is not None else 600.0
    # Calls of the cluster profile live through a failover (tens of seconds): the short TTL of
    # the quick profile's token-expiry control would expire their tokens under them.
    token_ttl = CHAOS_TOKEN_TTL if args.profile == "quick" else SOAK_TOKEN_TTL
    nodes = args.nodes or (3 if args.profile == "cluster" else 1)
    run = report.Run(
        args.profile,
        settings={
            "restate": CHAOS_CLUSTER_RESTATE_ENV if nodes > 1 else CHAOS_RESTATE_ENV,
            "restate_nodes": nodes,
            "idempotency_token_ttl_s": token_ttl.total_seconds(),
            "seed": args.seed,
            "zombie_cut": args.zombie_cut,
            "cells": args.cells,
            "operations": args.operations,
            "duration_s": duration if args.profile == "soak" else None,
        },
    )
    say("chaos: starting postgres, restate-server, two service processes and a proxy ...")
    try:
        stack = ChaosStack.create(token_ttl, nodes=nodes)
        stack.start()
    except LabError as exc:
        say(f"chaos: the stack did not start: {exc}")
        return 2
    say(f"chaos: stack up in {stack.home}")
    run.settings["produced_by"] = provenance(stack.settings, stack.database_url)
    resolver = Resolver(stack.ingress_urls)
    runner = CellRunner(stack, resolver, seed=args.seed, zombie_cut=ZombieCut(args.zombie_cut))
    try:
        if args.profile in ("quick", "cluster"):
            run_cells(runner, resolver, cells, run)
        else:
            ends = time.monotonic() + duration
            rounds = 0
            while time.monotonic() < ends:
                rounds += 1
                cell = mixed_storm_cell(args.operations or 500)
                say(f"[soak round {rounds}] {time.monotonic() - ends + duration:.0f} s in")
                run_cells(runner, resolver, [cell], run)
    except KeyboardInterrupt:
        say("chaos: interrupted; reporting the cells that finished")
    finally:
        resolver.close()
        stack.stop(remove=not args.keep)
        if args.keep:
            say(f"chaos: stack folder kept: {stack.home}")
        elif stack.home.exists():
            shutil.rmtree(stack.home, ignore_errors=True)
    say("")
    say(report.table(run))
    json_path, md_path, png_path = report.write(run, args.report_dir)
    say(f"\nreport: {json_path}\n        {md_path}\n        {png_path}")
    return 0 if run.passed else 1


if __name__ == "__main__":
    sys.exit(main())
