"""Operations with known effects, each resolved to acknowledged or failed, never left unknown.

An operation adds a known number of credits to one user through one of the credit handlers,
with an idempotency key of its own (header ``idempotency-key``). Under faults a request can end
ambiguously: a timeout, a reset connection, restate-server gone. The workload then asks Restate
again with the same key: Restate returns the first invocation's result (or attaches to it while
it still runs), and never starts a second invocation for the key. So every operation ends
*acknowledged* (its credits must be there exactly once) or *failed* (a definite error answer:
its credits must not be there); *unknown* remains only if Restate stays unreachable past the
deadline, and the checker reports that as a failure of the run.
"""

from __future__ import annotations

import enum
import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg

from dbpatterns.stack.client import Ingress

#: Answers that say "not now" rather than anything about the invocation: ask again.
AMBIGUOUS_STATUS = {502, 503, 504}


@dataclass(frozen=True)
class Ledger:
    """The table a handler adds to: one row per user of a cell, with the running total
    (``amount``) and its count of writes (``version``); and, where the handler logs each write
    in the same transaction, that log (``log``: table, key column, amount column)."""

    table: str
    key: str
    amount: str
    version: str = "version"
    log: tuple[str, str, str] | None = None

    def create(self, conn: psycopg.Connection[Any], keys: list[str], initial: int) -> None:
        with conn.cursor() as cur:
            if self.table == "users":
                cur.executemany(
                    "INSERT INTO users (userid, name, address, credits) VALUES (%s, %s, %s, %s)",
                    [(k, "Chaos User", "1 Fault Line", initial) for k in keys],
                )
            elif self.table == "invoices":  # an invoice, due far more than any cell pays
                cur.executemany(
                    "INSERT INTO invoices (invoice_id, amount_due, paid) VALUES (%s, %s, %s)",
                    [(k, 10**12, initial) for k in keys],
                )
            else:
                cur.executemany(
                    "INSERT INTO shapes_accounts (account_id, balance) VALUES (%s, %s)",
                    [(k, initial) for k in keys],
                )


#: The lab's services add credits to ``users``.
USERS = Ledger("users", "userid", "credits")
#: The example built on the library (``dbpatterns.examples.invoices``) adds payments to
#: ``invoices.paid`` and logs each one in ``invoice_payments``.
INVOICES = Ledger(
    "invoices", "invoice_id", "paid", log=("invoice_payments", "invoice_id", "amount")
)
#: The shapes example (``dbpatterns.examples.shapes``) deposits into ``shapes_accounts.balance``
#: and logs each deposit in ``shapes_entries``.
SHAPES = Ledger(
    "shapes_accounts", "account_id", "balance", log=("shapes_entries", "account_id", "amount")
)


@dataclass(frozen=True)
class CreditHandler:
    """A handler that adds an amount to a row, and how to call it. ``name`` prefixes its
    failpoints."""

    name: str
    service: str
    handler: str
    keyed: bool  # a virtual object keyed by the row's id, with the bare amount as body
    exactly_once: bool  # what the pattern promises under crashes and zombies
    ledger: Ledger = USERS
    #: The body's two fields: the row's id and the amount to add.
    fields: tuple[str, str] = ("userId", "addCredits")
    #: How many times one operation adds its amount: 2 for a handler that makes two calls of a
    #: pattern in one invocation (each adds the amount, each counts one write).
    applications: int = 1

    def request(self, user_id: str, delta: int) -> tuple[str | None, Any]:
        """(object key, body) of a call adding ``delta`` to ``user_id``'s row."""
        if self.keyed:
            return user_id, delta
        return None, {self.fields[0]: user_id, self.fields[1]: delta}

    def curl(self, user_id: str, delta: int, ingress: str = "http://localhost:8080") -> str:
        key, body = self.request(user_id, delta)
        path = Ingress.path(self.service, self.handler, key)
        data = json.dumps(body)
        return (
            f"curl -s {ingress}{path} -H 'content-type: application/json' "
            f"-H 'idempotency-key: chaos-1' -d '{data}'"
        )


KEYED_UPDATE = CreditHandler("keyed.update", "keyed", "update", keyed=True, exactly_once=False)
KEYED_UPDATE_CONDITIONAL = CreditHandler(
    "keyed.updateConditional", "keyed", "updateConditional", keyed=True, exactly_once=True
)
IDEMPOTENCY_UPDATE = CreditHandler(
    "idempotency.update", "idempotency", "update", keyed=False, exactly_once=True
)
TWO_PHASE_COMMIT_UPDATE = CreditHandler(
    "twoPhaseCommit.update", "twoPhaseCommit", "update", keyed=False, exactly_once=True
)
# The example service's handlers, one per library pattern.
INVOICES_PAY = CreditHandler(
    "invoices.pay", "invoices", "pay", False, True, INVOICES, ("invoiceId", "amount")
)
INVOICES_PAY_TWO_PHASE = CreditHandler(
    "invoices.payTwoPhase",
    "invoices",
    "payTwoPhase",
    False,
    True,
    INVOICES,
    ("invoiceId", "amount"),
)
INVOICE_PAY = CreditHandler("invoice.pay", "invoice", "pay", True, True, INVOICES)
EXAMPLE_HANDLERS = [INVOICES_PAY, INVOICES_PAY_TWO_PHASE, INVOICE_PAY]
#: The lab handler built on the same library pattern as each example handler: the same fault
#: points, the same expectation at each.
SAME_PATTERN_AS = {
    INVOICES_PAY.name: IDEMPOTENCY_UPDATE,
    INVOICES_PAY_TWO_PHASE.name: TWO_PHASE_COMMIT_UPDATE,
    INVOICE_PAY.name: KEYED_UPDATE_CONDITIONAL,
}

# The shapes example's handlers: the library used as users' handlers use it.
_DEPOSIT = ("accountId", "amount")


def _shape(name: str, applications: int = 1, exactly_once: bool = True) -> CreditHandler:
    service, handler = name.split(".")
    keyed = service == "shapesAccount"
    return CreditHandler(
        name, service, handler, keyed, exactly_once, SHAPES, _DEPOSIT, applications
    )


DEPOSIT_TWICE = _shape("shapes.depositTwice", 2)
DEPOSIT_TOGETHER = _shape("shapes.depositTogether", 2)
DEPOSIT_NOTHING = _shape("shapes.depositNothing")
DEPOSIT_SERIALIZABLE = _shape("shapes.depositSerializable")
PREPARE_TWICE = _shape("shapes.prepareTwice", 2)
PREPARE_TOGETHER = _shape("shapes.prepareTogether", 2)
PREPARE_MAYBE = _shape("shapes.prepareMaybe")
BRIEF_DEPOSIT = _shape("shapesBrief.deposit")
ACCOUNT_DEPOSIT = _shape("shapesAccount.deposit")
#: The negative control: a versioned write that forgets its version condition.
ACCOUNT_DEPOSIT_UNCHECKED = _shape("shapesAccount.depositUnchecked", exactly_once=False)
SHAPE_HANDLERS = [
    DEPOSIT_TWICE,
    DEPOSIT_TOGETHER,
    DEPOSIT_NOTHING,
    DEPOSIT_SERIALIZABLE,
    PREPARE_TWICE,
    PREPARE_TOGETHER,
    PREPARE_MAYBE,
    ACCOUNT_DEPOSIT,
]
SAME_PATTERN_AS.update(
    {h.name: IDEMPOTENCY_UPDATE for h in (*SHAPE_HANDLERS[:4], BRIEF_DEPOSIT)}
    | {h.name: TWO_PHASE_COMMIT_UPDATE for h in SHAPE_HANDLERS[4:7]}
    | {h.name: KEYED_UPDATE_CONDITIONAL for h in (ACCOUNT_DEPOSIT, ACCOUNT_DEPOSIT_UNCHECKED)}
)

CREDIT_HANDLERS = [
    KEYED_UPDATE,
    KEYED_UPDATE_CONDITIONAL,
    IDEMPOTENCY_UPDATE,
    TWO_PHASE_COMMIT_UPDATE,
]
EXACTLY_ONCE_HANDLERS = [h for h in CREDIT_HANDLERS if h.exactly_once]


class Outcome(enum.StrEnum):
    PENDING = "pending"
    ACKNOWLEDGED = "acknowledged"  # 200: the credits are in, once
    FAILED = "failed"  # a definite error answer: the credits are not in
    UNKNOWN = "unknown"  # Restate did not answer before the deadline


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
    ledger: Ledger = USERS

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
    database_url: str, count: int, *, initial_credits: int = 1000, ledger: Ledger = USERS
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


class Workload:
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
        self.progress: Workload.Progress | None = None
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

    def __init__(self, workload: Workload, ops: list[Operation], rate: float | None = None) -> None:
        self.ops = ops
        self._thread = threading.Thread(
            target=workload.run_all, args=(ops, rate), name="chaos-workload", daemon=True
        )
        self._thread.start()

    def done(self) -> bool:
        return not self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> list[Operation]:
        self._thread.join(timeout)
        return self.ops
