"""A small synchronous client of the gateway's native API, and the one resolver of which
gateway a client command talks to (and how: its key, its CA bundle, a client certificate)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from ml_offload.cli.common import err, settings_for, state_dir
from ml_offload.client_tls import ClientTls, explain
from ml_offload.config import Settings, client_headers
from ml_offload.errors import MloError

URL_ENV = "MLO_URL"
V = TypeVar("V", bound=BaseModel)


class CliError(Exception):
    """An error the CLI prints as one line before exiting non-zero."""


class Unreachable(CliError):
    """No gateway answers at the address (none running there)."""


@dataclass(frozen=True, slots=True)
class Target:
    url: str
    source: str  # where the address came from, said when it is not the config's


def resolve_gateway(explicit: str | None, config: Path | None = None) -> Target:
    """The gateway to talk to: --url, else $MLO_URL, else the running daemon's recorded address
    (`mlo server start`), else the config's `server.host`/`server.port`."""
    from ml_offload.daemon import Daemon

    if explicit:
        return Target(explicit.rstrip("/"), "--url")
    if os.environ.get(URL_ENV):
        return Target(os.environ[URL_ENV].rstrip("/"), f"${URL_ENV}")
    running = Daemon(state_dir()).running()
    if running is not None:
        return Target(running.url, f"the daemon, pid {running.pid}")
    return Target(_config_url(settings_for(config)), "the config")


def connect(
    explicit: str | None,
    config: Path | None = None,
    timeout_s: float = 300.0,
    tls: ClientTls | None = None,
) -> GatewayClient:
    """A client of the resolved gateway; one dim line on stderr names it when it is not the
    config's own address."""
    target = resolve_gateway(explicit, config)
    if target.source != "the config" and target.url != _configured_url(config):
        err.print(f"gateway {target.url} ({target.source})", style="dim")
    return GatewayClient(target.url, timeout_s, tls)


def _configured_url(config: Path | None) -> str | None:
    try:
        return _config_url(settings_for(config))
    except MloError:
        return None  # the command says so when it needs the config


def _config_url(settings: Settings) -> str:
    """The config's own address: https when it serves TLS (`security.tls`)."""
    from ml_offload.daemon import connect_url

    server, tls = settings.server, settings.security.tls.cert_file is not None
    return connect_url(server.host, server.port, tls=tls)


class GatewayClient:
    def __init__(self, url: str, timeout_s: float = 300.0, tls: ClientTls | None = None) -> None:
        self.url = url
        self.tls = tls or ClientTls()
        self._http = httpx.Client(
            base_url=url,
            timeout=timeout_s,
            trust_env=False,
            headers=client_headers(),
            verify=self.tls.verify(),
        )

    def get(self, path: str) -> Any:
        return self._call("GET", path)

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self._call("POST", path, body)

    def view(self, kind: type[V], path: str) -> V:
        """A view of our own API (`wire/native.py`), validated: the CLI reads the same types
        the gateway serialises, never guessed keys."""
        return self.validate(kind, path, self._call("GET", path))

    def post_view(self, kind: type[V], path: str, body: dict[str, Any] | None = None) -> V:
        return self.validate(kind, path, self._call("POST", path, body))

    def validate(self, kind: type[V], path: str, data: Any) -> V:
        try:
            return kind.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "the body"
            raise CliError(
                f"the gateway at {self.url} answered {path} in another shape ({where}: "
                f"{first['msg']}): is it the same ml-offload version as this mlo?"
            ) from None

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            resp = self._http.request(method, path, json=body)
        except httpx.TransportError as exc:
            raise Unreachable(
                explain(exc, self.url, self.tls)
                or f"cannot reach the gateway at {self.url}: is `mlo serve` running? "
                f"(set --url or {URL_ENV} for another address)"
            ) from None
        if resp.status_code == 401:
            raise CliError(f"{error_message(resp)} (set MLO_API_KEY for the CLI)")
        if resp.status_code >= 400:
            raise CliError(error_message(resp))
        return resp.json()


def error_message(resp: httpx.Response) -> str:
    try:
        error = resp.json().get("error", {})
        return str(error.get("message") or resp.text)
    except ValueError:
        return f"HTTP {resp.status_code}: {resp.text[:200]}"
