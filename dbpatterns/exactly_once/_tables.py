"""The names the library writes under, apart from ``schema`` (which describes the tables with
SQLAlchemy): the patterns need only these strings, so the library imports without SQLAlchemy.

* ``TOKENS``, ``PREPARED_RESULTS``: the default names of the token table and the
  prepared-results table (either may be renamed: pass the same name everywhere).
* A token's ``outcome``: its call's work committed, or the call ended without it.
"""

TOKENS = "exactly_once_tokens"
PREPARED_RESULTS = "exactly_once_prepared_results"

COMMITTED = "committed"
FAILED = "failed"
