"""``python -m dbpatterns.cli``: the ``dbpatterns`` command, as ``./lab <cmd>`` and the tests
run it (the lab's command, from a clone: the published package installs no command)."""

import sys

from dbpatterns.cli import main

sys.exit(main())
