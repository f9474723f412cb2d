"""The benchmark's machinery, on a short run against the test stack (figures are not checked:
they belong to `dbpatterns bench` on a quiet machine, not to a timed test)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dbpatterns.config import Settings
from dbpatterns.measure import bench, bench_counters, bench_report, wrkload
from dbpatterns.stack import STATE_FILE_NAME, ServiceProcess, Stack
from tests.conftest import DatabaseEndpoint, RestateEndpoints


def test_a_short_benchmark_counts_every_operation_and_finds_the_ledger_exact(
    backend: str,
    settings: Settings,
    service: ServiceProcess,
    restate_server: RestateEndpoints,
    postgres: DatabaseEndpoint,
    tmp_path: Path,
) -> None:
    pids = {"service": service.process.pid} if service.process else {}
    if restate_server.server and restate_server.server.process:
        pids["restate"] = restate_server.server.process.pid
    if postgres.server and postgres.server.process:
        pids["postgres"] = postgres.server.process.pid
    names = ("direct", "baseline.noop", "keyed.updateConditional", "twoPhaseCommit.update")
    chosen = [w for w in bench.WORKLOADS if w.name in names]
    results = bench.benchmark(
        settings,
        concurrencies=[4],
        duration=1.0,
        workloads=chosen,
        distributions=["spread"],
        pids=pids,
        say=lambda _: None,
    )
    by_name = {r.workload: r for r in results}
    assert set(by_name) == set(names)
    for r in results:
        assert r.ops > 0
        assert r.errors == 0, r.error_samples
        assert r.ledger_exact
        assert r.p50_ms <= r.p99_ms <= r.max_ms
    assert by_name["baseline.noop"].vs_noop == 1.0
    assert by_name["direct"].load == "python"
    assert by_name["keyed.updateConditional"].load == "wrk"
    # Counted from transaction ids: the no-op writes nothing; a conditional update commits
    # one write (its read is not a write transaction); 2PC's prepared transaction is one.
    assert by_name["baseline.noop"].db_write_transactions_per_op == 0
    assert 0.95 <= by_name["keyed.updateConditional"].db_write_transactions_per_op <= 1.1
    assert 0.95 <= by_name["twoPhaseCommit.update"].db_write_transactions_per_op <= 1.1
    # Read from the journals of sample calls: the read and the write of updateConditional,
    # 2PC's prepare and commit; the no-op journals no step; direct has no journal.
    assert by_name["keyed.updateConditional"].durable_steps_per_op == 2
    assert by_name["twoPhaseCommit.update"].durable_steps_per_op == 2
    assert by_name["baseline.noop"].durable_steps_per_op == 0
    assert by_name["direct"].durable_steps_per_op is None
    if backend != "external":  # the lab's own servers preload pg_stat_statements
        # One SELECT (journaled read) and one UPDATE (conditional write) per call, in autocommit;
        # the janitor's periodic query may add a few over the run.
        conditional = by_name["keyed.updateConditional"].db_statements_per_op
        noop = by_name["baseline.noop"].db_statements_per_op
        assert conditional is not None
        assert 1.95 <= conditional <= 2.2
        assert noop is not None
        assert noop < 0.1
        # Is there a leftover? BEGIN, UPDATE, the result row, PREPARE TRANSACTION; is it ours?
        # COMMIT PREPARED.
        two_phase = by_name["twoPhaseCommit.update"].db_statements_per_op
        assert two_phase is not None
        assert 6.95 <= two_phase <= 7.3
    elif not bench_counters.StatementCounter(settings.libpq_url).available:
        assert all(r.db_statements_per_op is None for r in results)
    assert by_name["keyed.updateConditional"].cpu_ms_per_op.get("service", 0) > 0
    assert by_name["keyed.updateConditional"].cpu_ms_per_op["load"] > 0  # wrk's own CPU
    assert "load" not in by_name["direct"].cpu_ms_per_op  # its load process is its service
    # `direct` has no service process: the load process runs the pool code and counts itself
    # and its own Postgres backends, which may end before the meter's last sample.
    assert by_name["direct"].cpu_ms_per_op["service"] > 0
    if "postgres" in pids:
        assert by_name["direct"].cpu_ms_per_op["postgres"] > 0

    path = bench_report.write_results(results, tmp_path, {"test": True})
    saved = json.loads(path.read_text())
    assert len(saved["results"]) == len(names)
    assert (tmp_path / "bench.png").stat().st_size > 1000
    assert "`keyed.updateConditional`" in (tmp_path / "bench.md").read_text()


def test_the_cpu_of_every_node_of_a_cluster_counts_as_restate_servers(tmp_path: Path) -> None:
    pids_by_part: dict[str, int | None] = {
        "postgres": 11,
        "restate-n1": 21,
        "restate-n2": 22,
        "restate-n3": None,  # killed: nothing to measure
        "service": 31,
    }
    state = Stack(Settings(home=tmp_path, restate_nodes=3)).describe()
    parts = {
        name: part.model_copy(update={"pid": pids_by_part[name]})
        for name, part in state.parts.items()
    }
    state.model_copy(update={"parts": parts}).write(tmp_path / STATE_FILE_NAME)
    pids = bench.lab_pids(Settings(home=tmp_path))
    assert pids == {"postgres": [11], "restate": [21, 22], "service": [31]}
    meter = bench_counters.CpuMeter(pids)
    assert set(meter.sample()["restate"]) == {21, 22}


def test_the_ledger_allows_each_call_left_in_flight_once_or_not_at_all() -> None:
    acked = {"a": 3, "b": 2}
    assert bench.ledger_holds({"a": 3, "b": 2}, acked, {}, delta=1)
    assert bench.ledger_holds({"a": 4, "b": 2}, acked, {"a": 1}, delta=1)  # in flight, applied
    assert bench.ledger_holds({"a": 3, "b": 2}, acked, {"a": 1}, delta=1)  # in flight, not
    assert not bench.ledger_holds({"a": 5, "b": 2}, acked, {"a": 1}, delta=1)  # applied twice
    assert not bench.ledger_holds({"a": 4, "b": 2}, acked, {"b": 1}, delta=1)  # another user's
    assert not bench.ledger_holds({"a": 3, "b": 1}, acked, {}, delta=1)  # acknowledged, lost
    assert not bench.ledger_holds({"a": 3, "b": 2, "c": 1}, acked, {}, delta=1)  # unasked


def test_wrks_report_is_read_line_by_line_and_an_incomplete_one_is_refused() -> None:
    stdout = "\n".join([
        "Running 10s test @ http://127.0.0.1:8080",  # wrk's own summary, ignored
        "dbpatterns acked bench-0001 3",
        "dbpatterns acked bench-0002 1",
        "dbpatterns acked bench-0001 2",  # the same user from another thread
        "dbpatterns pending bench-0002",
        "dbpatterns sample HTTP 500: boom",
        "dbpatterns ok 6", "dbpatterns failed 1", "dbpatterns socket_errors 0",
        "dbpatterns elapsed_us 10000000",
        "dbpatterns p50_us 12500", "dbpatterns p95_us 20000", "dbpatterns p99_us 31000",
        "dbpatterns max_us 45000",
    ])  # fmt: skip
    out = wrkload.parse(stdout)
    assert out.acked == {"bench-0001": 5, "bench-0002": 1}
    assert out.pending == {"bench-0002": 1}
    assert (out.ok, out.failed, out.elapsed) == (6, 1, 10.0)
    assert (out.p50_ms, out.p99_ms, out.max_ms) == (12.5, 31.0, 45.0)
    assert out.error_samples == ["HTTP 500: boom"]
    with pytest.raises(wrkload.WrkError, match="lacks"):
        wrkload.parse("Running 10s test\ndbpatterns ok 3\n")
