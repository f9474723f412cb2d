"""Chaos harness: the patterns run as real processes under crashes, zombies and restarts, and a
ledger checks every operation landed exactly once (or, for a negative control, that the
admitted anomaly really shows). See chaos/README.md; entry point ``chaos.cli:main``."""
