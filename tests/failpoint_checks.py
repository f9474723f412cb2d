"""The check every fault test makes first: its failpoint fired.

A fault test that passes without its fault proves nothing (the point was misnamed, the work
never reached it, the service read another control file). Tests switch points on with a count
(``1*error``, ``1*sleep(3000)``) through the ``failpoint`` fixture, provoke the work, then call
``assert_fired`` before they look at the outcome.
"""

from __future__ import annotations

from pathlib import Path

from dbpatterns.service import failpoints


def assert_fired(failpoints_file: Path, name: str) -> None:
    """The counted action switched on at ``name`` has fired its count (``failpoints.spent``)."""
    text = failpoints_file.read_text() if failpoints_file.exists() else "(no control file)"
    assert failpoints.spent(failpoints_file, name), (
        f"failpoint {name} did not fire: the test proves nothing. Control file:\n{text}"
    )
