"""Reading a service process's log from a mark: what it wrote while a cell ran."""

from __future__ import annotations

from pathlib import Path


def log_size(path: Path) -> int:
    """Where the log ends now (0 if it does not exist yet): a mark to read from later."""
    try:
        return int(path.stat().st_size)
    except OSError:
        return 0


def log_since(path: Path, offset: int) -> list[str]:
    """The non-empty lines written after ``offset``."""
    try:
        with open(path, errors="replace") as f:
            f.seek(offset)
            return [line.strip() for line in f.read().splitlines() if line.strip()]
    except OSError:
        return []
