"""``./lab up`` in the foreground: start the lab's ``Stack``, then watch it until Ctrl-C.

While it runs, every half second: a service that exited is started again (and the state file
rewritten); a cluster node that died is reported once and the lab goes on, as the cluster does
(one node may fail), and a node ``./lab node start`` asked for is started again; Postgres or a
single restate-server that exited ends the run with a ``LabError`` naming its log. SIGINT
(Ctrl-C) or SIGTERM ends it too. Whatever ends it, every part is stopped, newest first, and the
state file removed; the data stays for the next ``up``. If this process is killed instead, the
parts die with it (each is started with a parent-death signal) and the state file stays behind,
naming PIDs that no longer run.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType

from dbpatterns.stack.cluster import RestateCluster
from dbpatterns.stack.lab import Stack, take_node_start_requests
from dbpatterns.stack.processes import LabError

#: How often the running parts are looked at, in seconds.
WATCH_INTERVAL = 0.5


def supervise(
    stack: Stack, say: Callable[[str], None], on_up: Callable[[], None] = lambda: None
) -> None:
    """Start ``stack``, call ``on_up`` once it is up, and watch it until SIGINT or SIGTERM
    (installed here: call from the main thread), then stop it. ``say`` gets each line of
    progress; a part the lab cannot go on without raises ``LabError`` after the stop."""
    dead_nodes: set[int] = set()
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    stack.start(say=say)
    try:
        on_up()
        while not stop.wait(WATCH_INTERVAL):
            service = stack.service.process
            if service is not None and not service.alive():
                say(
                    f"service (pid {service.pid}) exited with "
                    f"{service.popen.returncode}; restarting it"
                )
                stack.service.start()
                stack.write_state()
            essential = [stack.postgres.process]
            if isinstance(stack.restate, RestateCluster):
                report_dead_nodes(stack.restate, dead_nodes, say)  # the cluster goes on without one
                start_requested_nodes(stack, stack.restate, say)
            else:
                essential.append(stack.restate.process)
            for part in essential:
                if part is not None and not part.alive():
                    raise LabError(
                        f"{part.name} (pid {part.pid}) exited with {part.popen.returncode}",
                        f"see {part.log_path}; `./lab up` starts it again",
                    )
    finally:
        say("stopping: service, restate-server, postgres")
        stack.stop()
        say(f"stopped; data kept in {stack.settings.home}")


def start_requested_nodes(
    stack: Stack, cluster: RestateCluster, say: Callable[[str], None]
) -> None:
    """Start again the nodes ``./lab node start`` asked for (a running node is left alone)."""
    for name in take_node_start_requests(stack.settings.home):
        try:
            node = cluster.node(name)
            if node.alive():
                say(f"restate {name} runs already (pid {node.pid})")
                continue
            say(f"restate {name}: starting again on its data")
            cluster.restart(name)
        except LabError as exc:
            say(f"restate {name}: {exc}")
            continue
        stack.write_state()


def report_dead_nodes(
    cluster: RestateCluster, reported: set[int], say: Callable[[str], None]
) -> None:
    """Say once that a cluster node died; the lab goes on, as the cluster does (one node may
    fail), so a node can be killed on purpose to watch the others take over."""
    for node in cluster.nodes:
        process = node.process
        if process is None or process.alive() or process.pid in reported:
            continue
        reported.add(process.pid)
        say(
            f"restate {node.name} (pid {process.pid}) exited with "
            f"{process.popen.returncode}; the other nodes go on (`./lab status` shows who leads "
            f"now; see {node.log_path})"
        )
