"""The root README's code, taken out of it as the tests and the install check
(``tests/install/check.py``) use it."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Use it in your own service"


def readme_example() -> str:
    """The first ``python`` block of the README's section "Use it in your own service": a user's
    service module, built on the library alone."""
    section = README.read_text().split(SECTION, 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README's section has no python example"
    return match.group(1)
