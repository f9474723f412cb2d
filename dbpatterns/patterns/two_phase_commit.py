"""twoPhaseCommit: (being written)."""

from __future__ import annotations

import restate

two_phase_commit = restate.Service("twoPhaseCommit")
