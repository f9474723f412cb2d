"""The test kit's fixtures, pointed at the kit's own test service (``stock_app``)."""

from __future__ import annotations

import pytest

from dbpatterns.exactly_once import schema

STOCK = "CREATE TABLE stock (sku text PRIMARY KEY, available int NOT NULL);"


@pytest.fixture(scope="session")
def kit_app() -> str:
    return "tests.testing.stock_app:app"


@pytest.fixture(scope="session")
def kit_schema() -> str:
    return schema.ddl() + STOCK
