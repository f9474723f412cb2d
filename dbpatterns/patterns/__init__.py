"""One module per Restate service, each opening with the guarantee it gives."""

from __future__ import annotations

from typing import Any

from dbpatterns.patterns.baseline import baseline
from dbpatterns.patterns.idempotency import idempotency
from dbpatterns.patterns.keyed import keyed
from dbpatterns.patterns.simple import simple
from dbpatterns.patterns.two_phase_commit import two_phase_commit

SERVICES: list[Any] = [simple, keyed, idempotency, two_phase_commit, baseline]
