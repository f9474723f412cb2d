"""Request and response bodies of the pattern handlers, as JSON sees them (camelCase).

Python code uses snake_case attributes (``req.user_id``); on the wire only the camelCase names
are accepted (``{"userId": ...}``) and produced. Requests refuse unknown fields and type
coercion (see ``boundary.Model``), so ``"5"`` or ``true`` is never read as a number of credits.
"""

from __future__ import annotations

from pydantic import ConfigDict
from pydantic.alias_generators import to_camel

from dbpatterns.service.boundary import CreditDelta, Credits, Model, Text, UserId


class Request(Model):
    """A request body: camelCase names only (``{"user_id": ...}`` is an unknown field).

    To build one in Python, validate its JSON form: ``UpdateCredits.model_validate({"userId":
    "A", "addCredits": 5})``; a handler's input serde sends plain JSON, so pass that dict.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=False,
        validate_by_alias=True,
        serialize_by_alias=True,
    )


class Response(Model):
    """A response body: built in Python by attribute name, sent as camelCase JSON."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )


# --- requests ----------------------------------------------------------------------------------


class UserKey(Request):
    """A bare user id as the body: ``"A"``."""

    value: UserId


class CreditsToAdd(Request):
    """A bare number of credits to add as the body: ``5``."""

    value: CreditDelta


class NewUser(Request):
    """``{"userId", "name", "address", "credits"}``"""

    user_id: UserId
    name: Text
    address: Text
    credits: Credits


class Rename(Request):
    """``{"userId", "newName"}``"""

    user_id: UserId
    new_name: Text


class UpdateCredits(Request):
    """``{"userId", "addCredits"}``: add credits to one user."""

    user_id: UserId
    add_credits: CreditDelta


# --- responses ---------------------------------------------------------------------------------


class User(Response):
    """A row of ``users``."""

    user_id: str
    name: str
    address: str
    credits: int
    version: int


class Balance(Response):
    """A user's credits and the row's version (its count of credit writes)."""

    credits: int
    version: int


class MarkedBalance(Response):
    """A user's credits and version as ``keyed.updateConditional`` reads and writes them, with
    the mark of the call that last wrote them that way (``written_by``)."""

    credits: int
    version: int
    written_by: str | None = None


class Inserted(Response):
    inserted: bool


class Updated(Response):
    updated: bool


class Applied(Response):
    """``credits``: the balance the update left, as committed; ``token``: the row of
    ``user_idempotency`` that records the update until it expires."""

    credits: int
    token: str
