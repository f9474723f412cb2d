"""The test kit: prove your own service exactly once, under the faults that break it, in pytest.

It starts a real PostgreSQL and a real restate-server (local processes, or containers when a
Docker engine answers), serves your ASGI app in processes of its own and registers it, and hands
each test ``kit_service`` and ``kit_db`` (``dbpatterns.testing.plugin``). A test then

1. arms a fault at one of the library's fault points (``kit_service.arm(point, action)``):
   ``raise`` a transient error, ``kill`` the process, ``freeze`` it (a zombie, let go with
   ``Zombie.release`` once the retry has answered), or ``hold`` it there while the test cancels
   or kills the invocation;
2. calls the service with idempotency keys (``kit_service.call``), each call resolved to a
   definite answer;
3. asserts the fault struck (``kit_service.struck``, ``deaths``, ``Zombie.ran_sql``: from
   Postgres's own log, ``cancellation_reached``), then
4. judges every operation on its own (``judge_rows``): one row per operation says how many
   times it was applied; acknowledged must mean once, failed must mean never.

The points of each pattern are listed by the library (``POINTS`` in
``dbpatterns.exactly_once.idempotent``, ``prepared``, ``versioned``) and named
``<service>.<handler>.<point>`` here. Install with the ``testing`` extra.
"""

from dbpatterns.testing.control import Action, Struck
from dbpatterns.testing.processes import KitError, wait_until
from dbpatterns.testing.service import ServedApp, Zombie
from dbpatterns.testing.verdict import (
    Operation,
    Outcome,
    Verdict,
    judge,
    judge_rows,
    read_applied,
)

__all__ = [
    "Action",
    "KitError",
    "Operation",
    "Outcome",
    "ServedApp",
    "Struck",
    "Verdict",
    "Zombie",
    "judge",
    "judge_rows",
    "read_applied",
    "wait_until",
]
