"""restate-server as a child process: the binary from the pinned npm package (its real PID,
no node wrapper), with the lab's timeouts (``RestateTuning``); and the service's registration."""

from __future__ import annotations

import os
import platform
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from dbpatterns.config import PROJECT_ROOT, RestateTuning, Settings
from dbpatterns.service import identity
from dbpatterns.stack.processes import (
    ChildProcess,
    LabError,
    http_ok,
    spawn,
    tail,
    wait_until,
)


def _npm_platform() -> str:
    system = {"Linux": "linux", "Darwin": "darwin"}.get(
        platform.system(), platform.system().lower()
    )
    machine = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower(), platform.machine().lower()
    )
    return f"{system}-{machine}"


def find_restate_binary(package: str, binary: str, configured: Path | None = None) -> Path:
    """A native binary shipped in the pinned npm packages (``package.json``)."""
    if configured is not None:
        if configured.is_file():
            return configured
        raise LabError(f"{configured} (configured) does not exist", "fix the path or unset it")
    path = (
        PROJECT_ROOT
        / "node_modules"
        / "@restatedev"
        / f"{package}-{_npm_platform()}"
        / "bin"
        / binary
    )
    if path.is_file():
        return path
    raise LabError(
        f"{binary} is not installed ({path} is missing)",
        "run `npm ci` in the project folder (`./lab up` and `./lab verify` do it for you)",
    )


def tuning_toml(identity_key_file: Path | None) -> str:
    """The tables every restate-server of the lab shares, one node or a cluster: the retry policy
    and invoker timeouts of ``RestateTuning``, and the request identity key when there is one."""
    t = RestateTuning
    return (
        "[default-retry-policy]\n"
        f'initial-interval = "{t.RETRY_INITIAL_INTERVAL}"\n'
        f"exponentiation-factor = {t.RETRY_EXPONENTIATION_FACTOR}\n"
        f'max-interval = "{t.RETRY_MAX_INTERVAL}"\n'
        f'on-max-attempts = "{t.RETRY_ON_MAX_ATTEMPTS}"\n\n'
        "[worker.invoker]\n"
        f'inactivity-timeout = "{t.INACTIVITY_TIMEOUT}"\n'
        f'abort-timeout = "{t.ABORT_TIMEOUT}"\n'
        + (
            f'request-identity-private-key-pem-file = "{identity_key_file}"\n'
            if identity_key_file
            else ""
        )
    )


def server_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a restate-server child: the lab's, less any ``RESTATE_*`` variable
    (it would override the config file), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESTATE_")}
    env.update(extra or {})
    return env


def answers_health_checks(admin_url: str, ingress_url: str) -> bool:
    """Do a restate-server's admin API and ingress both answer their health check?"""
    return http_ok(f"{admin_url}/health") and http_ok(f"{ingress_url}/restate/health")


class RestateServer:
    """restate-server with its data in ``<root>`` and the lab's tuning."""

    def __init__(self, settings: Settings, root: Path, *, extra_config: str = "") -> None:
        self.settings = settings
        self.root = root
        self.config_path = root / "restate.toml"
        self.log_path = root.parent / "logs" / "restate.log"
        self.extra_config = extra_config
        self.process: ChildProcess | None = None
        self.identity_key_file: Path | None = None

    def config_toml(self) -> str:
        s = self.settings
        return (
            "# Written by dbpatterns on every start; edit dbpatterns/config.py instead.\n"
            f'base-dir = "{self.root / "data"}"\n'
            f'bind-address = "{s.bind_host}:{s.restate_node_port}"\n'
            f'advertised-address = "http://{s.bind_host}:{s.restate_node_port}/"\n'
            "disable-telemetry = true\n"
            "log-disable-ansi-codes = true\n\n" + tuning_toml(self.identity_key_file) + "\n"
            "[ingress]\n"
            f'bind-address = "{s.bind_host}:{s.ingress_port}"\n\n'
            "[admin]\n"
            f'bind-address = "{s.bind_host}:{s.admin_port}"\n' + self.extra_config
        )

    def start(self, timeout: float = 30.0, env: Mapping[str, str] | None = None) -> ChildProcess:
        binary = find_restate_binary("restate-server", "restate-server", self.settings.restate_bin)
        self.root.mkdir(parents=True, exist_ok=True)
        if self.settings.request_identity:
            self.identity_key_file, _ = identity.ensure_key_pair(self.settings.identity_dir)
        self.config_path.write_text(self.config_toml())
        self.process = spawn(
            "restate-server",
            [str(binary), "--config-file", str(self.config_path)],
            self.log_path,
            env=server_env(env),
            cwd=self.root,
        )
        process = self.process
        if not wait_until(self.healthy, timeout, alive=process.alive):
            process.stop()
            raise LabError(
                "restate-server did not become healthy; its log says:\n" + tail(self.log_path),
                f"see {self.log_path}",
            )
        return process

    def healthy(self) -> bool:
        return answers_health_checks(self.settings.admin_url, self.settings.ingress_url)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(signal.SIGTERM, timeout=20)


def register_deployment(admin_url: str, service_url: str, timeout: float = 30.0) -> dict[str, Any]:
    """Register (or re-register, after a code change) the service with restate-server."""
    deadline = time.monotonic() + timeout
    last_error = ""
    while time.monotonic() < deadline:
        try:
            response = httpx.post(
                f"{admin_url}/deployments", json={"uri": service_url, "force": True}, timeout=10
            )
        except httpx.HTTPError as exc:
            last_error = str(exc)
        else:
            if response.status_code in (200, 201):
                result: dict[str, Any] = response.json()
                return result
            last_error = f"HTTP {response.status_code}: {response.text}"
        time.sleep(0.3)
    raise LabError(
        f"registering {service_url} with {admin_url} failed: {last_error}",
        "check the service log (.lab/logs/service.log) and `./lab status`",
    )
