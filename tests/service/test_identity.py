"""Only restate-server may call the service: its requests are signed, anything else is refused."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from dbpatterns.config import Settings
from dbpatterns.service import identity
from dbpatterns.stack import ServiceProcess
from dbpatterns.stack.client import Ingress


def test_a_direct_unsigned_call_to_a_handler_is_refused(
    settings: Settings, service: ServiceProcess, users_checksum: Callable[[], str]
) -> None:
    before = users_checksum()
    response = httpx.post(
        f"{settings.service_url}/invoke/keyed/A/update",
        content=b"5",
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 401
    assert users_checksum() == before


def test_discovery_without_a_signature_is_refused(
    settings: Settings, service: ServiceProcess
) -> None:
    response = httpx.get(f"{settings.service_url}/discover", timeout=10)
    assert response.status_code == 401


def test_a_forged_signature_is_refused(settings: Settings, service: ServiceProcess) -> None:
    response = httpx.post(
        f"{settings.service_url}/invoke/simple/read",
        content=b'"A"',
        headers={"content-type": "application/json", "x-restate-jwt-v1": "e30.e30.c2ln"},
        timeout=10,
    )
    assert response.status_code == 401


def test_restates_own_signed_calls_still_pass(ingress: Ingress) -> None:
    response = ingress.call("simple", "read", "A")
    assert response.status_code == 200, response.text


def test_public_key_is_base58_of_the_raw_key_with_restates_prefix() -> None:
    assert identity.base58(b"\x00\x00\x01") == "112"
    assert identity.base58(bytes([0xFF] * 2)) == "LUv"


def test_the_service_refuses_to_start_without_a_key_when_identity_is_on() -> None:
    unkeyed = Settings(
        request_identity=True, identity_public_key=None, identity_public_key_file=None
    )
    with pytest.raises(ValueError, match="DBPATTERNS_IDENTITY_PUBLIC_KEY"):
        unkeyed.service_identity_keys()
