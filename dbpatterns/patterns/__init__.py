"""One module per Restate service of the lab, each opening with the guarantee it gives; and
the list of every service the lab's app serves, the examples built on the library included.

Conventions shared by the modules: a durable step's label says what it does ("read credits,
version"), and its result type is named in ``RunOptions(type_hint=...)``, which picks the
journal's serializer; left out, the SDK evaluates the action's signature on every call.
"""

from __future__ import annotations

from typing import Any

from dbpatterns.exactly_once import idempotent, prepared, versioned
from dbpatterns.examples import invoices, shapes
from dbpatterns.patterns.baseline import baseline
from dbpatterns.patterns.idempotency import idempotency
from dbpatterns.patterns.keyed import keyed
from dbpatterns.patterns.simple import simple
from dbpatterns.patterns.two_phase_commit import two_phase_commit
from dbpatterns.service import failpoints

# The example services know nothing of failpoints; the lab catalogues the library's points as
# their handlers reach them, so the chaos suite can switch them on.
failpoints.declare_library_points("invoices.pay", idempotent.POINTS)
failpoints.declare_library_points("invoices.payTwoPhase", prepared.POINTS)
failpoints.declare_library_points("invoice.pay", versioned.POINTS)
for handler in (
    "depositTwice",
    "depositTogether",
    "depositNothing",
    "depositSerializable",
    "depositBounded",
):
    failpoints.declare_library_points(f"shapes.{handler}", idempotent.POINTS)
for handler in ("prepareTwice", "prepareTogether", "prepareMaybe"):
    failpoints.declare_library_points(f"shapes.{handler}", prepared.POINTS)
failpoints.declare_library_points("shapesBrief.deposit", idempotent.POINTS)
for handler in ("deposit", "depositUnchecked"):
    failpoints.declare_library_points(f"shapesAccount.{handler}", versioned.POINTS)

SERVICES: list[Any] = [
    simple,
    keyed,
    idempotency,
    two_phase_commit,
    baseline,
    invoices.invoices,
    invoices.invoice,
    shapes.shapes,
    shapes.shapes_brief,
    shapes.account,
]
