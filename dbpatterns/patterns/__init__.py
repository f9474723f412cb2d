"""One module per Restate service, each opening with the guarantee it gives."""

from __future__ import annotations

from typing import Any

from dbpatterns.patterns.simple import simple

SERVICES: list[Any] = [simple]
