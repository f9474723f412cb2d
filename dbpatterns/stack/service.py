"""The service as a child process: one process, HTTP/2 cleartext, with the lab's settings in
its environment; under granian, or hypercorn when ``DBPATTERNS_SERVICE_SERVER=hypercorn``
(``dbpatterns.service.serve``)."""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping
from pathlib import Path

from dbpatterns.config import PROJECT_ROOT, Settings
from dbpatterns.service import identity
from dbpatterns.service.serve import serve_argv
from dbpatterns.stack.processes import (
    ChildProcess,
    LabError,
    http_ok,
    spawn,
    tail,
    wait_until,
)


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as ``DBPATTERNS_*`` variables, for a child process."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump(mode="json").items():
        if value is not None:
            env[f"DBPATTERNS_{name.upper()}"] = str(value)
    return env


class ServiceProcess:
    """The Restate service under the chosen ASGI server: one process, HTTP/2 cleartext (h2c)."""

    def __init__(
        self, settings: Settings, log_path: Path, *, extra_env: Mapping[str, str] | None = None
    ) -> None:
        self.settings = settings
        self.log_path = log_path
        self.extra_env = dict(extra_env or {})
        self.process: ChildProcess | None = None

    def argv(self) -> list[str]:
        """``python -m dbpatterns.service.serve``: it runs granian's embedded server in the process
        it is (granian's CLI would start two), or becomes hypercorn through ``exec``."""
        return serve_argv()

    def start(self, timeout: float = 30.0) -> ChildProcess:
        env = dict(os.environ)
        env.update(settings_env(self.settings))
        if self.settings.request_identity and not self.settings.identity_public_key:
            _, public_key = identity.ensure_key_pair(self.settings.identity_dir)
            env["DBPATTERNS_IDENTITY_PUBLIC_KEY"] = public_key
        env.update(self.extra_env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        # Killed outright if the lab process dies without stopping it (terminal closed, kill -9):
        # the SDK takes SIGTERM over once it serves, so a gentler signal would leave it serving.
        self.process = spawn(
            "service",
            self.argv(),
            self.log_path,
            env=env,
            cwd=PROJECT_ROOT,
            death_signal=signal.SIGKILL,
        )
        process = self.process
        if not wait_until(self.healthy, timeout, alive=process.alive):
            process.stop(signal.SIGINT)
            raise LabError(
                "the service did not come up; its log says:\n" + tail(self.log_path),
                f"see {self.log_path}",
            )
        return process

    def healthy(self) -> bool:
        return http_ok(f"{self.settings.service_url}/health")

    def stop(self) -> None:
        # The SDK takes SIGTERM over once it serves; SIGINT stops either server cleanly.
        if self.process is not None:
            self.process.stop(signal.SIGINT, timeout=15)

    def restart(self, timeout: float = 30.0) -> ChildProcess:
        self.stop()
        return self.start(timeout)
