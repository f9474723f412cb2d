"""The published package, checked as a user installs it (``check``)."""
