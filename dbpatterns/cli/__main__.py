"""``python -m dbpatterns.cli``: the ``dbpatterns`` command (the tests start ``up`` so)."""

import sys

from dbpatterns.cli import main

sys.exit(main())
