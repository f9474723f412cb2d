"""Calling the lab from outside: the Restate ingress (as curl would) and the admin API."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx


class Ingress:
    """A client of the Restate ingress: ``POST /<service>[/<key>]/<handler>`` with a JSON body."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Ingress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def path(service: str, handler: str, key: str | None = None, send: bool = False) -> str:
        target = f"/{service}/{key}/{handler}" if key is not None else f"/{service}/{handler}"
        return target + ("/send" if send else "")

    def call(
        self,
        service: str,
        handler: str,
        body: Any = None,
        *,
        key: str | None = None,
        idempotency_key: str | None = None,
        raw_body: bytes | None = None,
        content_type: str = "application/json",
        send: bool = False,
        delay: str | None = None,
    ) -> httpx.Response:
        """One request; ``raw_body`` sends bytes as they are (for malformed-input tests)."""
        headers = {"content-type": content_type}
        if idempotency_key is not None:
            headers["idempotency-key"] = idempotency_key
        content = raw_body if raw_body is not None else json.dumps(body).encode()
        params = {"delay": delay} if delay else None
        return self.http.post(
            self.path(service, handler, key, send), content=content, headers=headers, params=params
        )


class Admin:
    """restate-server's admin API: deployments and the SQL view of invocations."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    #: How long ``query`` keeps asking while restate-server answers 500: for a few seconds after
    #: it starts, its SQL fails ("No such scanner", "partition N doesn't exist on this node")
    #: while its partitions come up (measured with 1.7.12, one node and three).
    QUERY_WARMUP_S = 10.0

    def query(self, query: str) -> list[dict[str, Any]]:
        """Run a query on Restate's system tables (``sys_invocation``, ``sys_deployment``, ...).
        A 500 is asked again for up to ``QUERY_WARMUP_S``; a 4xx (a bad query) is raised at once."""
        give_up = time.monotonic() + self.QUERY_WARMUP_S
        while True:
            response = self.http.post(
                "/query", json={"query": query}, headers={"accept": "application/json"}
            )
            if response.status_code < 500 or time.monotonic() >= give_up:
                break
            time.sleep(0.25)
        response.raise_for_status()
        rows: list[dict[str, Any]] = response.json()["rows"]
        return rows

    def deployments(self) -> list[dict[str, Any]]:
        response = self.http.get("/deployments")
        response.raise_for_status()
        deployments: list[dict[str, Any]] = response.json()["deployments"]
        return deployments
