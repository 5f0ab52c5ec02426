"""A small synchronous client of the gateway's native API, for CLI commands."""

from __future__ import annotations

import os
from typing import Any

import httpx

from ml_offload.config import client_headers

DEFAULT_URL = "http://127.0.0.1:9000"


class CliError(Exception):
    """An error the CLI prints as one line before exiting non-zero."""


def gateway_url(explicit: str | None) -> str:
    return (explicit or os.environ.get("MLO_URL") or DEFAULT_URL).rstrip("/")


class GatewayClient:
    def __init__(self, url: str, timeout_s: float = 300.0) -> None:
        self.url = url
        self._http = httpx.Client(
            base_url=url, timeout=timeout_s, trust_env=False, headers=client_headers()
        )

    def get(self, path: str) -> Any:
        return self._call("GET", path)

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self._call("POST", path, body)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            resp = self._http.request(method, path, json=body)
        except httpx.TransportError:
            raise CliError(
                f"cannot reach the gateway at {self.url}: is `mlo serve` running? "
                "(set --url or MLO_URL for another address)"
            ) from None
        if resp.status_code == 401:
            raise CliError(f"{_message(resp)} (set MLO_API_KEY for the CLI)")
        if resp.status_code >= 400:
            raise CliError(_message(resp))
        return resp.json()


def _message(resp: httpx.Response) -> str:
    try:
        err = resp.json().get("error", {})
        return str(err.get("message") or resp.text)
    except ValueError:
        return f"HTTP {resp.status_code}: {resp.text[:200]}"
