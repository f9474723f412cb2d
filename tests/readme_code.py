"""The root README's code, taken out of it as the tests and the install check
(``tests/install/check.py``) use it."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Use it in your own service"
#: The subsection with the example's test file, for the test kit.
KIT_SECTION = "### Prove it in your own tests"


def readme_example() -> str:
    """The first ``python`` block of the README's section "Use it in your own service": a user's
    service module, built on the library alone."""
    section = README.read_text().split(SECTION, 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README's section has no python example"
    return match.group(1)


def readme_example_test() -> str:
    """The first ``python`` block of the README's subsection on the test kit: a test file for
    the example service, as a user copies it next to the service module."""
    section = README.read_text().split(SECTION, 1)[1].split(KIT_SECTION, 1)
    assert len(section) == 2, f"the README's section has no subsection {KIT_SECTION!r}"
    match = re.search(r"```python\n(.*?)```", section[1], re.S)
    assert match, "the README's test kit subsection has no python example"
    return match.group(1)
