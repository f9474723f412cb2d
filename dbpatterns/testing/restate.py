"""A real restate-server for a test session, and the two doors into it: the ingress (calls, as
curl makes them) and the admin API (deployments, invocations).

Locally: the ``restate-server`` binary from ``DBPATTERNS_RESTATE_SERVER``, PATH, or the npm
package ``@restatedev/restate-server`` installed in the project (``node_modules``, looked for
from the working folder up), with its data in a temporary folder, on free loopback ports. With a
Docker engine: the ``restatedev/restate`` image through testcontainers, on the host's network.
Both retry a failed attempt within a fraction of a second (Restate's defaults wait up to a
minute, and up to eleven for a hung service): a test of retries must not wait for them.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from dbpatterns.testing.processes import Child, KitError, free_port, spawn, tail, wait_until

IMAGE = "docker.io/restatedev/restate:1.7.12"
#: restate-server settings that differ from its defaults, as environment variables (they
#: override a config file, and the container takes them the same way).
TUNING = {
    "RESTATE_WORKER__INVOKER__INACTIVITY_TIMEOUT": "10s",
    "RESTATE_WORKER__INVOKER__ABORT_TIMEOUT": "5s",
    "RESTATE_DEFAULT_RETRY_POLICY__INITIAL_INTERVAL": "100ms",
    "RESTATE_DEFAULT_RETRY_POLICY__EXPONENTIATION_FACTOR": "2.0",
    "RESTATE_DEFAULT_RETRY_POLICY__MAX_INTERVAL": "2s",
    "RESTATE_DISABLE_TELEMETRY": "true",
    "RESTATE_LOG_DISABLE_ANSI_CODES": "true",
}


@dataclass(frozen=True)
class Answer:
    """An HTTP answer: status, body, and the invocation id Restate names (if any)."""

    status: int
    body: str
    invocation_id: str | None


def post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> Answer:
    """POST ``body``; an HTTP error status is an answer, a transport failure raises OSError."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read().decode(errors="replace")
            return Answer(response.status, text, response.headers.get("x-restate-id"))
    except urllib.error.HTTPError as error:
        text = error.read().decode(errors="replace")
        return Answer(error.code, text, error.headers.get("x-restate-id"))


class Admin:
    """restate-server's admin API, as much of it as a test needs."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def _send(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"content-type": "application/json", "accept": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read()
        return json.loads(text) if text else None

    def register(self, service_url: str, timeout: float = 30.0) -> None:
        """Register (or register again) the deployment at ``service_url``."""
        errors: list[str] = []

        def registered() -> bool:
            try:
                self._send("POST", "/deployments", {"uri": service_url, "force": True})
            except (OSError, urllib.error.HTTPError) as exc:
                errors.append(str(exc))
                return False
            return True

        if not wait_until(registered, timeout, interval=0.3):
            raise KitError(
                f"registering {service_url} with restate-server failed: {errors[-1:]}",
                "read the service's log: did the app import and serve?",
            )

    def cancel(self, invocation_id: str) -> None:
        """Cancel the invocation: its handler sees a terminal error and runs its clean-up."""
        self._send("PATCH", f"/invocations/{urllib.parse.quote(invocation_id)}/cancel")

    def kill(self, invocation_id: str) -> None:
        """Kill the invocation: it ends now, without running anything more of the handler."""
        self._send("PATCH", f"/invocations/{urllib.parse.quote(invocation_id)}/kill")

    def query(self, query: str) -> list[dict[str, Any]]:
        """A query on Restate's system tables (``sys_invocation``, ...)."""
        rows: list[dict[str, Any]] = self._send("POST", "/query", {"query": query})["rows"]
        return rows


class Restate(Protocol):
    """A running restate-server: its ingress and admin URLs."""

    ingress_url: str
    admin_url: str

    def stop(self) -> None: ...


def _npm_platform() -> str:
    system = platform.system().lower()
    machine = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64"}.get(
        platform.machine().lower(), platform.machine().lower()
    )
    return f"{system}-{machine}"


def find_binary() -> Path:
    """The ``restate-server`` binary: configured, on PATH, or in a ``node_modules`` above."""
    configured = os.environ.get("DBPATTERNS_RESTATE_SERVER")
    if configured:
        if Path(configured).is_file():
            return Path(configured)
        raise KitError(f"DBPATTERNS_RESTATE_SERVER={configured} does not exist")
    on_path = shutil.which("restate-server")
    if on_path:
        return Path(on_path)
    package = f"@restatedev/restate-server-{_npm_platform()}"
    for folder in [Path.cwd(), *Path.cwd().parents]:
        binary = folder / "node_modules" / package / "bin" / "restate-server"
        if binary.is_file():
            return binary
    raise KitError(
        "no restate-server binary found (DBPATTERNS_RESTATE_SERVER, PATH, node_modules)",
        "install it in your project (`npm install @restatedev/restate-server@1.7.12`), put it "
        "on PATH, set DBPATTERNS_RESTATE_SERVER to it, or run with a Docker engine",
    )


class LocalRestate:
    """restate-server as a child process, with its data in a temporary folder."""

    def __init__(self) -> None:
        self.binary = find_binary()
        self.root = Path(tempfile.mkdtemp(prefix="dbpatterns-kit-restate-"))
        self.ports = {"node": free_port(), "admin": free_port(), "ingress": free_port()}
        self.ingress_url = f"http://127.0.0.1:{self.ports['ingress']}"
        self.admin_url = f"http://127.0.0.1:{self.ports['admin']}"
        self.process: Child | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RESTATE_")}
        env |= TUNING | _addresses(self.ports) | {"RESTATE_BASE_DIR": str(self.root / "data")}
        self.process = spawn(
            "restate-server", [str(self.binary)], self.root / "restate.log", env=env, cwd=self.root
        )
        if not wait_until(lambda: _healthy(self.admin_url, self.ingress_url), 60, interval=0.2):
            self.stop()
            raise KitError(f"restate-server did not come up:\n{tail(self.root / 'restate.log')}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(signal.SIGTERM, timeout=20)
        shutil.rmtree(self.root, ignore_errors=True)


class DockerRestate:
    """The ``restatedev/restate`` image through testcontainers, on the host's network (so it
    reaches the service on this machine's loopback)."""

    def __init__(self) -> None:
        from testcontainers.core.container import DockerContainer

        self.ports = {"node": free_port(), "admin": free_port(), "ingress": free_port()}
        self.ingress_url = f"http://127.0.0.1:{self.ports['ingress']}"
        self.admin_url = f"http://127.0.0.1:{self.ports['admin']}"
        container = DockerContainer(IMAGE).with_kwargs(network_mode="host")
        for name, value in (TUNING | _addresses(self.ports)).items():
            container = container.with_env(name, value)
        self.container = container

    def start(self) -> None:
        self.container.start()
        if not wait_until(lambda: _healthy(self.admin_url, self.ingress_url), 60, interval=0.2):
            raise KitError("restate-server's container did not come up")

    def stop(self) -> None:
        self.container.stop()


def _addresses(ports: dict[str, int]) -> dict[str, str]:
    return {
        "RESTATE_BIND_ADDRESS": f"127.0.0.1:{ports['node']}",
        "RESTATE_ADVERTISED_ADDRESS": f"http://127.0.0.1:{ports['node']}/",
        "RESTATE_ADMIN__BIND_ADDRESS": f"127.0.0.1:{ports['admin']}",
        "RESTATE_INGRESS__BIND_ADDRESS": f"127.0.0.1:{ports['ingress']}",
    }


def _healthy(admin_url: str, ingress_url: str) -> bool:
    for url in (f"{admin_url}/health", f"{ingress_url}/restate/health"):
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status != 200:
                    return False
        except OSError:
            return False
    return True
