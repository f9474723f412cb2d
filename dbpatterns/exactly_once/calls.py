"""What the three patterns share: a call's identity, what a call returns, and how its steps retry.

* **Calls take turns.** The calls of an invocation run one at a time (``in_turn``), in the order
  they start: Restate checks every attempt's durable steps, and the order they are awaited in,
  against its journal, so the steps of two calls must not interleave differently on a replay
  than they did the first time. Calls at once (``asyncio.gather`` over them) are therefore safe,
  and run one after the other, in the order ``gather`` started them. (Measured with
  restate-sdk 1.3: two prepared transactions interleaved by ``asyncio.gather`` failed their
  replay after a retry, "'await' could not be replayed", and retried forever.)
* **A call's identity.** Each call of a pattern draws its own id from Restate's deterministic
  random (``ctx.uuid()``, seeded by the invocation) when its turn comes:
  ``<invocation id>:<16 hex digits>``. Every attempt of the invocation draws the same ids in
  the same order, as it takes the same turns; two calls in one invocation get two ids. A gid, a
  token or a writer mark built from one names its invocation, so a janitor can still ask
  Restate about it.
* **What a call returns:** ``Done(result, call_id)``, for all three patterns: the result of the
  work as committed (the same on every attempt, whichever attempt committed it) and the call's
  id (what the database records it under: the token, the gid's suffix, the writer mark). Nothing
  in it depends on where a crash struck.
* **How a step retries:** by Restate's policy for the invocation, unless the caller passes
  ``Retry``: then the durable step gives up after that many attempts or that long, and the call
  ends with a terminal error (its clean-up still runs, see each pattern).
"""

from __future__ import annotations

import asyncio
import logging
import re
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Generic, TypeVar

import restate
from pydantic import BaseModel, TypeAdapter, ValidationError

T = TypeVar("T")

#: A Restate invocation id, e.g. ``inv_1avxCyFBKBEP3hkVfE1YHf3yr6iPwcQ8pd``.
INVOCATION_ID = re.compile(r"inv_[0-9A-Za-z]{16,64}")
#: A call id: the invocation id, a colon, and 16 hex digits drawn from Restate's random.
CALL_ID = re.compile(rf"(?P<invocation>{INVOCATION_ID.pattern}):(?P<draw>[0-9a-f]{{16}})")


#: One lock per handler context: the calls of an invocation's attempt take turns on it.
_turns: weakref.WeakKeyDictionary[object, asyncio.Lock] = weakref.WeakKeyDictionary()


@asynccontextmanager
async def in_turn(ctx: restate.Context | restate.ObjectContext) -> AsyncIterator[None]:
    """Wait for this attempt's other calls of the library to end (first come, first served:
    asyncio's locks wake their waiters in order), then run this one."""
    lock = _turns.get(ctx)
    if lock is None:
        lock = _turns[ctx] = asyncio.Lock()
    async with lock:
        yield


def new_call_id(ctx: restate.Context | restate.ObjectContext) -> str:
    """This call's id: the same on every attempt of the invocation (see the module docstring).

    Draw it when the call's turn has come (``in_turn``), before its first durable step."""
    invocation = ctx.request().id
    if not INVOCATION_ID.fullmatch(invocation):
        raise ValueError(f"not a Restate invocation id: {invocation!r}")
    return f"{invocation}:{ctx.uuid().hex[:16]}"


def invocation_of_call(call_id: str) -> str | None:
    """The invocation id inside a call id; None if ``call_id`` is not one."""
    match = CALL_ID.fullmatch(call_id)
    return match["invocation"] if match else None


@dataclass(frozen=True)
class Done(Generic[T]):
    """What a pattern returns: ``result``, the work's result as committed (the same whichever
    attempt committed it), and ``call_id``, the id the database records this call under."""

    result: T
    call_id: str


class Recorded(BaseModel):
    """A work's result as a step journals it and a table stores it: its JSON form (``None``,
    JSON null, is a result like any other, not a missing one)."""

    result: Any = None


def record(adapter: TypeAdapter[T], value: T) -> Recorded:
    """``value`` of the adapter's type, in its JSON form."""
    return Recorded(result=adapter.dump_python(value, mode="json"))


def result_of(adapter: TypeAdapter[T], recorded: Recorded, what: str) -> T:
    """The recorded JSON back as the adapter's type; a terminal error if it does not fit (it
    never will: a retry cannot change what was recorded)."""
    try:
        return adapter.validate_python(recorded.result)
    except ValidationError as exc:
        raise restate.TerminalError(
            f"{what}: the recorded result {recorded.result!r} does not fit the result type "
            f"({exc.errors(include_url=False)[0]['msg']}): did the result type change while "
            "calls were in flight?",
            status_code=500,
        ) from None


def log_ending(
    log: logging.Logger, step: str, call_id: str, error: restate.TerminalError, found: str
) -> None:
    """The line every clean-up writes once it has settled a call that ended with ``error``
    (a cancellation: ``'cancelled'``): what it found. One format for the three patterns, so an
    operator (and the chaos suite) can tell that a cancellation reached the handler."""
    log.warning("%s: call %s ended with %r: %s", step, call_id, error.message, found)


@dataclass(frozen=True)
class Retry:
    """How many times, or how long, a pattern's durable step is retried before the call fails
    with a terminal error. Unset fields keep Restate's policy for the invocation.

    ``max_attempts`` counts the first attempt; ``initial_interval``, ``max_interval`` and
    ``factor`` shape the wait between attempts."""

    max_attempts: int | None = None
    max_duration: timedelta | None = None
    initial_interval: timedelta | None = None
    max_interval: timedelta | None = None
    factor: float | None = None

    def __post_init__(self) -> None:
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, not {self.max_attempts}")
        if self.max_duration is not None and self.max_duration <= timedelta(0):
            raise ValueError(f"max_duration must be positive, not {self.max_duration}")


def run_options(type_hint: Any, retry: Retry | None = None) -> restate.RunOptions[Any]:
    """The ``RunOptions`` of a durable step journaled as ``type_hint``, retried per ``retry``."""
    if retry is None:
        return restate.RunOptions(type_hint=type_hint)
    return restate.RunOptions(
        type_hint=type_hint,
        max_attempts=retry.max_attempts,
        max_duration=retry.max_duration,
        initial_retry_interval=retry.initial_interval,
        max_retry_interval=retry.max_interval,
        retry_interval_factor=retry.factor,
    )


#: One lock per call in this process: a clean-up step waits for a step of its call that Restate
#: stopped waiting for (after a cancellation) but that still runs here.
_call_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()


def call_lock(call_id: str) -> asyncio.Lock:
    """The lock every step of ``call_id`` holds while it runs in this process."""
    lock = _call_locks.get(call_id)
    if lock is None:
        lock = _call_locks[call_id] = asyncio.Lock()
    return lock
