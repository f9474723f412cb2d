"""Operations with known effects, each resolved to acknowledged or failed, never left unknown.

An operation adds a known number of credits to one user through one of the credit handlers,
with an idempotency key of its own (header ``idempotency-key``). Under faults a request can end
ambiguously: a timeout, a reset connection, restate-server gone. The resolver then asks Restate
again with the same key: Restate returns the first invocation's result (or attaches to it while
it still runs), and never starts a second invocation for the key. So every operation ends
*acknowledged* (its credits must be there exactly once) or *failed* (a definite error answer:
its credits must not be there); *unknown* remains only if Restate stays unreachable past the
deadline, and the checker reports that as a failure of the run.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import psycopg

from chaos.handlers import USERS, CreditHandler, LedgerTable
from dbpatterns.stack.client import Ingress
from dbpatterns.testing.verdict import AMBIGUOUS_STATUS, Outcome

#: Every operation on a user adds its own power of ``BASE`` (1, 4, 16, ...): the user's gain,
#: written in base 4, has one digit per operation, which is how many times that operation was
#: applied (0 to 3). See ``chaos.checker``.
BASE = 4
#: 4**9 = 262,144 is the largest power within the handlers' limit of 1,000,000 per call.
MAX_OPS_PER_USER = 10


@dataclass
class Operation:
    handler: CreditHandler
    user_id: str
    digit: int  # its position in the user's base-4 gain: it adds BASE**digit credits
    idempotency_key: str = field(default_factory=lambda: f"chaos-{uuid.uuid4()}")
    outcome: Outcome = Outcome.PENDING
    requests: int = 0  # how many times it was sent (1 + the re-asks)
    status: int | None = None
    answer: str = ""
    invocation_id: str | None = None
    #: Wall-clock seconds: first sent, and resolved (``time.time()``, as the fault events).
    sent_at: float | None = None
    resolved_at: float | None = None
    #: The ingress each request went to (several in a cluster: a re-ask goes to the next one).
    via: list[str] = field(default_factory=list)

    @property
    def delta(self) -> int:
        return int(BASE**self.digit)

    @property
    def latency(self) -> float | None:
        """Seconds from the first send to the definite answer."""
        if self.sent_at is None or self.resolved_at is None:
            return None
        return self.resolved_at - self.sent_at


@dataclass
class User:
    """A user of one cell, created for it; its operations each take the next digit."""

    user_id: str
    initial_credits: int
    initial_version: int = 0
    operations: list[Operation] = field(default_factory=list)
    ledger: LedgerTable = USERS

    def operation(self, handler: CreditHandler) -> Operation:
        """A new operation on this user through ``handler``, adding the next power of 4."""
        if handler.ledger is not self.ledger:
            raise ValueError(
                f"{handler.name} writes {handler.ledger.table}, not {self.ledger.table}"
            )
        digit = len(self.operations)
        if digit >= MAX_OPS_PER_USER:
            raise ValueError(
                f"user {self.user_id} already has {digit} operations: a user holds at most "
                f"{MAX_OPS_PER_USER} (one base-{BASE} digit each, within the handlers' limit)"
            )
        op = Operation(handler, self.user_id, digit)
        self.operations.append(op)
        return op


def create_users(
    database_url: str, count: int, *, initial_credits: int = 1000, ledger: LedgerTable = USERS
) -> list[User]:
    """Fresh rows of their own for one scenario (users, or invoices), inserted directly."""
    prefix = "chaos" if ledger is USERS else "chaos-inv"
    users = [
        User(f"{prefix}-{uuid.uuid4().hex[:12]}", initial_credits, ledger=ledger)
        for _ in range(count)
    ]
    with psycopg.connect(database_url, autocommit=True) as conn:
        ledger.create(conn, [u.user_id for u in users], initial_credits)
    return users


#: Threads of a paced load: more calls than this in flight wait for one to end.
PACED_IN_FLIGHT = 256


class Resolver:
    """Sends operations through the ingress and resolves each one to a definite outcome."""

    #: Called after each operation resolves, with how many have resolved in this batch.
    Progress = Callable[[int, Operation], None]

    def __init__(
        self,
        ingress_url: str | Sequence[str],
        *,
        request_timeout: float = 20.0,
        deadline: float = 120.0,
        concurrency: int = 8,
    ) -> None:
        """``ingress_url``: one ingress, or every node's of a cluster: operations take turns
        among them, and a request that ends ambiguously is asked again at the next one."""
        self.ingress_urls = [ingress_url] if isinstance(ingress_url, str) else list(ingress_url)
        self._turn = itertools.count()
        self.request_timeout = request_timeout
        self.deadline = deadline
        self.concurrency = concurrency
        self._local = threading.local()
        self._clients: list[Ingress] = []
        self._clients_lock = threading.Lock()
        self.progress: Resolver.Progress | None = None
        self._resolved = 0

    def close(self) -> None:
        with self._clients_lock:
            for client in self._clients:
                client.close()
            self._clients.clear()

    def _client(self, url: str) -> Ingress:
        clients: dict[str, Ingress] | None = getattr(self._local, "clients", None)
        if clients is None:
            clients = self._local.clients = {}
        client = clients.get(url)
        if client is None:
            client = clients[url] = Ingress(url, timeout=self.request_timeout)
            with self._clients_lock:
                self._clients.append(client)
        return client

    def run(self, op: Operation) -> Operation:
        """Send ``op`` until Restate gives a definite answer for its idempotency key."""
        try:
            return self._run(op)
        finally:
            op.resolved_at = time.time()

    def _run(self, op: Operation) -> Operation:
        key, body = op.handler.request(op.user_id, op.delta)
        give_up = time.monotonic() + self.deadline
        pause = 0.1
        turn = next(self._turn)
        op.sent_at = time.time()
        while True:
            url = self.ingress_urls[(turn + op.requests) % len(self.ingress_urls)]
            op.via.append(url)
            op.requests += 1
            try:
                response = self._client(url).call(
                    op.handler.service,
                    op.handler.handler,
                    body,
                    key=key,
                    idempotency_key=op.idempotency_key,
                )
            except httpx.HTTPError as exc:
                op.answer = f"{type(exc).__name__}: {exc}"
            else:
                op.status = response.status_code
                op.answer = response.text[:300]
                op.invocation_id = response.headers.get("x-restate-id", op.invocation_id)
                if response.status_code == 200:
                    op.outcome = Outcome.ACKNOWLEDGED
                    return op
                if response.status_code not in AMBIGUOUS_STATUS:
                    op.outcome = Outcome.FAILED
                    return op
            if time.monotonic() >= give_up:
                op.outcome = Outcome.UNKNOWN
                return op
            time.sleep(pause)
            pause = min(pause * 2, 1.0)

    def run_all(self, ops: Iterable[Operation], rate: float | None = None) -> list[Operation]:
        """Run ``ops`` with up to ``concurrency`` in flight; returns them resolved.

        ``rate`` (operations per second): send them at that pace instead, however many are in
        flight (an open load, as users send: a stalled call does not hold the next ones back,
        up to ``PACED_IN_FLIGHT``)."""
        ops = list(ops)
        self._resolved = 0
        if rate is None:
            with ThreadPoolExecutor(self.concurrency, thread_name_prefix="chaos-op") as pool:
                list(pool.map(self._run_and_report, ops))
            return ops
        with ThreadPoolExecutor(PACED_IN_FLIGHT, thread_name_prefix="chaos-paced") as pool:
            start = time.monotonic()
            for i, op in enumerate(ops):
                time.sleep(max(0.0, start + i / rate - time.monotonic()))
                pool.submit(self._run_and_report, op)
        return ops

    def _run_and_report(self, op: Operation) -> Operation:
        self.run(op)
        with self._clients_lock:
            self._resolved += 1
            done = self._resolved
        if self.progress is not None:
            self.progress(done, op)
        return op

    def start(self, ops: Iterable[Operation], rate: float | None = None) -> Running:
        """Run ``ops`` in the background (at ``rate`` per second, if given);
        ``Running.wait()`` returns them resolved."""
        return Running(self, list(ops), rate)


class Running:
    """Operations in flight in a background thread."""

    def __init__(self, resolver: Resolver, ops: list[Operation], rate: float | None = None) -> None:
        self.ops = ops
        self._thread = threading.Thread(
            target=resolver.run_all, args=(ops, rate), name="chaos-workload", daemon=True
        )
        self._thread.start()

    def done(self) -> bool:
        return not self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> list[Operation]:
        self._thread.join(timeout)
        return self.ops
