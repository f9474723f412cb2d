"""A request that does not fit a handler's input is the caller's mistake, and is answered so.

Guarantee: in a service created with ``invocation_context_managers=[input_errors]``, a request
body that is not JSON, or does not validate against the handler's input type (a pydantic
model, or any type the SDK decodes), ends the call with a terminal HTTP 400 whose message names
each field and what is wrong with it. The handler does not run, so nothing is written, and
Restate does not retry.

Why: restate-sdk 1.3 decodes the input before it calls the handler, and turns any failure into
a ``TerminalError`` with status 500 (``Unable to parse an input argument. `` and pydantic's
report, links included): terminal, but it reads as the service's fault, and a client or a
calling service that retries on 5xx sends the same body again. The SDK decodes inside the
service's invocation context managers, so one of them can replace that error: ``input_errors``
replaces it, and nothing else (a 500 with the SDK's message, raised from the decoding error).

Left open: restate-sdk 1.3 does not decode an empty body at all. The handler gets ``None`` (a
pydantic input included), and one that reads a field of it fails with an ``AttributeError``,
which Restate retries. A handler that may get no body should say what it does with ``None``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from pydantic import ValidationError
from restate import TerminalError

#: How restate-sdk 1.3 opens the message of an input it could not decode (restate/handler.py).
SDK_DECODING_FAILED = "Unable to parse an input argument."


@asynccontextmanager
async def input_errors() -> AsyncIterator[None]:
    """An invocation context manager: the SDK's 500 for an input it could not decode becomes
    a terminal 400 that says what is wrong with it; every other error passes unchanged."""
    try:
        yield
    except TerminalError as exc:
        cause = exc.__cause__
        if (
            exc.status_code != 500
            or cause is None
            or not exc.message.startswith(SDK_DECODING_FAILED)
        ):
            raise
        raise TerminalError(describe(cause), status_code=400) from cause


def describe(error: BaseException) -> str:
    """What is wrong with a request body, field by field for a pydantic model."""
    if not isinstance(error, ValidationError):
        return f"the request body cannot be read: {error}"
    problems = []
    for problem in error.errors(include_url=False):
        where = ".".join(str(part) for part in problem["loc"]) or "body"
        problems.append(f"{where}: {problem['msg']}")
    return f"invalid request for {error.title}: {'; '.join(problems)}"
