"""Services built only on the public API of ``dbpatterns.exactly_once``, as a user would."""
