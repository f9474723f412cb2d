"""``input_errors``: the SDK's 500 for an input it could not decode becomes a terminal 400 that
names each field and what is wrong with it; no other error changes. The errors are raised as
restate-sdk 1.3 raises them (``restate.handler.invoke_handler``, called with a body that does
not fit); the whole path, through restate-server, is in ``test_readme_example.py``."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import restate
from pydantic import BaseModel
from restate.handler import invoke_handler

from dbpatterns.exactly_once import input_errors

orders = restate.Service("orders")


class Reserve(BaseModel):
    sku: str
    quantity: int


@orders.handler()
async def reserve(ctx: restate.Context, req: Reserve) -> None:
    raise AssertionError("the handler ran")


def through_input_errors(body: bytes) -> restate.TerminalError:
    """What leaves ``input_errors`` when the SDK is given ``body`` for ``reserve``."""

    async def run() -> None:
        async with input_errors():
            await invoke_handler(orders.handlers["reserve"], None, body)

    with pytest.raises(restate.TerminalError) as raised:
        asyncio.run(run())
    return raised.value


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            b'{"sku": "a", "quantity": "x"}',
            "invalid request for Reserve: quantity: Input should be a valid integer, "
            "unable to parse string as an integer",
        ),
        (
            b'{"quantity": 1, "color": "red"}',
            "invalid request for Reserve: sku: Field required",
        ),
        (b'{"sku": ', "invalid request for Reserve: body: Invalid JSON: EOF while parsing"),
    ],
)
def test_a_body_that_does_not_fit_is_a_terminal_400_naming_the_field(
    body: bytes, message: str
) -> None:
    error = through_input_errors(body)
    assert error.status_code == 400
    assert error.message.startswith(message), error.message


def test_without_it_the_sdk_answers_500() -> None:
    """What ``input_errors`` is for, and how it recognises it: restate-sdk 1.3's answer."""

    async def run() -> None:
        await invoke_handler(orders.handlers["reserve"], None, b'{"sku": "a", "quantity": "x"}')

    with pytest.raises(restate.TerminalError) as raised:
        asyncio.run(run())
    assert raised.value.status_code == 500
    assert raised.value.message.startswith("Unable to parse an input argument.")


@pytest.mark.parametrize(
    "error",
    [
        restate.TerminalError("no such sku: a", status_code=404),
        restate.TerminalError("Unable to parse an input argument. but raised by hand"),
        RuntimeError("a retry may fix it"),
    ],
)
def test_every_other_error_passes_unchanged(error: Exception) -> None:
    async def run() -> None:
        async with input_errors():
            raise error

    with pytest.raises(type(error)) as raised:
        asyncio.run(run())
    assert raised.value is error


def test_a_500_raised_from_a_validation_error_by_the_handler_itself_passes_unchanged() -> None:
    async def run() -> Any:
        async with input_errors():
            try:
                Reserve.model_validate({})
            except ValueError as exc:
                raise restate.TerminalError("the stored order is corrupt") from exc

    with pytest.raises(restate.TerminalError) as raised:
        asyncio.run(run())
    assert (raised.value.status_code, raised.value.message) == (500, "the stored order is corrupt")
