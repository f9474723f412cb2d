"""What crosses into a handler, and what leaves it as an error.

Input: handlers receive the request body as plain JSON (``JsonInput``) and validate it with a
pydantic model through ``parse``. Bad input becomes a ``TerminalError`` with a 4xx status that
names the problem: Restate does not retry it, and nothing touches the database. (The SDK's own
input decoding turns any failure into a 500, which reads as the service's fault.)

Database errors are classified by ``database_errors``: what a retry can fix (lost connection,
serialization failure, deadlock, lock timeout, server shutting down) is re-raised so Restate
retries; what no retry can fix (a constraint the input violates, a value out of range) becomes
a ``TerminalError``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from restate import TerminalError
from restate.serde import Serde

# The lab's handlers classify database errors as the library does (re-exported).
from dbpatterns.exactly_once.errors import (
    TERMINAL_SQLSTATE_CLASSES as TERMINAL_SQLSTATE_CLASSES,
)
from dbpatterns.exactly_once.errors import database_errors as database_errors

M = TypeVar("M", bound=BaseModel)

MAX_USER_ID_LENGTH = 64
MAX_TEXT_LENGTH = 256
MAX_CREDIT_DELTA = 1_000_000
MAX_CREDITS = 1_000_000_000_000

#: A user id: 1-64 characters of letters, digits and ``_ . : -``.
UserId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_USER_ID_LENGTH, pattern=r"^[A-Za-z0-9_.:\-]+$"),
]
#: Free text (names, addresses): any printable characters, quotes included, no NUL.
Text = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_TEXT_LENGTH, pattern=r"^[^\x00-\x1f\x7f]+$"),
]
#: Credits to add in one call: a whole number from 1 to 1,000,000.
CreditDelta = Annotated[int, Field(strict=True, ge=1, le=MAX_CREDIT_DELTA)]
#: A credit balance.
Credits = Annotated[int, Field(strict=True, ge=0, le=MAX_CREDITS)]


class Model(BaseModel):
    """Request models: unknown fields and type coercion are refused."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)


class _Malformed:
    def __init__(self, reason: str) -> None:
        self.reason = reason


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Two readers must not disagree about a request: ``{"a": 1, "a": 2}`` is refused."""
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"the key {key!r} appears more than once")
        obj[key] = value
    return obj


class JsonInput(Serde[Any]):
    """Decodes the body as JSON (UTF-8, RFC 8259), leaving any failure for ``parse`` to report
    as a 400: bytes that are not UTF-8, a BOM, a duplicate key, nesting deeper than Python's
    recursion limit."""

    def deserialize(self, buf: bytes) -> Any:
        if not buf:
            return _Malformed("the request body is empty; send JSON")
        try:
            return json.loads(buf.decode("utf-8"), object_pairs_hook=_refuse_duplicate_keys)
        except UnicodeDecodeError as exc:
            return _Malformed(f"the request body is not UTF-8 ({exc})")
        except RecursionError:
            return _Malformed("the request body is nested too deeply")
        except ValueError as exc:
            return _Malformed(f"the request body is not valid JSON ({exc})")

    def serialize(self, obj: Any) -> bytes:
        return json.dumps(obj).encode()


JSON_INPUT = JsonInput()


def bad_request(message: str, status_code: int = 400) -> TerminalError:
    return TerminalError(message, status_code=status_code)


def parse(model: type[M], payload: Any) -> M:
    """Validate a request body against ``model``; a TerminalError 400 names what is wrong."""
    if isinstance(payload, _Malformed):
        raise bad_request(payload.reason)
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise bad_request(f"invalid request for {model.__name__}: {_describe(exc)}") from None


def parse_value(model: type[M], payload: Any) -> M:
    """For handlers whose body is a bare value (``"A"``, ``5``): validated as ``{"value": ...}``."""
    if isinstance(payload, _Malformed):
        raise bad_request(payload.reason)
    return parse(model, {"value": payload})


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(p) for p in error["loc"]) or "body"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)
