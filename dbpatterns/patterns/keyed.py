"""keyed: (being written)."""

from __future__ import annotations

import restate

keyed = restate.VirtualObject("keyed")
