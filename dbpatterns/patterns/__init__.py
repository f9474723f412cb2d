"""One module per Restate service, each opening with the guarantee it gives.

Conventions shared by the modules: a durable step's label says what it does ("read credits,
version"), and its result type is named in ``RunOptions(type_hint=...)``, which picks the
journal's serializer; left out, the SDK evaluates the action's signature on every call.
"""

from __future__ import annotations

from typing import Any

from dbpatterns.patterns.baseline import baseline
from dbpatterns.patterns.idempotency import idempotency
from dbpatterns.patterns.keyed import keyed
from dbpatterns.patterns.simple import simple
from dbpatterns.patterns.two_phase_commit import two_phase_commit

SERVICES: list[Any] = [simple, keyed, idempotency, two_phase_commit, baseline]
