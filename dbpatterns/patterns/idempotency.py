"""idempotency: (being written)."""

from __future__ import annotations

import restate

idempotency = restate.Service("idempotency")
